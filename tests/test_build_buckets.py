"""Twins built bucket by bucket equal, to the last digit and row for row, the twins of the same events in one bucket
(and the in-memory builders' on the whole log): customer twins with the outlook, machine, behaviour and emotion
twins."""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from twins.data.events import BucketWriter
from twins.data.schema import CANONICAL
from twins.twin.customer import TwinParams, build_customer_twins, build_store_twins

UTC = timezone.utc
AS_OF = datetime(2024, 7, 1, tzinfo=UTC)


def people(n: int = 300, seed: int = 0) -> pl.DataFrame:
    """Shoppers with their own purchase rates and lifetimes (BG/NBD-like), baskets of 1-4 items in 5 departments,
    a few returns, messages and guest lines."""
    rng = np.random.default_rng(seed)
    start, rows = datetime(2024, 1, 1, tzinfo=UTC), []
    for c in range(n):
        rate, life = rng.gamma(2.0, 0.05), rng.exponential(200)
        day = float(rng.uniform(0, 120))
        for b in range(200):
            if day > min(life, 240):
                break
            when = start + timedelta(days=day, seconds=int(rng.integers(0, 86_400)))
            for item in rng.choice(40, rng.integers(1, 5), replace=False):
                price = float(rng.choice([1.5, 2.0, 4.25, 9.99]))
                kind = "return" if rng.random() < 0.03 else "purchase"
                rows.append({"customer_id": f"c{c:04d}", "basket_id": f"b{c}-{b}", "item_id": f"i{item:02d}",
                             "quantity": 1.0, "unit_price": price, "amount": price, "event_type": kind, "event_time": when})
            if rng.random() < 0.1:
                rows.append({"customer_id": f"c{c:04d}", "event_type": "message", "text": f"note {c} {b}",
                             "event_time": when + timedelta(hours=1)})
            day += rng.exponential(1 / rate)
    rows += [{"basket_id": f"g{g}", "item_id": "i01", "quantity": 1.0, "unit_price": 2.0, "amount": 2.0,
              "event_type": "purchase", "event_time": start + timedelta(days=g)} for g in range(20)]
    return pl.DataFrame([{c: r.get(c) for c in CANONICAL} for r in rows], schema=CANONICAL)


def store(events: pl.DataFrame, folder: Path, buckets: int) -> Path:
    """An events folder holding ``events`` in ``buckets`` buckets, with an item table."""
    writer = BucketWriter(folder / "events.parquet", buckets)
    for part in events.iter_slices(5_000):  # several frames, as ingest and the simulator add them
        writer.add(part)
    writer.finish()
    items = events.select("item_id").unique().drop_nulls().sort("item_id")
    items.with_columns(item_department=pl.format("d{}", pl.col("item_id").str.slice(1).cast(pl.Int64) % 5)).write_parquet(
        folder / "items.parquet")
    return folder


@pytest.fixture(scope="module")
def shops(tmp_path_factory) -> tuple[pl.DataFrame, Path, Path]:
    events, root = people(), tmp_path_factory.mktemp("shops")
    return events, store(events, root / "one", 1), store(events, root / "many", 8)


@pytest.mark.parametrize("as_of", [AS_OF, None])
def test_customer_twins_with_outlook_equal_for_one_bucket_or_many(shops, as_of):
    _, one, many = shops
    params = TwinParams(category_column="item_department", outlook_horizon_days=28)
    a, b = build_store_twins(one, as_of, params), build_store_twins(many, as_of, params)
    assert {"expected_purchases", "p_alive", "next_purchase", "category_mix", "top_items"} <= set(a.columns)
    assert a["expected_purchases"].is_not_null().sum() > 200 and a["messages"].sum() > 0
    assert_frame_equal(a, b)
    assert a["customer_id"].to_list() == sorted(a["customer_id"])  # the documented order: by id


def test_store_twins_equal_the_in_memory_twins(shops):
    _, one, _ = shops
    from twins.data.events import scan_events

    params = TwinParams(outlook_horizon_days=28)
    assert_frame_equal(build_store_twins(one, AS_OF, params), build_customer_twins(scan_events(one), AS_OF, params))


def test_machine_and_behaviour_twins_equal_for_one_bucket_or_many(tmp_path):
    from twins.sim import MarketConfig, simulate
    from twins.twin.behaviour import behaviour_features
    from twins.twin.machine import build_store_machines

    market = simulate(MarketConfig(name="mini", seed=3, n_machines=40, days=120, horizon_days=0, humans={"n": 60}))
    events = market.events()
    one, many = store(events, tmp_path / "one", 1), store(events, tmp_path / "many", 8)
    market.offer_feed().write_parquet(one / "offers.parquet")
    market.offer_feed().write_parquet(many / "offers.parquet")
    (b1, m1), (b8, m8) = build_store_machines(one, market.as_of), build_store_machines(many, market.as_of)
    assert m1.height >= 40 and b1.height > 60 and m1["delay_cost_low"].is_not_null().any()
    assert_frame_equal(b1, b8)
    assert_frame_equal(m1, m8)
    # the log's item medians (deal_share) from the buckets' price counts equal polars' median over every line
    assert_frame_equal(b1, behaviour_features(events.filter(pl.col("event_time") < market.as_of)))


def test_item_medians_are_polars_medians_of_every_line():
    from twins.twin.behaviour import item_medians

    rng = np.random.default_rng(5)
    lines = pl.DataFrame({"item_id": rng.choice(["a", "b", "c"], 999), "unit_price": rng.choice([0.1, 0.2, 0.7, 3.3], 999)})
    counts = [part.group_by("item_id", "unit_price").agg(pl.len().cast(pl.Int64).alias("n"))
              for part in (lines[:400], lines[400:401], lines[401:])]
    want = lines.group_by("item_id").agg(pl.col("unit_price").median().alias("item_median")).sort("item_id")
    assert_frame_equal(item_medians(counts).sort("item_id"), want)


class WordBundle:
    """A stand-in emotion bundle: each text's probabilities from its checksum (the scores' values do not matter
    here, only that every message gets its own)."""

    groups = {"ekman": ["joy", "anger"], "sentiment": ["positive", "negative"]}
    labels = ["joy", "anger", "calm"]
    thresholds = {"labels": np.array([0.5, 0.5, 0.5])}

    def probabilities(self, texts: list[str], batch_size: int = 256) -> dict[str, np.ndarray]:
        u = np.array([[(zlib.crc32(f"{t}{j}".encode()) % 1000) / 1000 for j in range(3)] for t in texts]).reshape(-1, 3)
        return {"ekman": u[:, :2], "sentiment": np.stack([1 - u[:, 2], u[:, 2]], 1) if len(u) else u[:, :2],
                "labels": u}


def test_emotion_profiles_equal_for_one_bucket_or_many(shops, monkeypatch):
    import twins.runtime
    from twins.twin import emotion
    from twins.twin.emotion import emotion_profiles, score_messages, score_store_messages

    monkeypatch.setattr(twins.runtime, "load", lambda path: WordBundle())
    monkeypatch.setattr(emotion, "MESSAGE_CHUNK", 25)  # several chunks per bucket
    events, one, many = shops
    a, b = score_store_messages(one, "words"), score_store_messages(many, "words")
    assert a.height == events.filter(pl.col("event_type") == "message").height > 50
    assert_frame_equal(a, score_messages(events.lazy(), WordBundle()).sort("customer_id", "event_time", maintain_order=True))
    for as_of in (AS_OF, None):
        pa, pb = emotion_profiles(a, as_of, 30.0, 0.6), emotion_profiles(b, as_of, 30.0, 0.6)
        assert pa["last_negative_time"].is_not_null().any()
        assert_frame_equal(pa, pb)


def test_a_snapshot_written_from_bucket_parts_equals_one_written_whole(shops, tmp_path):
    from twins.twin.store import TwinStore

    _, one, many = shops
    params = TwinParams(outlook_horizon_days=28)
    store = TwinStore(tmp_path / "store")
    whole = store.write(build_store_twins(one, AS_OF, params), "shop", as_of=AS_OF)
    (tmp_path / "parts").mkdir()
    files = build_store_twins(many, AS_OF, params, parts=tmp_path / "parts")
    assert len(files) == 8 and all(f.exists() for f in files)
    merged = store.write_parts(files, "shop", as_of=AS_OF)
    assert_frame_equal(merged.frame, whole.frame)
    assert merged.manifest["rows"] == whole.manifest["rows"] and merged.manifest["columns"] == whole.manifest["columns"]
    some = whole.frame["customer_id"][17]
    assert merged.get(some) == whole.get(some)
    with pytest.raises(ValueError, match="duplicate customer_id"):
        store.write_parts([files[0], files[0]], "shop", as_of=AS_OF)


def test_a_killed_builds_parts_are_cleared_by_the_next_build(twins_home, tmp_path):
    from twins import api

    events = store(people(40), twins_home / "events" / "shop", 2)
    (tmp_path / "shop.yaml").write_text("name: shop\nfiles: [{path: log.csv}]\n"
                                        "columns: {customer_id: c, item_id: i, event_time: t}\n")
    left = twins_home / "store" / "shop" / "customer" / ".parts.tmp-999999-0badcafe"
    left.mkdir(parents=True)
    (left / "bucket-00000.parquet").write_bytes(b"half a part")
    params = TwinParams(outlook_horizon_days=None)
    snap = api.build(tmp_path / "shop.yaml", AS_OF, params, track=False)
    assert_frame_equal(snap.frame, build_store_twins(events, AS_OF, params))
    assert not left.exists() and not list(left.parent.glob(".parts*"))
