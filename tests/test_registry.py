"""The registry flow on a local SQLite MLflow store (one per test session: its first migration takes seconds):
log + register a bundle, promote by alias, load ``models:/NAME@champion`` without torch, a service that follows
the alias and refuses a tampered version, and ``twins compare`` over child runs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from twins import registry
from twins.cli import app
from twins.runtime import BundleError, load
from twins import tracking
from twins.runtime.registry import RegistryError, cache_dir, current_version, store_key
from twins.serve import create_app

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*axis name:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*noload:DeprecationWarning")]
runner = CliRunner()


def _artifact_dir(name: str, version: str) -> Path:
    import mlflow

    from twins import tracking

    client = mlflow.MlflowClient(tracking.tracking_uri())
    model_id = client.get_model_version(name, version).source.removeprefix("models:/")
    return Path(urlparse(client.get_logged_model(model_id).artifact_location).path)


def test_register_promote_and_load_by_alias(mlflow_home, nbr_bundle):
    reg = registry.log_bundle(nbr_bundle, "reg-nbr")
    assert reg.task == "next_basket" and reg.uri == f"models:/reg-nbr/{reg.version}"
    stored = _artifact_dir("reg-nbr", reg.version)
    assert {"MLmodel", "model.onnx", "manifest.json"} <= {p.name for p in stored.iterdir()}
    assert (stored / "model.onnx").read_bytes() == (nbr_bundle / "model.onnx").read_bytes()  # the hash still holds
    out = runner.invoke(app, ["promote", "reg-nbr", reg.version, "champion"])
    assert out.exit_code == 0 and "models:/reg-nbr@champion" in out.output
    bundle = load("models:/reg-nbr@champion")
    assert bundle.recommend_one([["i01"]], k=3) == load(nbr_bundle).recommend_one([["i01"]], k=3)
    assert bundle.path.parent == cache_dir() / store_key(tracking.tracking_uri()) / "reg-nbr"
    assert bundle.path.name.startswith(f"{reg.version}-") and bundle.digest == load(nbr_bundle).digest
    # the mlflow.onnx flavour loads the same model
    import mlflow.onnx

    assert mlflow.onnx.load_model("models:/reg-nbr@champion").graph.input[0].name == "history"


def test_unknown_names_and_refused_bundles(mlflow_home, nbr_bundle, tmp_path):
    with pytest.raises(RegistryError, match="not in the registry"):
        current_version("models:/no-such-model@champion")
    with pytest.raises(RegistryError, match="expected models:/NAME@ALIAS"):
        load("models:/just-a-name")
    out = runner.invoke(app, ["promote", "no-such-model", "1"])
    assert out.exit_code == 2 and "no-such-model" in out.output
    broken = Path(tmp_path / "broken")
    broken.mkdir()
    (broken / "model.onnx").write_bytes((nbr_bundle / "model.onnx").read_bytes())
    manifest = json.loads((nbr_bundle / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "opset": 12}))
    with pytest.raises(BundleError, match="opset 12"):
        registry.log_bundle(broken, "reg-broken")   # never registered
    out = runner.invoke(app, ["register", str(broken), "reg-broken"])
    assert out.exit_code == 2 and "opset 12" in out.output


def test_registry_load_does_not_import_torch(mlflow_home, nbr_bundle):
    registry.promote("reg-light", registry.log_bundle(nbr_bundle, "reg-light").version)
    code = ("import sys, twins.runtime as rt; b = rt.load('models:/reg-light@champion'); b.recommend_one([['i01']]); "
            "assert 'torch' not in sys.modules and 'twins.api' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env={**_env(), "TWINS_HOME": str(mlflow_home)})


def test_service_follows_the_alias_and_refuses_a_tampered_version(mlflow_home, nbr_bundle, caplog):
    v1 = registry.log_bundle(nbr_bundle, "reg-serve").version
    registry.promote("reg-serve", v1)
    with TestClient(create_app(["models:/reg-serve@champion"], poll_seconds=0)) as client:
        service = client.app.state.service

        def served() -> str:
            r = client.post("/v1/models/reg-serve/recommend", json={"histories": [[["i01"]]], "k": 2})
            assert r.status_code == 200
            return r.json()["version"]

        assert served() == v1
        v2 = registry.log_bundle(nbr_bundle, "reg-serve").version
        registry.promote("reg-serve", v2)
        service.refresh()
        assert served() == v2
        v3 = registry.log_bundle(nbr_bundle, "reg-serve").version
        with (_artifact_dir("reg-serve", v3) / "model.onnx").open("ab") as f:   # tampered in the store
            f.write(b"tampered")
        registry.promote("reg-serve", v3)
        with caplog.at_level(logging.INFO, logger="twins.serve"):
            service.refresh()
        refused = [r.fields for r in caplog.records if r.getMessage() == "reload_refused"]
        assert refused and refused[0]["candidate"] == v3 and refused[0]["serving"] == v2 and "sha256" in refused[0]["error"]
        assert served() == v2
        assert client.get("/ready").json()["models"]["reg-serve"]["refused"].keys() == {v3}


def test_compare_experiment(mlflow_home, tmp_path):
    import mlflow

    from twins import tracking

    recall = {("gp_topfreq", 0): 0.13, ("gp_topfreq", 1): 0.15, ("g_topfreq", 0): 0.07, ("g_topfreq", 1): 0.08}
    with tracking.run("cmp-exp", "pipeline", tags={"dataset": "shop"}):
        for (model, seed), value in recall.items():
            with tracking.run("", f"{model}-{seed}", nested=True, tags={"model": model, "seed": str(seed), "dataset": "shop"}):
                tracking.log_metrics(mlflow, {"test/recall@10": value, "test/ndcg@10": value / 2, "test/n_users": 12,
                                                "test/n_explore_users": 5})
    with tracking.run("cmp-exp", "rerun", tags={"dataset": "shop"}):   # a rerun of one seed replaces it
        with tracking.run("", "g-0", nested=True, tags={"model": "g_topfreq", "seed": "0", "dataset": "shop"}):
            tracking.log_metrics(mlflow, {"test/recall@10": 0.09, "test/ndcg@10": 0.045})
    from twins.compare import compare

    result = compare("cmp-exp", out_dir=tmp_path / "plots")
    assert result.metrics == ["test/recall@10", "test/ndcg@10"]  # the next-basket defaults; user counts when asked for
    assert compare("cmp-exp", ["test/n_users"], out_dir=tmp_path / "n").summary[0]["test/n_users"] == (12.0, 0.0)
    rows = {r["model"]: r for r in result.summary}
    assert rows["gp_topfreq"]["n"] == 2 and rows["gp_topfreq"]["test/recall@10"] == pytest.approx((0.14, 0.014142), abs=1e-6)
    assert rows["g_topfreq"]["test/recall@10"] == pytest.approx((0.085, 0.007071), abs=1e-6)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in result.plots) and len(result.plots) == 2
    out = runner.invoke(app, ["compare", "cmp-exp", "--metric", "test/recall@10", "--markdown", "--out", str(tmp_path / "p2")])
    assert out.exit_code == 0, out.output
    assert "| shop | gp_topfreq | 2 | 0.1400 ± 0.0141 |" in out.output
    with tracking.run("cmp-exp", "once", tags={"dataset": "shop"}):  # a pipeline without seeds (e.g. outlook)
        with tracking.run("", "persistence", nested=True, tags={"model": "persistence", "dataset": "shop"}):
            tracking.log_metrics(mlflow, {"test/recall@10": 0.05, "test/ndcg@10": 0.02})
    once = {r["model"]: r for r in compare("cmp-exp", out_dir=tmp_path / "p3").summary}["persistence"]
    assert once["n"] == 1 and once["test/recall@10"] == (0.05, 0.0)
    out = runner.invoke(app, ["compare", "cmp-exp", "--metric", "test/mrr"])
    assert out.exit_code == 2 and "test/mrr" in out.output and "test/recall@10" in out.output
    assert runner.invoke(app, ["compare", "no-such-experiment"]).exit_code == 2


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
