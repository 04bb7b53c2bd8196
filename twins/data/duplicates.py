"""Exact copies of raw lines across files, found in bounded memory.

Each line's mapped columns are hashed to 128 bits (two 64-bit polars hashes with independent seeds; a false match
among 1e8 lines has p ~ n^2 / 2^129 ~ 1.5e-23) and spilled, with the line's (file rank, row), into partitions by
hash range (``spill``, one pass per file). Copies of a line share a hash and so a partition: each partition is
resolved alone (``resolve``), memory bounded by the largest partition, not the log.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

#: input bytes per hash partition (a partition holds ~24 bytes per line)
PARTITION_BYTES = 64 << 20
#: lines per streamed batch split into partitions (memory: ~24 bytes a line)
BATCH_ROWS = 2_000_000
_HASHES = ("h1", "h2")


def partitions_for(input_bytes: int) -> int:
    """Hash partitions for ``input_bytes`` of input: one per ``PARTITION_BYTES``, 1 to 1024."""
    return max(1, min(1024, input_bytes // PARTITION_BYTES + 1))


def spill(raw: pl.LazyFrame, columns: list[str], mapping: int, rank: int, folder: Path, partitions: int) -> int:
    """Write ``(h1, h2, f=rank, r=row)`` of each line of one file into ``folder/<rank>/p=<k>/<batch>.arrow`` (k = h1
    mod ``partitions``), one streamed batch of ``BATCH_ROWS`` lines at a time; returns the number of lines read.
    ``mapping`` tells files that map other columns apart (they hold no copies of each other's lines)."""
    key = pl.struct(pl.lit(mapping).alias("_mapping"), *columns)
    out, lines, batches = folder / f"{rank:05d}", 0, 0

    def write(batch: pl.DataFrame) -> None:
        nonlocal lines, batches
        keyed = batch.with_columns((pl.col("h1") % partitions).alias("p"))
        for (p,), part in keyed.partition_by("p", as_dict=True, include_key=False).items():
            (out / f"p={p}").mkdir(parents=True, exist_ok=True)
            part.write_ipc(out / f"p={p}" / f"{batches:08d}.arrow", compression="uncompressed")  # hashes: no gain
        lines, batches = lines + batch.height, batches + 1

    (raw.select(key.hash(seed=7).alias("h1"), key.hash(seed=11).alias("h2")).with_row_index("r")
     .with_columns(pl.lit(rank, pl.Int32).alias("f")).sink_batches(write, chunk_size=BATCH_ROWS))
    return lines


def resolve(folder: Path, partition: int) -> pl.DataFrame:
    """The copies in one partition: ``f`` (file rank), ``r`` (row) and ``overlap`` (the line first appeared in an
    earlier file, else earlier in the same one). The first occurrence (by file rank, then row) is no copy. Only the
    lines whose ``h1`` occurs twice are looked at, found by one sort of ``h1`` (a hash table over every line,
    ``is_duplicated``, cost 3-4x as much)."""
    files = sorted(folder.glob(f"*/p={partition}/*.arrow"))
    if not files:
        return pl.DataFrame(schema={"f": pl.Int32, "r": pl.get_index_type(), "overlap": pl.Boolean})
    lines = pl.read_ipc(files)
    h1 = lines["h1"].sort()
    repeated = h1.filter(h1 == h1.shift(1)).unique()
    key = pl.struct(*_HASHES)
    return (lines.lazy().filter(pl.col("h1").is_in(repeated.implode())).sort("f", "r")  # candidates first: few
            .with_columns(pl.col("f").first().over(*_HASHES).alias("first_f"), key.is_first_distinct().alias("first"))
            .filter(~pl.col("first")).select("f", "r", (pl.col("first_f") != pl.col("f")).alias("overlap"))
            .collect())


def by_file(copies: pl.DataFrame, files: int) -> list[tuple[pl.Series, pl.Series]]:
    """Per file rank: (rows of ``duplicate_line``, rows of ``overlap_duplicate``)."""
    parts = {f: part for (f,), part in copies.partition_by("f", as_dict=True).items()}
    empty = copies.clear()
    return [(p.filter(~pl.col("overlap"))["r"].sort(), p.filter(pl.col("overlap"))["r"].sort())
            for p in (parts.get(f, empty) for f in range(files))]
