"""Replenishment at scale: training rows for sampled (machine, cut-off) pairs, histories read one bucket of the
event store at a time; and experiments.scale_models' replenishment and outlook steps on small inputs (slow)."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest

from twins.data.events import BUCKET_FORMAT, EVENTS, bucket_of
from twins.models.replenishment import bucket_histories, histories, pair_samples, sample_pairs, samples
from twins.runtime.replenishment_features import History

from tests.test_replenishment import _printer_log


def regular(period: float, n: int, start: float = 0.0) -> History:
    t = start + period * np.arange(n)
    return History(t, np.full(n, 4.0), np.full(n, np.nan))


def test_pairs_are_the_rows_of_the_grid_they_name():
    hist = {"a": regular(10.0, 12), "b": regular(7.0, 20, 3.0), "c": regular(30.0, 3)}
    machines, cutoffs = list(hist), [25.0, 45.0, 70.0, 95.0]
    grid = samples(hist, machines, cutoffs, horizon=20.0, until=90.0)
    m, c = sample_pairs(len(machines), len(cutoffs), None)
    assert len(m) == 12 and list(m[:5]) == [0, 0, 0, 0, 1] and list(c[:5]) == [0, 1, 2, 3, 0]
    pairs = pair_samples(hist, [machines[i] for i in m], [cutoffs[j] for j in c], horizon=20.0, until=90.0)
    for field in ("machine", "cutoff", "X", "T", "Q", "censored", "bound"):
        np.testing.assert_array_equal(getattr(pairs, field), getattr(grid, field))
    # machine c has its 3rd order at day 60: no row at 25 or 45; no row at 95 (after until); a's order at day 80
    # is seen from 70 (10 days) and b's row at 70 is watched up to until (20 days, its next order at 73)
    assert sorted(zip(grid.machine, grid.cutoff)) == [("a", 25.0), ("a", 45.0), ("a", 70.0), ("b", 25.0), ("b", 45.0),
                                                      ("b", 70.0), ("c", 70.0)]
    assert grid.T[list(zip(grid.machine, grid.cutoff)).index(("a", 70.0))] == 0.0


def test_a_sample_of_pairs_is_seeded_uniform_and_without_repeats():
    m, c = sample_pairs(1000, 50, 5000, seed=3)
    assert len(m) == 5000 and len(set(zip(m, c))) == 5000 and m.max() < 1000 and c.max() < 50
    again = sample_pairs(1000, 50, 5000, seed=3)
    assert np.array_equal(m, again[0]) and np.array_equal(c, again[1])
    assert not np.array_equal(m, sample_pairs(1000, 50, 5000, seed=4)[0])
    assert abs(np.mean(c) - 24.5) < 1.0 and abs(np.mean(m) - 499.5) < 20  # uniform over the grid
    assert list(np.lexsort((c, m))) == list(range(5000))                    # by machine, then cut-off


def test_bucket_histories_are_the_whole_stores(tmp_path):
    events = _printer_log()
    more = events.with_columns(pl.col("customer_id") + "x")  # a second printer and fridge, in other buckets maybe
    events = pl.concat([events, more])
    folder = tmp_path / EVENTS
    folder.mkdir()
    bucket = bucket_of(events["customer_id"], 3)
    for b in range(3):
        events.filter(bucket == b).write_parquet(folder / BUCKET_FORMAT.format(b))
    parts = list(bucket_histories(tmp_path))
    assert len(parts) == 3 and sum(len(p) for p in parts) == 6
    whole = histories(events)
    merged = {m: h for p in parts for m, h in p.items()}
    assert set(merged) == set(whole)
    for m, h in whole.items():
        for field in ("t", "q", "promised", "tel_t", "stock", "usage"):
            np.testing.assert_array_equal(getattr(merged[m], field), getattr(h, field))


@pytest.mark.slow
def test_scale_models_replenishment_step_on_a_small_market(tmp_path, monkeypatch):
    import subprocess
    import sys

    from experiments import scale_models

    subprocess.run([sys.executable, "-m", "twins.cli", "sim", "configs/sim/market.yaml", "--set", "n_machines=40",
                    "--set", "days=200", "--set", "horizon_days=0", "--set", "telemetry.every_days=7", "--set",
                    "humans.n=20", "--out", str(tmp_path / "sim")], check=True, capture_output=True,
                   env=os.environ | {"TWINS_HOME": str(tmp_path / "home")})
    monkeypatch.setattr(scale_models, "REPL_ROWS", 300)
    got = scale_models.replenishment_step(tmp_path / "sim")
    assert got["machines"] == 40 and got["pairs"] == 300 and 0 < got["train_rows"] <= 300
    assert 0 < got["scored"] <= 40 and got["graph_gap"] <= 1e-4 and got["bundle_bytes"] > 0
    assert got["n_latency"] == 40 and 0 < got["p50_ms"] <= got["p99_ms"]


@pytest.mark.slow
def test_scale_models_outlook_step_samples_the_windows(tmp_path, monkeypatch):
    from experiments import scale_models
    from experiments.retail_log import generate

    generate(tmp_path / "log", lines=20_000, customers=400, items=300, days=200, fmt="csv", bad_rate=0.01)
    monkeypatch.setattr(scale_models, "OUTLOOK_ROWS", 1000)
    got = scale_models.outlook_step(tmp_path / "log")
    assert got["windows"] > got["sample_rows"] == got["fit_rows"] == 1000
    assert got["graph_gap"] < 1e-6 and got["n_latency"] == got["customers"] <= 400 and got["raw_per_s"] > 0
