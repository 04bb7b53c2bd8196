"""Issue 22 item 3: the learned seller policy (the contextual bandit) exported to ONNX, equal to the fitted
estimator, and quoting in the seller API through onnxruntime without torch."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from twins.commerce.app import create_app
from twins.commerce.catalog import load_catalog
from twins.commerce.onnx_policy import OnnxBandit, export_bandit
from twins.commerce.policies import COL, FEATURES, BanditPolicy
from twins.commerce.quote import Quoter
from twins.sim.agent_market import MarketParams, simulate

DATA = Path(__file__).parent / "data" / "commerce"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    bandit = BanditPolicy(seed=1)
    simulate(MarketParams(n_customers=600, days=60, seed=1), bandit)
    return bandit, export_bandit(bandit, tmp_path_factory.mktemp("b") / "bandit")


def _requests(n: int, rng) -> np.ndarray:
    X = np.full((n, len(FEATURES)), np.nan)
    X[:, COL["list_price"]] = rng.uniform(5, 5000, n)
    X[:, COL["unit_cost"]] = X[:, COL["list_price"]] * rng.uniform(0.5, 0.9, n)
    X[:, COL["quantity"]] = rng.integers(1, 50, n)
    X[:, COL["agent_declared"]] = rng.integers(0, 2, n)
    X[:, COL["counter_ratio"]] = np.where(rng.random(n) < 0.3, np.nan, rng.uniform(0, 0.3, n))
    return X


def test_onnx_bandit_equals_the_estimator(bundle):
    bandit, folder = bundle
    onnx, rng = OnnxBandit(folder), np.random.default_rng(0)
    for n in (1, 5, 64, 1000):
        X = _requests(n, rng)
        expected, got = bandit.predict(X), onnx.predict(X)
        assert got.shape == expected.shape == (n, 4)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_a_changed_model_file_is_refused(bundle, tmp_path):
    _, folder = bundle
    copy = tmp_path / "b"
    copy.mkdir()
    (copy / "model.onnx").write_bytes((folder / "model.onnx").read_bytes() + b"\0")
    (copy / "manifest.json").write_text((folder / "manifest.json").read_text())
    with pytest.raises(ValueError, match="sha256"):
        OnnxBandit(copy)


def test_unknown_buyers_are_quoted_by_the_onnx_bandit_without_torch(bundle, tmp_path):
    bandit, folder = bundle
    quoter = Quoter(None, fallback=OnnxBandit(folder))
    catalog = load_catalog(DATA / "catalog.yaml")
    with TestClient(create_app(catalog, quoter, tmp_path)) as c:
        s = c.post("/checkout_sessions", json={"buyer": {"customer_id": "new"}, "items": [{"id": "ink-c", "quantity": 2}]}).json()
    X = np.full((1, len(FEATURES)), np.nan)
    X[0, :5] = [1800, 1200, 2, 0, 0]
    assert s["negotiation"][0]["unit_price"] == round(bandit.predict(X)[0, 0])
    code = ("import sys, numpy as np; from twins.commerce.onnx_policy import OnnxBandit; "
            "from twins.commerce.app import create_app; from twins.commerce.quote import Quoter; "
            f"print(OnnxBandit({str(folder)!r}).predict(np.zeros((1, {len(FEATURES)})))[0, 3]); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["4.0", "False"]
    assert json.loads((folder / "manifest.json").read_text())["task"] == "seller_bandit"
