"""The generated retail log: deterministic, exactly the lines asked for, habits, co-purchase, seasonality and new
items as promised, and bad rows counted exactly as ``twins ingest`` quarantines them."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from experiments.retail_log import Shop, generate, orders_of_day
from twins import api

SMALL = {"lines": 30_000, "customers": 500, "items": 2_000, "days": 120, "start": "2025-01-01", "seed": 4, "bad_rate": 0.01}


def read(out, fmt="csv") -> pl.DataFrame:
    files = sorted(out.glob(f"transactions_*.{fmt}"))
    if fmt == "csv":
        return pl.concat([pl.read_csv(f, infer_schema=False) for f in files])
    return pl.concat([pl.read_parquet(f) for f in files])


def test_small_log_is_deterministic_and_exact(tmp_path):
    a, b = (generate(tmp_path / name, **SMALL) for name in ("a", "b"))
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    for name in a["files"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    log = read(tmp_path / "a")
    assert log.height == SMALL["lines"] == a["lines"]
    assert log.columns == ["order_id", "customer_id", "timestamp", "sku", "qty", "unit_price", "store"]
    assert len(a["files"]) == 4 and all(n > 0 for n in a["quarantined"].values())


def test_log_has_habits_and_weekly_rhythm(tmp_path):
    generate(tmp_path / "a", **SMALL)
    log = read(tmp_path / "a").with_columns(pl.col("timestamp").str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False))
    log = log.drop_nulls("timestamp")
    first = log.group_by("customer_id", "sku").agg(pl.col("timestamp").min().alias("first"))
    repeat = log.join(first, on=["customer_id", "sku"]).select((pl.col("timestamp") > pl.col("first")).mean()).item()
    assert repeat > 0.35                       # favourites re-bought
    per_day = log.group_by(pl.col("timestamp").dt.weekday()).len().sort("timestamp")["len"].to_numpy()
    assert per_day[5] > 1.3 * per_day[1]        # Saturday busier than Tuesday
    sizes = log.group_by("order_id").len()["len"]
    assert 2 < sizes.mean() < 8


def test_orders_buy_within_clusters_and_new_items_only_after_launch():
    rng = np.random.default_rng(0)
    shop = Shop(customers=2_000, items=5_000, days=365, rng=rng)
    day = 40
    lines = orders_of_day(shop, day, 20_000, rng)
    assert len(lines["order"]) == 20_000
    assert (shop.launch[lines["item"]] <= day).all()
    lines_ = pl.DataFrame({"o": lines["order"], "c": shop.cluster[lines["item"]]}).with_row_index("i")
    pairs = lines_.join(lines_, on="o", suffix="2").filter(pl.col("i") != pl.col("i2"))   # two lines of one order
    same = (pairs["c"] == pairs["c2"]).mean()
    assert same > 10 / shop.n_clusters          # co-purchase: far more than chance (1 / clusters)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_bad_rows_are_what_ingest_quarantines(tmp_path, fmt):
    manifest = generate(tmp_path / "shop", **{**SMALL, "lines": 12_000}, fmt=fmt)
    report = api.ingest(tmp_path / "shop" / "source.yaml", track=False)
    assert report.rows_in == manifest["lines"] == report.accepted + report.quarantined_total
    assert report.accepted == manifest["accepted"]
    assert report.quarantined == {k: v for k, v in manifest["quarantined"].items() if v}
