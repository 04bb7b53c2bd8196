"""Work run ``fresh`` (``Engine.call`` / ``Engine.map(fresh=True)``) runs in a new process, not this one, with the
same results; a large store's build runs its steps that way (outlook inputs as files, the fit and the merge each in
its own process) and writes the same snapshot, byte for byte, as a build in one process."""

from __future__ import annotations

import math
import operator
import os

import pytest
import polars as pl
from polars.testing import assert_frame_equal

from twins.engine import LocalEngine, worth_a_process


def pid_plus(state: int, item: int) -> tuple[int, int]:
    return os.getpid(), state + item


def ten() -> int:
    return 10


def pid_of(job: int) -> tuple[int, int]:
    return os.getpid(), -job


def test_call_runs_here_or_in_a_new_process_with_the_same_result():
    engine = LocalEngine()
    assert engine.call(pid_of, 3, fresh=False) == (os.getpid(), -3)
    pid, value = engine.call(pid_of, 3)
    assert value == -3 and pid != os.getpid()
    assert engine.call(pid_of, 3)[0] != pid  # a new process each time


def test_map_fresh_runs_every_item_in_one_other_process_in_order():
    engine, seen = LocalEngine(), []
    out = engine.map(pid_plus, [1, 2, 3], setup=ten, fresh=True, on_done=lambda done, total: seen.append((done, total)))
    assert [v for _, v in out] == [11, 12, 13] and seen == [(1, 3), (2, 3), (3, 3)]
    pids = {pid for pid, _ in out}
    assert len(pids) == 1 and os.getpid() not in pids
    assert engine.map(pid_plus, [1], setup=ten)[0] == (os.getpid(), 11)
    assert engine.map(math.sqrt, [16, 9], fresh=True) == [4, 3]


def test_an_error_in_a_fresh_process_reaches_the_caller():
    with pytest.raises(ValueError, match="math domain error"):
        LocalEngine().call(math.sqrt, -1)
    with pytest.raises(TypeError):
        LocalEngine().map(operator.neg, ["a"], fresh=True)


def test_worth_a_process_counts_the_files_bytes(tmp_path, monkeypatch):
    files = [tmp_path / "a", tmp_path / "b"]
    for file in files:
        file.write_bytes(b"x" * 600)
    monkeypatch.setattr("twins.engine.FRESH_BYTES", 1_000)
    assert worth_a_process(files) and not worth_a_process(files[:1])


@pytest.mark.slow  # four new processes, each importing the outlook's models
def test_a_large_stores_build_in_fresh_processes_writes_the_same_snapshot(tmp_path, monkeypatch):
    from tests.test_build_buckets import AS_OF, people, store
    from twins.twin.customer import TwinParams, build_store_twins
    from twins.twin.store import TwinStore

    many = store(people(120), tmp_path / "many", 4)
    params = TwinParams(outlook_horizon_days=28)
    snaps = {}
    for fresh in (False, True):
        monkeypatch.setattr("twins.engine.FRESH_BYTES", 0 if fresh else 2**62)
        parts = tmp_path / f"parts-{fresh}"
        parts.mkdir()
        files = build_store_twins(many, AS_OF, params, parts=parts)
        assert sorted(f.name for f in parts.iterdir()) == [f"{kind}-{b:05d}.parquet" for kind in ("outlook", "part")
                                                           for b in range(4)]
        snaps[fresh] = TwinStore(tmp_path / f"store-{fresh}").write_parts(files, "shop", as_of=AS_OF)
    assert (snaps[True].path / "twins.parquet").read_bytes() == (snaps[False].path / "twins.parquet").read_bytes()
    assert_frame_equal(snaps[True].frame, build_store_twins(many, AS_OF, params))
    assert snaps[True].frame["expected_purchases"].is_not_null().sum() > 50


def test_the_snapshot_merge_reads_the_parts_a_range_of_ids_at_a_time(tmp_path, monkeypatch):
    from twins.twin.store import TwinStore

    monkeypatch.setattr("twins.twin.store.MERGE_ROWS", 3)  # ids cut at d and g: ranges a-c, d-f, g-h
    rows = {"a": 1, "d": 4, "g": 7, "b": 2, "e": 5, "h": 8, "c": 3, "f": 6}
    whole = pl.DataFrame({"customer_id": list(rows), "n": list(rows.values()),
                          "top": [[{"item": k, "w": float(v)}] for k, v in rows.items()]})
    files = []
    for n, ids in enumerate(["adg", "beh", "cf", ""]):  # the last part has no rows
        files.append(tmp_path / f"part-{n}.parquet")
        whole.filter(pl.col("customer_id").is_in(list(ids))).sort("customer_id").write_parquet(files[-1], row_group_size=1)
    snap = TwinStore(tmp_path / "store").write_parts(files, "shop")
    assert snap.frame["customer_id"].to_list() == list("abcdefgh") and snap.frame["n"].to_list() == list(range(1, 9))
    assert_frame_equal(snap.frame, whole.sort("customer_id"))
    assert snap.get("e")["top"] == [{"item": "e", "w": 5.0}]
    with pytest.raises(ValueError, match="duplicate customer_id"):
        TwinStore(tmp_path / "dup").write_parts([files[0], files[1], files[0]], "shop")
    assert not list((tmp_path / "dup").rglob("twins.parquet"))
