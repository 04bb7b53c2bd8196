"""One merge of sorted Parquet parts (``twins.twin.store.merge_parts``) for snapshots and ``twins score``: rows of
one id (a customer's machines) stay together and in their part's order, whatever id ranges the merge cuts, and an
id in two parts fails before anything is written."""

from __future__ import annotations

import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from twins.twin.store import merge_parts


def _parts(tmp_path, frames: list[pl.DataFrame]) -> list:
    files = []
    for n, frame in enumerate(frames):
        files.append(tmp_path / f"part-{n}.parquet")
        frame.write_parquet(files[-1], row_group_size=2)
    return files


@pytest.mark.parametrize("merge_rows", [1, 2, 3, 65_536])
def test_rows_of_one_id_stay_in_their_parts_order_whatever_the_cuts(tmp_path, monkeypatch, merge_rows):
    monkeypatch.setattr("twins.twin.store.MERGE_ROWS", merge_rows)  # 1-3: cuts fall inside an id's rows
    a = pl.DataFrame({"customer_id": ["a", "a", "a", "d", "f", "f"], "machine": ["a/3", "a/1", "a/2", "d", "f/2", "f/1"]})
    b = pl.DataFrame({"customer_id": ["b", "c", "c", "e"], "machine": ["b", "c/9", "c/0", "e"]})
    empty = a.clear()
    files = _parts(tmp_path, [a, empty, b])
    merge_parts((files, "customer_id", tmp_path / "out.parquet"), repeated_ids=True, row_group_size=None)
    got = pl.read_parquet(tmp_path / "out.parquet")
    assert got["machine"].to_list() == ["a/3", "a/1", "a/2", "b", "c/9", "c/0", "d", "e", "f/2", "f/1"]
    assert_frame_equal(got, pl.concat([a, b]).sort("customer_id", maintain_order=True))


def test_an_id_in_two_parts_fails_before_writing(tmp_path):
    files = _parts(tmp_path, [pl.DataFrame({"customer_id": ["a", "a", "b"]}), pl.DataFrame({"customer_id": ["b", "c"]})])
    out = tmp_path / "out.parquet"
    with pytest.raises(ValueError, match="parts share customer_id values"):
        merge_parts((files, "customer_id", out), repeated_ids=True)
    with pytest.raises(ValueError, match="duplicate customer_id"):  # a snapshot: one row per id, in one part too
        merge_parts((files[:1], "customer_id", out))
    assert not out.exists()


def test_row_groups_are_the_snapshots_or_polars_default(tmp_path):
    frame = pl.DataFrame({"customer_id": [f"c{i:06d}" for i in range(40_000)], "n": range(40_000)})
    files = _parts(tmp_path, [frame[::2], frame[1::2]])
    merge_parts((files, "customer_id", tmp_path / "snapshot.parquet"))
    merge_parts((files, "customer_id", tmp_path / "scores.parquet"), repeated_ids=True, row_group_size=None)
    frame.lazy().sink_parquet(tmp_path / "default.parquet")
    assert pq.ParquetFile(tmp_path / "snapshot.parquet").metadata.num_row_groups == 3  # 16,384 rows each
    assert_frame_equal(pl.read_parquet(tmp_path / "snapshot.parquet"), frame)
    assert (tmp_path / "scores.parquet").read_bytes() == (tmp_path / "default.parquet").read_bytes()
