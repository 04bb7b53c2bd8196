"""`twins run` with the replenishment pipeline on a small simulated market read back as a log: the holdout table
with the baselines, the refitted bundle that the runtime reproduces, MLflow child runs, and parameter errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from twins import api, paths
from twins.cli import app
from twins.runtime import load
from twins.sim import MarketConfig, simulate
from twins.sim.store import write_market


@pytest.fixture
def market_log(twins_home, tmp_path) -> Path:
    """150 days of 80 machines and 20 people (events in $TWINS_HOME/events/mini), a source config reading them back
    and a pipeline config."""
    write_market(simulate(MarketConfig(name="mini", seed=2, n_machines=80, days=150, horizon_days=0, humans={"n": 20})))
    (tmp_path / "log.yaml").write_text(
        f"name: mini_log\nfiles: [{{path: {paths.events_dir('mini') / 'events.parquet'}}}]\nformat: parquet\n"
        "columns: {customer_id: customer_id, event_time: event_time, basket_id: basket_id, item_id: item_id, "
        "quantity: quantity, unit_price: unit_price, event_type: event_type, text: text, actor: actor}\n"
        "extra_columns: [promised_days]\nvalidation: {duplicates: keep, not_after: 2100-01-01T00:00:00Z}\n")
    (tmp_path / "repl.yaml").write_text(
        "pipeline: replenishment\nexperiment: mini-repl\nsource: log.yaml\nas_of: end\n"
        "params: {cutoff: 2025-04-01, horizon_days: 30, warmup_days: 30, forecaster: {epochs: 4, hidden: 16}}\n")
    return tmp_path


def test_replenishment_pipeline_evaluates_exports_and_tracks(market_log):
    import mlflow

    catalog = api.run(market_log / "repl.yaml")
    rows = {r["model"]: r for r in catalog["rows"]}
    assert list(rows) == ["last_interval", "mean_interval", "croston", "tsb", "s_S_inference", "forecaster"]
    assert all(r["n"] == catalog["holdout"]["machines"] > 40 and r["time_mae"] >= 0 for r in rows.values())
    assert 0 <= rows["forecaster"]["time_coverage"] <= 1 and rows["forecaster"]["training_rows"] > 100
    bundle = load(catalog["bundle"])  # the pipeline checked it against the model on every machine
    answer = bundle.forecast([[("2025-05-01T08:00:00", 40.0, 3), ("2025-05-11T08:00:00", 41.0, 3),
                               ("2025-05-21T08:00:00", 39.0, 3)]], as_of="2025-05-25")[0]
    assert answer["known"] and 0 <= answer["days_low"] <= answer["days"] <= answer["days_high"]
    client = mlflow.MlflowClient()
    children = client.search_runs([mlflow.get_experiment_by_name("mini-repl").experiment_id],
                                  f"tags.mlflow.parentRunId = '{catalog['run_id']}'")
    assert sorted(c.data.tags["model"] for c in children) == sorted(rows)
    forecaster = next(c for c in children if c.data.tags["model"] == "forecaster")
    assert forecaster.data.params["forecaster.epochs"] == "4"
    assert forecaster.data.metrics["test/time_mae"] == pytest.approx(rows["forecaster"]["time_mae"])
    assert "mini_log-replenishment" in {m.name for m in client.search_registered_models()}


@pytest.mark.parametrize(("override", "words"), [
    ("params.cutoff=null", "params.cutoff is required"),
    ("params.cutoff=2025-05-15", "runs past the data"),
    ("params.forecaster={depth: 3}", "depth"),
    ("params.horizon_days=0", "params.horizon_days must be > 0"),
    ("params.max_training_rows=0", "params.max_training_rows must be a whole number >= 1"),
])
def test_replenishment_pipeline_parameter_errors(market_log, override, words):
    out = CliRunner().invoke(app, ["run", str(market_log / "repl.yaml"), "--set", override])
    assert out.exit_code == 2 and words in out.output, out.output


def test_a_log_without_machine_orders_is_refused_clearly(market_log):
    out = CliRunner().invoke(app, ["run", str(market_log / "repl.yaml"), "--set", "source=../nowhere.yaml"])
    assert out.exit_code == 2
    # every row says human (an unmapped actor is 'unknown': its regular series are machines')
    text = (market_log / "log.yaml").read_text().replace("actor: actor}", "}\nconstants: {actor: human}")
    (market_log / "people.yaml").write_text(text.replace("name: mini_log", "name: people_log"))
    out = CliRunner().invoke(app, ["run", str(market_log / "repl.yaml"), "--set", "source=people.yaml"])
    assert out.exit_code == 2 and "no machine orders" in out.output and "actor: machine" in out.output


def test_training_rows_are_every_pair_up_to_the_cap_and_a_seeded_sample_of_the_cap_beyond():
    import numpy as np

    from pipelines.replenishment import _training_rows
    from twins.models.replenishment import History, samples

    rng = np.random.default_rng(0)
    hist = {}
    for k in range(30):
        t = 20_000.0 + np.cumsum(rng.uniform(5, 15, 30))
        hist[f"m{k}"] = History(t, rng.uniform(20, 40, 30), np.full(30, 3.0))
    until, p = 20_200.0, {"warmup_days": 30, "cutoff_step_days": 5, "horizon_days": 60.0}
    cuts = list(np.arange(min(h.t[0] for h in hist.values()) + 30, until, 5.0))
    every = samples(hist, list(hist), cuts, 60.0, until=until)
    pairs = len(hist) * len(cuts)
    for cap in (None, pairs):
        got = _training_rows(hist, until, p | {"max_training_rows": cap})
        assert np.array_equal(got.X, every.X) and np.array_equal(got.machine, every.machine)
        assert np.array_equal(got.T, every.T, equal_nan=True) and np.array_equal(got.bound, every.bound)
    some = _training_rows(hist, until, p | {"max_training_rows": 100})
    again = _training_rows(hist, until, p | {"max_training_rows": 100})
    assert 0 < len(some.T) <= 100 and np.array_equal(some.X, again.X)
    index = {(m, c): i for i, (m, c) in enumerate(zip(every.machine, every.cutoff))}
    rows = [index[(m, c)] for m, c in zip(some.machine, some.cutoff)]  # each sampled row is that pair's full row
    assert np.array_equal(some.X, every.X[rows]) and np.array_equal(some.T, every.T[rows], equal_nan=True)
