"""The bucketed event store written by ingest: the same rows for 1 or many buckets, each customer in the one bucket
``bucket_of`` names, sorted by customer and time; duplicates and overlaps found exactly across files, buckets and
hash partitions; rows in = accepted + quarantined; every pass through the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from twins.data import duplicates
from twins.data import ingest as ingest_module
from twins.data.events import bucket_files, bucket_of, events_digest, read_report
from twins.data.ingest import default_buckets, ingest, plan
from twins.data.schema import QUARANTINE_REASON
from twins.engine import LocalEngine

from test_ingest import COLUMNS, HEADER, source


def messy_log(folder: Path, n: int = 1500, seed: int = 3) -> list[str]:
    """Two monthly exports that overlap (feb.csv repeats jan.csv's last 100 lines), with duplicate lines inside
    each, guests, bad dates and bad prices."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        customer = "" if i % 17 == 0 else f"c{rng.integers(0, 120)}"
        date = "2023-02-30 10:00" if i % 101 == 0 else f"2023-01-{1 + i * 27 // n:02d} {rng.integers(8, 20)}:{i % 60:02d}"
        price = "n/a" if i % 89 == 0 else f"{rng.gamma(2.0, 2.0):.2f}"
        lines.append(f"{i // 3},{customer},i{rng.integers(0, 40)},{rng.integers(1, 5)},{price},{date}")
    jan = lines[: n // 2] + lines[10:20]  # ten copies within jan.csv
    feb = lines[n // 2 - 100:] + lines[n - 5:]  # 100 copies of jan.csv's lines, five within feb.csv
    (folder / "jan.csv").write_text("\n".join([HEADER, *jan]) + "\n")
    (folder / "feb.csv").write_text("\n".join([HEADER, *feb]) + "\n")
    return ["jan.csv", "feb.csv"]


def read(out: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    return pl.read_parquet(bucket_files(out)), pl.read_parquet(out / "quarantine.parquet")


def by_value(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(pl.all(), nulls_last=True)


@pytest.fixture
def log(tmp_path):
    return tmp_path, messy_log(tmp_path)


def test_many_buckets_hold_the_rows_of_one(log):
    folder, files = log
    one = ingest(source(folder, *files, buckets=1), folder / "one")
    many = ingest(source(folder, *files, buckets=5), folder / "many")
    (events1, quarantine1), (events5, quarantine5) = read(folder / "one"), read(folder / "many")
    assert (one.buckets, many.buckets, read_report(folder / "many")["buckets"]) == (1, 5, 5)
    assert len(bucket_files(folder / "many")) == 5 and events_digest(folder / "one") != events_digest(folder / "many")
    assert by_value(events5).equals(by_value(events1))
    assert quarantine5.equals(quarantine1)  # in file and row order either way
    for report in (one, many):
        assert report.rows_in == report.accepted + report.quarantined_total == 760 + 855
        assert report.per_file_rows == {str(folder / "jan.csv"): 760, str(folder / "feb.csv"): 855}
    assert (many.accepted, many.customers, many.guest_rows) == (one.accepted, one.customers, one.guest_rows)


def test_each_customer_lies_in_the_bucket_bucket_of_names_sorted_by_customer_and_time(log):
    folder, files = log
    ingest(source(folder, *files, buckets=4), folder / "out")
    seen = set()
    for b, file in enumerate(bucket_files(folder / "out")):
        events = pl.read_parquet(file)
        assert (bucket_of(events["customer_id"], 4) == b).all()  # guests (no id) in bucket 0
        assert events["customer_id"].null_count() == 0 or b == 0
        customers = set(events["customer_id"].drop_nulls())
        assert not customers & seen
        seen |= customers
        assert events.equals(events.sort("customer_id", "event_time", nulls_last=True, maintain_order=True))
    assert len(seen) == read_report(folder / "out")["customers"]


def test_duplicates_and_overlaps_are_exact_across_files_buckets_and_hash_partitions(log, monkeypatch):
    folder, files = log
    ingest(source(folder, *files, buckets=1), folder / "one")
    monkeypatch.setattr(duplicates, "PARTITION_BYTES", 2048)  # ~ 28 hash partitions
    assert duplicates.partitions_for(sum((folder / f).stat().st_size for f in files)) > 20
    ingest(source(folder, *files, buckets=3), folder / "many")
    for out in ("one", "many"):
        quarantine = read(folder / out)[1]
        found = {r: sorted(zip(g["source_file"], g["source_row"])) for (r,), g in quarantine.group_by(QUARANTINE_REASON)}
        # copies of quarantined lines keep their first reason; the others are caught as copies
        bad = {line for reason, lines in found.items() if reason != "overlap_duplicate" for line in lines}
        assert found["overlap_duplicate"] == [("feb.csv", row) for row in range(2, 102) if ("feb.csv", row) not in bad]
        assert [row for f, row in found["duplicate_line"] if f == "jan.csv"] == [
            row for row in range(752, 762) if ("jan.csv", row) not in found.get("unparsable_time", []) +
            found.get("bad_price", [])]
        assert [row for f, row in found["duplicate_line"] if f == "feb.csv"] == list(range(852, 857))
    assert read(folder / "one")[1].equals(read(folder / "many")[1])


def test_the_streaming_ingest_equals_the_in_memory_plan(log):
    folder, files = log
    cfg = source(folder, *files, buckets=3)
    ingest(cfg, folder / "out", engine="local")
    events, quarantine = read(folder / "out")
    frame = plan(cfg)[0].collect()
    accepted = frame.filter(pl.col(QUARANTINE_REASON).is_null()).select(events.columns).cast(events.schema)
    assert by_value(accepted).equals(by_value(events))
    assert frame.filter(pl.col(QUARANTINE_REASON).is_not_null())[QUARANTINE_REASON].to_list() == \
        quarantine[QUARANTINE_REASON].to_list()


def test_order_only_sources_number_baskets_per_customer_in_any_bucket(tmp_path):
    columns = {k: v for k, v in COLUMNS.items() if k not in ("basket_id", "event_time")}
    rows = [f"{o},c{o % 7},i{o % 5},1,1.0,x" for o in range(60)]
    (tmp_path / "a.csv").write_text("\n".join([HEADER, *rows[:30]]) + "\n")
    (tmp_path / "b.csv").write_text("\n".join([HEADER, *rows[30:]]) + "\n")
    outs = []
    for n in (1, 4):
        cfg = source(tmp_path, "a.csv", "b.csv", columns=columns, order_column="invoice", time={"format": None}, buckets=n)
        ingest(cfg, tmp_path / f"out{n}")
        outs.append(by_value(read(tmp_path / f"out{n}")[0]))
    assert outs[0].equals(outs[1])
    seq = outs[1].group_by("customer_id").agg(pl.col("basket_seq").sort())
    assert all(s.to_list() == list(range(len(s))) for s in seq["basket_seq"])


def test_every_pass_runs_through_the_engine(log, monkeypatch):
    folder, files = log
    calls = []

    class Recording(LocalEngine):
        def map(self, fn, items, **kw):
            calls.append((fn.__name__, len(items)))
            return super().map(fn, items, **kw)

    seen = []
    monkeypatch.setattr(ingest_module, "get_engine", lambda name=None: seen.append(name) or Recording())
    ingest(source(folder, *files, buckets=3, validation={"overlap": "later_file"}), folder / "out", engine="local")
    assert seen == ["local"]
    assert [name for name, _ in calls] == ["hash_file", "resolve_partition", "accepted_span", "write_file",
                                           "sort_bucket"]
    assert dict(calls)["write_file"] == 2 and dict(calls)["sort_bucket"] == 3


def test_a_bucketed_events_folder_reads_back_as_one_parquet_input(log):
    folder, files = log
    first = ingest(source(folder, *files, buckets=3), folder / "first")
    columns = {k: k for k in COLUMNS}
    again = ingest(source(folder, "first/events.parquet", columns=columns, time={"format": None}, buckets=2),
                   folder / "again")
    assert again.per_file_rows == {str(folder / "first/events.parquet"): first.accepted}
    assert again.accepted == first.accepted and again.quarantined_total == 0
    assert by_value(read(folder / "again")[0].drop("basket_seq")).equals(by_value(read(folder / "first")[0].drop("basket_seq")))


def test_the_bucket_sort_equals_polars_stable_sort_with_nulls_and_ties():
    rng = np.random.default_rng(5)
    n = 5000
    events = pl.DataFrame({
        "customer_id": pl.Series([None if i % 11 == 0 else f"c{i}" for i in rng.integers(0, 300, n)], dtype=pl.String),
        "event_time": pl.Series(rng.integers(0, 50, n) * 3_600_000_000, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
        "row": np.arange(n)}).with_columns(
        event_time=pl.when(pl.col("row") % 13 == 0).then(None).otherwise(pl.col("event_time")))
    expected = events.sort("customer_id", "event_time", nulls_last=True, maintain_order=True)
    assert ingest_module.by_customer_and_time(events).equals(expected)


def test_default_buckets_follow_the_input_rows():
    assert [default_buckets(n) for n in (0, 1, 1_000_000, 1_000_001, 100_000_000)] == [1, 1, 1, 2, 100]


@pytest.mark.parametrize("span_us", [0, 3_600_000_000, 2**61], ids=["one-instant", "hours", "past-63-bits"])
def test_the_bucket_sort_key_holds_any_time_span_and_null_times(span_us):
    """One integer key where customer rank and time offset fit 63 bits, numpy's lexsort where they do not (2**61 us
    beside 300 customers): the same order as polars' stable sort, null times last within their customer."""
    rng = np.random.default_rng(7)
    n = 4000
    times = pl.Series(rng.integers(-2**40, -2**40 + span_us + 1, n), dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))
    events = pl.DataFrame({"customer_id": pl.Series([f"c{i}" for i in rng.integers(0, 300, n)], dtype=pl.String),
                           "event_time": times, "row": np.arange(n)}).with_columns(
        event_time=pl.when(pl.col("row") % 7 == 0).then(None).otherwise(pl.col("event_time")))
    expected = events.sort("customer_id", "event_time", nulls_last=True, maintain_order=True)
    assert ingest_module.by_customer_and_time(events).equals(expected)
    no_times = events.with_columns(event_time=pl.lit(None, pl.Datetime("us", "UTC")))
    assert ingest_module.by_customer_and_time(no_times).equals(no_times.sort("customer_id", maintain_order=True))


def test_bucket_of_is_fnv1a_of_each_id_and_the_sort_orders_ids_by_their_bytes():
    """The ids are encoded once (distinct ids hashed and ranked, looked up by code): each id's bucket is its own
    fnv1a modulo n (a guest row in bucket 0), and the bucket sort orders ids as polars does (by their UTF-8 bytes),
    with empty, non-ASCII and null ids."""
    from twins.data.events import fnv1a

    rng = np.random.default_rng(11)
    pool = ["", "a", "B", "ä", "é", "日本", "z\u200b", " x", "10", "9", *(f"c{i}" for i in range(200))]
    ids = pl.Series("customer_id", [None if i % 9 == 0 else pool[i % len(pool)] for i in rng.integers(0, 10_000, 3000)],
                    dtype=pl.String)
    for n in (1, 3, 64):
        expected = np.where(ids.is_null().to_numpy(), 0, fnv1a(ids) % np.uint64(n))
        assert bucket_of(ids, n).to_list() == expected.tolist()
    assert bucket_of(pl.Series([None, None]), 4).to_list() == [0, 0]
    events = pl.DataFrame({"customer_id": ids, "event_time": pl.Series(rng.integers(0, 5, ids.len()) * 1_000_000)
                           .cast(pl.Datetime("us", "UTC")), "row": np.arange(ids.len())})
    expected = events.sort("customer_id", "event_time", nulls_last=True, maintain_order=True)
    assert ingest_module.by_customer_and_time(events).equals(expected)
