"""A sales system in another language: clients/node/next_basket.mjs loads the exported next-basket bundle with
onnxruntime-node and returns the same top-10 as the Python runtime. Skips where node or its packages are missing
(install them with: cd clients/node && ONNXRUNTIME_NODE_INSTALL=skip npm ci)."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from conftest import REPO

from twins.runtime import load

CLIENT = REPO / "clients" / "node"
pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
    pytest.mark.skipif(not (CLIENT / "node_modules" / "onnxruntime-node").is_dir(),
                       reason="onnxruntime-node not installed: cd clients/node && ONNXRUNTIME_NODE_INSTALL=skip npm ci"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning"), pytest.mark.filterwarnings("ignore:.*axis name:UserWarning"),
]


def _node(bundle, histories, k: int = 10) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(CLIENT / "next_basket.mjs"), str(bundle), str(k)], input=json.dumps(histories),
                          capture_output=True, text=True, timeout=60)


def test_node_returns_the_python_top10(nbr_bundle):
    rng = np.random.default_rng(3)
    histories = [[[f"i{j:02d}" for j in rng.integers(0, 35, rng.integers(1, 6))] for _ in range(rng.integers(0, 8))]
                 for _ in range(300)]   # ids i30..i34 are unknown to the bundle, some histories are empty
    out = _node(nbr_bundle, histories)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    want = load(nbr_bundle).recommend(histories, k=10)
    assert [[item for item, _ in recs] for recs in got] == [[item for item, _ in recs] for recs in want]
    np.testing.assert_allclose([[s for _, s in r] for r in got], [[s for _, s in r] for r in want], rtol=0, atol=1e-12)


def test_node_refuses_a_tampered_bundle(nbr_bundle, tmp_path):
    copy = shutil.copytree(nbr_bundle, tmp_path / "copy")
    with (copy / "model.onnx").open("ab") as f:
        f.write(b"\0")
    out = _node(copy, [[["i01"]]])
    assert out.returncode == 1 and "sha256" in out.stderr and "does not match" in out.stderr
    assert "k must be in [1, 20]" in _node(nbr_bundle, [[]], k=50).stderr
