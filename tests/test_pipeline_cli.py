"""The spine end to end on a tiny generated source: CLI ingest/build/twin show, and `twins run` of the
next-basket pipeline (ingest -> twins -> baselines -> evaluate -> ONNX -> MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from twins import api, config
from twins.cli import app

runner = CliRunner()


@pytest.fixture
def tiny_baskets(tmp_path) -> Path:
    """60 customers with 3-6 baskets each over 40 items, popular items drawn more often."""
    rng = np.random.default_rng(0)
    p = 1 / np.arange(1, 41)
    data = {str(u): [[int(i) for i in rng.choice(40, size=rng.integers(1, 5), replace=False, p=p / p.sum())]
                     for _ in range(rng.integers(3, 7))] for u in range(60)}
    path = tmp_path / "baskets.json"
    path.write_text(json.dumps(data))
    (tmp_path / "source.yaml").write_text(
        "name: tiny\nfiles: [{path: baskets.json}]\nformat: basket_json\n"
        "columns: {customer_id: customer, item_id: item}\norder_column: basket_index\n")
    (tmp_path / "pipeline.yaml").write_text(
        "pipeline: next_basket\nexperiment: tiny-nbr\nsource: source.yaml\nas_of: end\n"
        "params: {seeds: [0, 1], ks: [5, 10], models: [g_topfreq, gp_topfreq, tifuknn_tuned], export: {model: gp_topfreq, k: 20}}\n")
    return tmp_path


@pytest.fixture
def tiny_log(tmp_path) -> Path:
    (tmp_path / "log.csv").write_text(
        "order,cust,sku,qty,price,ts\n"
        "o1,a,milk,1,2.5,2024-01-01 10:00:00\n"
        "o1,a,bread,2,1.0,2024-01-01 10:00:00\n"
        "o2,a,milk,1,2.5,2024-01-05 09:00:00\n"
        "o3,b,tea,1,4.0,2024-01-03 12:00:00\n"
        "o4,b,tea,x,4.0,2024-01-09 12:00:00\n")
    (tmp_path / "shop.yaml").write_text(
        "name: shop\nfiles: [{path: log.csv}]\n"
        "columns: {customer_id: cust, basket_id: order, item_id: sku, quantity: qty, unit_price: price, event_time: ts}\n"
        "validation: {not_after: 2025-01-01T00:00:00Z}\n")
    return tmp_path


def test_help_teaches():
    out = runner.invoke(app, ["--help"], terminal_width=80)
    assert out.exit_code == 0
    for word in ("ingest", "build", "twin", "run", "README.md", "TWINS_HOME", "MLFLOW_TRACKING_URI"):
        assert word in out.output


@pytest.mark.parametrize("command, example", [
    ([], "twins ingest configs/sources/complete_journey.yaml       # raw log -> canonical events + quarantine"),
    ([], "twins run configs/pipelines/tafeng_next_basket.yaml --set params.seeds=[0]"),
    (["emotions"], "twins emotions configs/sources/goemotions.yaml --bundle .twins/models/goemotions-ensemble"),
    (["machines"], "twins machines sim_market --detector .twins/models/machine-detector.skops"),
    (["serve"], "twins serve --model nbr=models:/tafeng_realitycheck-neural/1 --twins tafeng_realitycheck"),
])
def test_help_examples_stay_one_command_a_line(command, example):
    """Click rewraps help paragraphs to the terminal; the examples are marked so that each stays a copyable line."""
    out = runner.invoke(app, [*command, "--help"], terminal_width=80)
    assert out.exit_code == 0
    assert any(example in line for line in out.output.splitlines()), out.output


def test_help_names_option_values():
    out = runner.invoke(app, ["ingest", "--help"], terminal_width=80)
    assert "--set KEY=VALUE" in out.output and "list[str]" not in out.output


def test_cli_ingest_build_show(tiny_log):
    out = runner.invoke(app, ["ingest", str(tiny_log / "shop.yaml"), "--no-track"])
    assert out.exit_code == 0, out.output
    assert "rows in 5 = accepted 4 + quarantined 1 (bad_quantity 1)" in out.output
    out = runner.invoke(app, ["build", str(tiny_log / "shop.yaml"), "--as-of", "2024-01-04", "--no-track"])
    assert out.exit_code == 0, out.output
    assert "2 twins of shop as of 2024-01-04" in out.output
    out = runner.invoke(app, ["twin", "show", "a", "--source", "shop", "--json"])
    assert out.exit_code == 0, out.output
    a = json.loads(out.output)
    assert a["baskets"] == 1 and a["spend_total"] == pytest.approx(4.5)   # o2 is after as_of
    out = runner.invoke(app, ["twin", "show", "nobody", "--source", "shop"])
    assert out.exit_code == 2 and "error: no twin 'nobody'" in out.output  # not the KeyError's quoted repr


def test_cli_build_explains_a_bad_date_and_prints_warnings_as_such(tiny_log):
    assert runner.invoke(app, ["ingest", str(tiny_log / "shop.yaml"), "--no-track"]).exit_code == 0
    out = runner.invoke(app, ["build", str(tiny_log / "shop.yaml"), "--as-of", "yesterday", "--no-track"])
    assert out.exit_code == 2 and "as_of 'yesterday' is not a date" in out.output and "2017-09-30" in out.output
    out = runner.invoke(app, ["build", str(tiny_log / "shop.yaml"), "--as-of", "2020-01-01", "--no-track"])
    assert out.exit_code == 2 and "not after the first event of source shop (2024-01-01 10:00)" in out.output
    out = runner.invoke(app, ["build", str(tiny_log / "shop.yaml"), "--as-of", "2024-01-02", "--no-track"])
    assert out.exit_code == 0, out.output
    assert "warning: twins without a purchase outlook: no repeat purchases" in out.output
    assert "RuntimeWarning" not in out.output and ".py:" not in out.output


def test_cli_reports_config_errors_without_traceback(tiny_log):
    out = runner.invoke(app, ["ingest", str(tiny_log / "shop.yaml"), "--set", "columns.item_id=SKU", "--no-track"])
    assert out.exit_code == 2
    assert "missing column(s) 'SKU' (for item_id)" in out.output and "Traceback" not in out.output
    out = runner.invoke(app, ["ingest", str(tiny_log / "shop.yaml"), "--set", "validation.max_quantity=lots", "--no-track"])
    assert out.exit_code == 2 and "validation.max_quantity" in out.output


def test_overrides_and_env_interpolation(tmp_path, monkeypatch):
    tree = config.apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=[1, 2]", "d=true"])
    assert tree == {"a": {"b": 2, "c": [1, 2]}, "d": True}
    monkeypatch.setenv("DATA_X", "/data")
    assert config.interpolate({"p": "${DATA_X}/f", "q": "${NOPE_X:-dflt}/g"}) == {"p": "/data/f", "q": "dflt/g"}
    with pytest.raises(config.ConfigError, match="NOPE_Y is not set"):
        config.interpolate("${NOPE_Y}")


def test_run_next_basket_pipeline_end_to_end(tiny_baskets, twins_home):
    import mlflow

    from twins import tracking
    from twins.runtime import load

    catalog = api.run(tiny_baskets / "pipeline.yaml")
    rows = catalog["rows"]
    assert {(r["model"], r["seed"]) for r in rows} == {(m, s) for m in ("g_topfreq", "gp_topfreq", "tifuknn_tuned") for s in (0, 1)}
    assert all(0 <= r["recall@10"] <= 1 and r["n_users"] == 12 for r in rows)
    # the bundle answers like the estimator, without torch
    exported = catalog["exported"]
    assert exported["onnx_recall@5"] == exported["recall@5"]
    bundle = load(exported["bundle"])
    assert len(bundle.recommend_one([["0", "1"], ["0"]], k=5)) == 5
    # twins stored and tracked
    assert api.twin("0", "tiny")["baskets"] >= 3
    mlflow.set_tracking_uri(tracking.tracking_uri())
    assert tracking.tracking_uri() == f"sqlite:///{(twins_home / 'mlflow.db').resolve()}"
    assert mlflow.get_experiment_by_name("tiny-nbr").artifact_location == (twins_home / "mlartifacts").resolve().as_uri()
    assert not (Path.cwd() / "mlruns").exists()
    run = mlflow.get_run(catalog["run_id"])
    assert run.data.tags["dataset"] == "tiny" and "protocol" in run.data.tags and run.data.tags["git_sha"]
    assert run.data.metrics["rows/in"] == sum(len(b) for b in json.loads((tiny_baskets / "baskets.json").read_text()).values() for b in b)
    assert not [m for m in run.data.metrics if "/test/" in m]  # per-model metrics are on the child runs (issue 25)
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.name == "tiny-events"
    children = mlflow.search_runs(experiment_names=["tiny-nbr"], filter_string=f"tags.mlflow.parentRunId = '{catalog['run_id']}'")
    assert len(children) == 6 and children["metrics.test/recall_at_10"].notna().all()
    tuned = children[children["tags.model"] == "tifuknn_tuned"].iloc[0]  # what the validation users chose
    assert {"params.tifuknn_tuned.k", "params.tifuknn_tuned.alpha", "params.tifuknn_tuned.group_size"} <= set(tuned.dropna().index)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(catalog["run_id"])}
    assert {"config", "results", "bundle", "ingest", "twins"} <= artifacts


def test_tracking_uri_default_is_absolute_sqlite_and_env_wins(twins_home, monkeypatch, tmp_path):
    from twins import tracking

    assert tracking.tracking_uri() == f"sqlite:///{(twins_home / 'mlflow.db').resolve()}"
    assert tracking.artifact_location() == (twins_home / "mlartifacts").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri() == "http://127.0.0.1:5999" and tracking.artifact_location() is None
    assert tracking.metric_key("test/recall@10") == "test/recall_at_10"


def test_run_next_basket_pipeline_with_the_neural_model_exported(tiny_baskets, twins_home):
    from twins.runtime import NeighbourNextBasketBundle, load

    overrides = ["params.seeds=[0]", "params.models=[gp_topfreq, neural]", "params.export.model=neural",
                 "params.neural={knn: 5, dim: 8, hidden: 8, max_epochs: 2}"]
    catalog = api.run(tiny_baskets / "pipeline.yaml", overrides)
    neural = next(r for r in catalog["rows"] if r["model"] == "neural")
    assert neural["best_epoch"] in (1, 2) and neural["seconds_per_epoch"] > 0
    import mlflow

    client = mlflow.MlflowClient()
    child = client.search_runs([mlflow.get_experiment_by_name("tiny-nbr").experiment_id],
                               f"tags.mlflow.parentRunId = '{catalog['run_id']}' and tags.model = 'neural'")[0]
    curve = client.get_metric_history(child.info.run_id, "valid/recall_at_10")  # learning curves, a step per epoch
    assert [(m.step, m.value) for m in curve] == [(h["epoch"], h["valid_recall@10"]) for h in neural["history"]]
    assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 2
    assert child.data.params["neural.dim"] == "8" and child.data.params["neural.seed"] == "0"
    assert {"repeat_recall@10", "explore_recall@10"} <= set(neural)
    exported = catalog["exported"]
    assert exported["model"] == "neural" and exported["onnx_recall@5"] == exported["recall@5"]
    bundle = load(exported["bundle"])
    assert isinstance(bundle, NeighbourNextBasketBundle) and len(bundle.recommend_one([["0", "1"], ["0"]], k=5)) == 5


def test_next_basket_pipeline_keeps_a_sources_own_split(tmp_path, twins_home):
    rng = np.random.default_rng(1)

    def users(prefix: str, n: int) -> dict:
        return {f"{prefix}{u}": [[int(i) for i in rng.choice(20, size=3, replace=False)] for _ in range(4)] for u in range(n)}

    (tmp_path / "split.json").write_text(json.dumps({"train": users("a", 30), "validate": users("b", 5), "test": users("c", 9)}))
    (tmp_path / "source.yaml").write_text(
        "name: tiny_split\nfiles: [{path: split.json}]\nformat: basket_json\n"
        "columns: {customer_id: customer, item_id: item}\norder_column: basket_index\nextra_columns: [split]\n")
    (tmp_path / "pipeline.yaml").write_text(
        "pipeline: next_basket\nexperiment: tiny-split\nsource: source.yaml\nas_of: end\n"
        "params: {split: column, seeds: [0], ks: [5], models: [gp_topfreq], export: {model: gp_topfreq, k: 10}}\n")
    catalog = api.run(tmp_path / "pipeline.yaml")
    assert catalog["rows"][0]["n_users"] == 9 and set(catalog["user_split"].values()) == {"train", "valid", "test"}
    assert all(catalog["user_split"][u] == "test" for u in catalog["user_split"] if u.startswith("c"))
    import mlflow  # the protocol stated is the split used, not the random 72/8/20 of the default

    assert mlflow.get_run(catalog["run_id"]).data.tags["protocol"].endswith("the source's own train / validate / test "
                                                                             "users (fixed; the seeds vary the models' "
                                                                             "randomness only)")
    assert any("the source's own train / validate / test users" in line for line in catalog["summary_lines"])
    with pytest.raises(ValueError, match="params.split"):
        api.run(tmp_path / "pipeline.yaml", ["params.split=by_time"])


def test_every_shipped_pipeline_config_is_valid_and_its_pipeline_in_run_help():
    import pipelines
    from twins.data.source import load_source
    from twins.pipeline import load_pipeline_config

    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "pipelines").glob("*.yaml"))
    used = set()
    for path in configs:
        cfg = load_pipeline_config(path)
        module = pipelines.get(cfg.pipeline)
        assert cfg.source_path().exists(), f"{path.name}: source {cfg.source} not found"
        load_source(cfg.source_path())
        if hasattr(module, "resolve_params"):
            module.resolve_params(cfg.params)  # keys, models and hyper-parameters the pipeline accepts
        used.add(cfg.pipeline)
    assert used == set(pipelines.PIPELINES)  # every pipeline ships with a config
    text = runner.invoke(app, ["run", "--help"], terminal_width=120).output
    assert all(f"  {name} " in text for name in pipelines.PIPELINES)
