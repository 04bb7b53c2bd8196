"""Machine twins and machine-likeness stored in the twin store (`twins machines`), looked up like any twin."""

from datetime import datetime, timezone

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from twins import api, paths
from twins.cli import app
from twins.models.machine_detector import MachineDetector, load_detector, save_detector
from twins.sim import MarketConfig, simulate
from twins.sim.store import write_market
from twins.twin.behaviour import behaviour_features
from twins.twin.store import TwinStore


@pytest.fixture
def market(twins_home):
    market = simulate(MarketConfig(name="mini_market", seed=3, n_machines=120, days=150, horizon_days=0, humans={"n": 60}))
    write_market(market)
    return market


def test_machines_stores_twins_and_scores(market, tmp_path):
    kinds = market.truth().select(pl.col("machine_id").alias("customer_id"), "kind")
    feats = behaviour_features(market.events()).join(kinds, on="customer_id", how="left")
    detector = MachineDetector(max_iter=50).fit(feats, feats["kind"].is_not_null().to_numpy())
    path = save_detector(detector, tmp_path / "det.joblib")
    assert np.allclose(load_detector(path).predict_proba(feats), detector.predict_proba(feats))

    snaps = api.machines("mini_market", detector=path)
    machine = snaps["machine"].manifest
    assert machine["id_column"] == "twin_id" and machine["rows"] > 0
    first = pl.read_parquet(snaps["machine"].path / "twins.parquet").row(0, named=True)
    twin = api.twin(first["twin_id"], "mini_market", kind="machine")
    assert twin["customer_id"] + "/" + twin["item_id"] == first["twin_id"] and twin["rate"] > 0
    scored = pl.read_parquet(snaps["behaviour"].path / "twins.parquet").join(kinds, on="customer_id", how="left")
    machines, people = (scored.filter(pl.col("kind").is_not_null()), scored.filter(pl.col("kind").is_null()))
    assert machines["machine_score"].mean() > 0.9 > 0.1 > people["machine_score"].mean()
    assert 0 <= api.twin(people["customer_id"][0], "mini_market", kind="behaviour")["machine_score"] <= 1


def test_machines_cli_as_of_and_errors(market, tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["machines", "mini_market", "--as-of", "2025-03-01"])
    assert out.exit_code == 0, out.output
    assert "machine twins:" in out.output and "behaviour twins:" in out.output
    store = TwinStore(paths.store_dir())
    twins = pl.read_parquet(store.open("mini_market", "machine").path / "twins.parquet")
    assert "machine_score" not in pl.read_parquet(store.open("mini_market", "behaviour").path / "twins.parquet").columns
    assert twins["last_order"].max() < datetime(2025, 3, 1, tzinfo=timezone.utc)  # only orders before as_of
    bad = runner.invoke(app, ["machines", "mini_market", "--detector", str(tmp_path / "missing.joblib")])
    assert bad.exit_code == 2 and "no such detector file" in bad.output
    (tmp_path / "junk.joblib").write_bytes(b"not a detector")
    with pytest.raises(ValueError, match="cannot be read as a detector file"):
        load_detector(tmp_path / "junk.joblib")


def test_a_log_of_people_gets_behaviour_twins_only(market):
    people = market.events().filter(pl.col("actor") != "machine")
    folder = paths.events_dir("people_only")
    folder.mkdir(parents=True)
    people.write_parquet(folder / "events.parquet")
    with pytest.warns(UserWarning, match="no machine orders .* behaviour twins only"):
        snaps = api.machines("people_only")
    assert set(snaps) == {"behaviour"} and snaps["behaviour"].manifest["rows"] > 0
    with pytest.raises(ValueError, match="no customer with 1000 or more orders; nothing to build"):
        api.machines("people_only", min_orders=1000)
