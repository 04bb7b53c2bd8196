"""`twins machines` writes machine and behaviour twins bucket by bucket as parts and merges them into the snapshots:
the snapshot files of a store of 8 buckets are byte for byte those of the same events in 1 bucket, and those of
the whole frames written at once (``TwinStore.write``, the path before parts)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from twins import api, paths
from twins.data.events import BucketWriter
from twins.sim import MarketConfig, simulate
from twins.twin.machine import build_store_machines
from twins.twin.store import TwinStore


def events_folder(name: str, events: pl.DataFrame, offers: pl.DataFrame, buckets: int) -> Path:
    """``$TWINS_HOME/events/<name>``: ``events`` in ``buckets`` buckets, and the offer feed."""
    folder = paths.events_dir(name)
    writer = BucketWriter(folder / "events.parquet", buckets)
    for part in events.iter_slices(3_000):
        writer.add(part)
    writer.finish()
    offers.write_parquet(folder / "offers.parquet")
    return folder


@pytest.fixture
def market(twins_home):
    market = simulate(MarketConfig(name="mini", seed=5, n_machines=40, days=120, horizon_days=0, humans={"n": 60}))
    for name, buckets in (("one", 1), ("many", 8)):
        events_folder(name, market.events(), market.offer_feed(), buckets)
    return market


def test_snapshots_from_bucket_parts_are_the_bytes_of_one_bucket_and_of_whole_frames(market, tmp_path):
    one, many = api.machines("one", market.as_of), api.machines("many", market.as_of)
    for kind in ("machine", "behaviour"):
        a, b = one[kind], many[kind]
        assert (a.path / "twins.parquet").read_bytes() == (b.path / "twins.parquet").read_bytes()
        skip = {"source", "version", "created"}
        assert {k: v for k, v in a.manifest.items() if k not in skip} == {k: v for k, v in b.manifest.items() if k not in skip}
        assert not (TwinStore(paths.store_dir()).root / "many" / "machine" / "parts").exists()  # staging removed

    behaviour, machine = build_store_machines(paths.events_dir("one"), market.as_of)
    assert machine.height >= 40 and behaviour.height > 60
    machine = machine.with_columns(pl.concat_str("customer_id", pl.lit("/"), "item_id").alias("twin_id"))
    whole = TwinStore(tmp_path / "whole")
    for kind, frame, key in (("machine", machine, "twin_id"), ("behaviour", behaviour, "customer_id")):
        snap = whole.write(frame, "one", kind, market.as_of, id_column=key)
        assert (snap.path / "twins.parquet").read_bytes() == (many[kind].path / "twins.parquet").read_bytes()
    assert api.twin(machine["twin_id"][0], "many", kind="machine")["rate"] == machine["rate"][0]


def test_each_bucket_writes_its_own_sorted_parts(market, tmp_path):
    behaviour, machine = build_store_machines(paths.events_dir("many"), market.as_of, parts=tmp_path)
    assert len(behaviour) == 8 and 1 <= len(machine) <= 8
    assert {f.name for f in behaviour} == {f"behaviour-{b:05d}.parquet" for b in range(8)}
    for files, key in ((behaviour, "customer_id"), (machine, "twin_id")):
        ids = [pl.read_parquet(f)[key] for f in files]
        assert all(s.is_sorted() for s in ids)
        assert pl.concat(ids).n_unique() == sum(len(s) for s in ids)  # every twin in one bucket's part
    whole_b, whole_m = build_store_machines(paths.events_dir("one"), market.as_of)
    assert_frame_equal(pl.concat([pl.read_parquet(f) for f in behaviour]).sort("customer_id"), whole_b)
    assert_frame_equal(pl.concat([pl.read_parquet(f) for f in machine]).drop("twin_id").sort("customer_id", "item_id"),
                       whole_m)
