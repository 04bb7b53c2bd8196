"""Issue 19 acceptance: a seller's machine log as two CSV files the project did not write — orders (machines and
people mixed, no actor column) and stock readings (stock only, no usage counter) with their own columns — goes to
machine twins, a trained forecaster bundle and scored next orders by config and CLI alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from twins import paths
from twins.cli import app
from twins.sim import MarketConfig, simulate

SOURCE = """name: fleet
files:
  - path: orders.csv
    columns: {customer_id: client, event_time: ordered_at, basket_id: order_no, item_id: sku, quantity: units,
              unit_price: price}
  - path: stock.csv
    event_type: telemetry
    constants: {text: stock}
    columns: {customer_id: device, event_time: read_at, item_id: sku, quantity: level}
validation: {not_after: 2100-01-01T00:00:00Z}
"""
PIPELINE = """pipeline: replenishment
experiment: fleet-repl
source: fleet.yaml
as_of: end
params: {cutoff: 2025-05-01, horizon_days: 30, warmup_days: 30, forecaster: {epochs: 3, hidden: 16, members: 1}}
"""


@pytest.fixture
def seller_log(tmp_path) -> tuple[Path, pl.DataFrame]:
    """150 days of 60 machines (stock readings from half of them) and 30 people, written as a seller exports them."""
    market = simulate(MarketConfig(name="x", seed=3, n_machines=60, days=150, horizon_days=0, humans={"n": 30}))
    ev = market.events()
    buys = ev.filter(pl.col("event_type") == "purchase")
    buys.select(client="customer_id", ordered_at=pl.col("event_time").dt.strftime("%Y-%m-%d %H:%M:%S"),
                order_no="basket_id", sku="item_id", units="quantity", price="unit_price").write_csv(tmp_path / "orders.csv")
    stock = ev.filter((pl.col("event_type") == "telemetry") & (pl.col("text") == "stock"))
    stock = stock.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(-1.0).otherwise("quantity").alias("quantity"))
    stock.select(device="customer_id", read_at=pl.col("event_time").dt.strftime("%Y-%m-%d %H:%M:%S"), sku="item_id",
                 level="quantity").write_csv(tmp_path / "stock.csv")
    (tmp_path / "fleet.yaml").write_text(SOURCE)
    (tmp_path / "repl.yaml").write_text(PIPELINE)
    return tmp_path, market.truth()


def _cli(*args: str) -> str:
    out = CliRunner().invoke(app, ["--threads", "1", *args])
    assert out.exit_code == 0, out.output
    return out.output


def test_orders_and_stock_csv_without_actor_to_scored_next_orders(seller_log):
    folder, truth = seller_log
    _cli("ingest", str(folder / "fleet.yaml"))
    events = pl.read_parquet(paths.events_dir("fleet") / "events.parquet")
    readings = events.filter(pl.col("event_type") == "telemetry")
    assert readings.height and (readings["text"] == "stock").all() and (readings["actor"] == "unknown").all()
    assert (readings["quantity"] < 0).sum() == 1 and not (events["event_type"] == "return").any()  # not a return

    _cli("machines", str(folder / "fleet.yaml"))
    twins = pl.read_parquet(next((paths.store_dir() / "fleet" / "machine").glob("*/*/twins.parquet")))
    machines = set(truth["machine_id"].to_list())
    orders = events.filter(pl.col("event_type") == "purchase").group_by("customer_id").agg(pl.col("basket_id").n_unique())
    regular = set(orders.filter(pl.col("customer_id").is_in(list(machines)) & (pl.col("basket_id") >= 5))["customer_id"])
    chosen = set(twins["customer_id"].to_list())
    assert not chosen - machines  # no person is taken for a machine ...
    assert len(chosen & regular) >= 0.9 * len(regular) >= 25  # ... and the machines are found without any label
    assert (twins["basis"] == "regularity").all()
    with_readings = twins.filter(pl.col("source") == "telemetry")
    assert with_readings.height >= 0.3 * twins.height  # stock-only readings feed the twins
    assert twins["unusable_readings"].sum() == 1  # the negative stock reading is counted, not dropped silently

    output = _cli("run", str(folder / "repl.yaml"))
    assert "readings left out: 1 negative_stock" in output and "regularity" in output
    bundle = paths.models_dir() / "fleet-replenishment"
    assert (bundle / "model.onnx").is_file()

    _cli("score", str(bundle), "--source", "fleet")
    scores = pl.read_parquet(paths.twins_home() / "scores" / "fleet" / "fleet-replenishment.parquet")
    assert set(scores["customer_id"].to_list()) == chosen and scores["known"].all()
    assert np.isfinite(scores["days"].to_numpy()).all()
