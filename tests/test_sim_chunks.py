"""A market simulated in chunks and written into the bucketed event store: the same events as in memory, every
customer in its bucket, sorted within it, deterministic, one shop for every chunk, and the same past for another
future."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from twins.data.events import bucket_files, bucket_of, events_digest
from twins.sim import MarketConfig, memory, simulate
from twins.sim.chunks import simulate_chunks
from twins.sim.store import write_simulation

KEY = ["customer_id", "event_time", "event_type", "basket_id", "item_id", "text", "quantity"]


def market(**kw) -> MarketConfig:
    base = {"name": "chunky", "seed": 3, "n_machines": 400, "days": 90, "horizon_days": 20, "humans": {"n": 60},
            "telemetry": {"every_days": 3}, "shocks": {"fleet_machines": 50, "fleet_day": 30}}
    return MarketConfig(**(base | kw))


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(memory, "CHUNK_ROWS", 5_000)


def test_one_chunk_is_one_file_as_before(tmp_path):
    cfg = market()
    assert memory.chunk_plan(cfg).chunks == 1
    files = write_simulation(cfg, tmp_path / "m")
    assert files["events"].is_file()
    m = simulate(cfg)
    assert pl.read_parquet(files["events"]).equals(m.events())
    assert pl.read_parquet(files["truth"]).equals(m.truth())


def test_chunks_fill_the_buckets_with_the_markets_events(tmp_path, small_chunks):
    cfg = market()
    plan = memory.chunk_plan(cfg)
    assert plan.chunks > 2 and plan.buckets > 2
    files = write_simulation(cfg, tmp_path / "m")
    buckets = bucket_files(tmp_path / "m")
    assert len(buckets) == plan.buckets and files["events"].is_dir()
    stored = [pl.read_parquet(f) for f in buckets]
    for i, frame in enumerate(stored):
        assert (bucket_of(frame["customer_id"], plan.buckets) == i).all()
        assert frame.equals(frame.sort("customer_id", "event_time", maintain_order=True))
    m = simulate(cfg)                          # the chunks merged in memory: the same events and truth
    events = m.events()
    by_customer = ["customer_id", "event_time"]   # ties keep their order: the buckets hold the sorted frame's rows
    assert pl.concat(stored).sort(by_customer, maintain_order=True).equals(events.sort(by_customer, maintain_order=True))
    assert pl.read_parquet(files["truth"]).equals(m.truth())
    assert m.truth()["machine_id"].to_list() == [f"m{i}" for i in range(cfg.n_machines)]
    baskets = events.filter(pl.col("basket_id").is_not_null()).group_by("basket_id").agg(pl.col("customer_id").n_unique())
    assert baskets["customer_id"].max() == 1   # order and visit ids are the market's, not the chunk's
    assert events["customer_id"].str.starts_with("h").sum() and events.filter(
        pl.col("customer_id").str.starts_with("h"))["customer_id"].n_unique() <= cfg.humans.n
    # the late fleet is the market's last machines, whatever chunk they fall in
    joined = m.machines.join_day
    assert (joined[-50:] == 30).all() and (joined[:-50] == 0).all()


def test_chunks_are_deterministic_and_share_one_shop(tmp_path, small_chunks):
    cfg = market(humans={"n": 200})
    write_simulation(cfg, tmp_path / "a")
    write_simulation(cfg, tmp_path / "b")
    assert events_digest(tmp_path / "a") == events_digest(tmp_path / "b")
    parts = list(simulate_chunks(cfg))
    assert len(parts) > 2
    price = {}
    for part in parts:                          # an item's price on a day is the same for every chunk's shoppers
        h = part.humans
        for day, item, unit in zip(h["day"], h["item"], h["unit_price"]):
            assert price.setdefault((day, item), unit) == unit


def past(m) -> pl.DataFrame:
    return m.events().filter(pl.col("event_time") < m.as_of).sort(KEY)


def test_another_future_keeps_every_chunks_past(small_chunks):
    cfg = market()
    a, b = simulate(cfg), simulate(cfg, future_seed=9)
    assert past(a).equals(past(b))
    assert not a.events().sort(KEY).equals(b.events().sort(KEY))
    assert np.array_equal(a.log.stock_as_of, b.log.stock_as_of)


def test_twins_sim_writes_a_large_market_into_buckets(tmp_path, small_chunks):
    from pathlib import Path

    from typer.testing import CliRunner

    from twins.cli import app
    from twins.sim import load_config

    config = Path(__file__).parents[1] / "configs" / "sim" / "market.yaml"
    sets = ["n_machines=300", "days=60", "horizon_days=10", "humans.n=30"]
    plan = memory.chunk_plan(load_config(config, sets))
    out = CliRunner().invoke(app, ["sim", str(config), *[a for s in sets for a in ("--set", s)], "--out", str(tmp_path / "m")])
    assert out.exit_code == 0, out.output
    assert "300 machines and 30 shoppers x 70 days simulated and written" in out.output
    assert len(bucket_files(tmp_path / "m")) == plan.buckets > 1
    assert pl.read_parquet(tmp_path / "m" / "truth.parquet").height == 300
