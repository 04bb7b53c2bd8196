"""Reading canonical events written by ``ingest`` (the I/O edge for every downstream step), and the layout of the
partitioned event store.

``<events folder>/events.parquet`` is either one Parquet file (a store of one bucket) or a folder of bucket files
``bucket-00000.parquet`` ... ``bucket-{n-1}.parquet``: every customer's events lie in exactly one bucket, the one
``bucket_of`` gives its id, sorted by customer and time within it (guest rows, without a customer, in bucket 0).
So every per-customer computation can run bucket by bucket, memory bounded by the largest bucket. Readers that
want everything scan the folder as one table (polars and pyarrow read such a folder as one data set).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

EVENTS = "events.parquet"
BUCKET_FORMAT = "bucket-{:05d}.parquet"
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def fnv1a(ids: pl.Series) -> np.ndarray:
    """64-bit FNV-1a of each id's UTF-8 bytes (stable across machines and library versions; null -> 0),
    vectorised over the bytes: one pass per byte position of the longest id."""
    strings = ids.cast(pl.String).to_arrow()
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    strings = strings.cast(pa.large_string())
    _, offsets, data = strings.buffers()
    starts = np.frombuffer(offsets, np.int64, len(strings) + 1, strings.offset * 8)
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    lengths = np.diff(starts)
    h = np.full(len(strings), _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(lengths.max()) if len(lengths) else 0):
            live = np.flatnonzero(lengths > j)
            h[live] = (h[live] ^ data[starts[live] + j].astype(np.uint64)) * _FNV_PRIME
    h[ids.is_null().to_numpy()] = 0
    return h


def bucket_of(ids: pl.Series, n: int) -> pl.Series:
    """The bucket (0 .. n-1) of each customer id: ``fnv1a(id) % n``; a guest row (null id) lies in bucket 0. Hashes
    each distinct id once."""
    if n < 1:
        raise ValueError(f"the number of buckets must be >= 1, got {n}")
    codes, distinct = _encode(ids)
    buckets = (fnv1a(distinct) % np.uint64(n)).astype(np.uint32)
    return pl.Series("bucket", _lookup(buckets, codes, 0), pl.UInt32)


def _encode(ids: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Each id's code (-1 for null) and the distinct non-null ids the codes index (Arrow's hash dictionary encoding:
    no join back)."""
    strings = ids.cast(pl.String).to_arrow()
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    encoded = pc.dictionary_encode(strings)
    codes = pl.Series(encoded.indices).fill_null(-1).cast(pl.Int64).to_numpy()
    return codes, pl.Series(encoded.dictionary, dtype=pl.String)


def _lookup(table: np.ndarray, codes: np.ndarray, null: int) -> np.ndarray:
    """``table[code]`` for every code, ``null`` where the code is -1."""
    return np.append(table, np.asarray(null, table.dtype))[codes]


def bucket_files(events_dir: str | Path) -> list[Path]:
    """The bucket files of an events folder in bucket order (one file for a store of one bucket)."""
    path = Path(events_dir) / EVENTS
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: run `twins ingest SOURCE.yaml` first")
    files = sorted(path.glob("bucket-*.parquet"))
    if [f.name for f in files] != [BUCKET_FORMAT.format(i) for i in range(len(files))]:
        raise FileNotFoundError(f"{path}: bucket files are missing or misnamed ({[f.name for f in files][:5]}...); "
                                "run `twins ingest` again")
    return files


def events_digest(events_dir: str | Path) -> str:
    """sha256 over the bytes of every bucket file in order: changes whenever the events do."""
    digest = hashlib.sha256()
    for file in bucket_files(events_dir):
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def by_customer_and_time(events: pl.DataFrame) -> pl.DataFrame:
    """``events`` sorted by customer, then time (nulls last), ties in their order: the same rows as polars'
    ``sort(..., maintain_order=True)``, several times faster (distinct ids encoded and ranked once, one stable sort
    of an integer key, one gather of contiguous columns)."""
    events = events.rechunk()
    codes, distinct = _encode(events["customer_id"])
    ranks = np.empty(distinct.len(), np.int64)
    ranks[distinct.arg_sort().to_numpy()] = np.arange(distinct.len())
    rank = _lookup(ranks, codes, distinct.len())  # null ids last
    times = events["event_time"].dt.epoch("us")
    return events[pl.Series(_stable_order(rank, times, distinct.len() + int(events["customer_id"].has_nulls())))]


def _stable_order(rank: np.ndarray, times: pl.Series, ranks: int) -> np.ndarray:
    """The stable order of rows by (``rank``, ``times`` with nulls last): one sort of ``rank << b | time offset``
    (null times take the largest offset) where that fits 63 bits (eight years in microseconds beside 32,768
    customers, say); else numpy's lexsort of both keys."""
    lo, hi = times.min(), times.max()
    span = 1 if lo is None else hi - lo + 2  # offsets 0 .. hi - lo, and hi - lo + 1 for a null time
    bits = int(span - 1).bit_length()
    if bits + int(max(ranks - 1, 0)).bit_length() > 63:
        return np.lexsort((times.fill_null(np.iinfo(np.int64).max).to_numpy(), rank))
    offset = (times - (lo or 0)).fill_null(span - 1).cast(pl.UInt64).to_numpy()
    key = (rank.astype(np.uint64) << np.uint64(bits)) | offset
    return pl.DataFrame({"key": key}).with_row_index().sort("key", maintain_order=True)["index"].to_numpy()


class BucketWriter:
    """Writes events into a new bucketed ``events.parquet`` folder in memory bounded by one bucket: ``add`` splits
    each frame by ``bucket_of(customer_id)`` into part files, ``finish`` sorts each bucket's parts by customer and
    time (``by_customer_and_time``: ties keep the order they were added in) into its bucket file and removes the
    parts."""

    def __init__(self, folder: str | Path, n: int) -> None:
        if n < 1:
            raise ValueError(f"the number of buckets must be >= 1, got {n}")
        self.folder, self.n = Path(folder), n
        self._parts = self.folder / ".parts"
        self._written = 0
        self._parts.mkdir(parents=True, exist_ok=False)

    def add(self, frame: pl.DataFrame) -> None:
        """Append ``frame`` (canonical events, or any frame with ``customer_id``) to its buckets."""
        if frame.is_empty():
            return
        keyed = frame.with_columns(bucket_of(frame["customer_id"], self.n).alias("__bucket"))
        for (bucket,), part in keyed.partition_by("__bucket", as_dict=True, maintain_order=True).items():
            folder = self._parts / f"{bucket:05d}"
            folder.mkdir(exist_ok=True)
            part.drop("__bucket").write_parquet(folder / f"part-{self._written:06d}.parquet")
        self._written += 1

    def finish(self, schema: pl.Schema | None = None) -> list[Path]:
        """Sort and write every bucket file (an empty bucket gets an empty file of ``schema``, else of the parts'
        schema) and remove the parts; returns the bucket files."""
        import shutil

        parts = {b: sorted((self._parts / f"{b:05d}").glob("part-*.parquet")) for b in range(self.n)}
        if schema is None:
            found = next((files[0] for files in parts.values() if files), None)
            if found is None:
                raise ValueError(f"{self.folder}: no rows were added and no schema given")
            schema = pl.read_parquet_schema(found)
        out = []
        for bucket, files in parts.items():
            target = self.folder / BUCKET_FORMAT.format(bucket)
            if files:
                by_customer_and_time(pl.read_parquet(files)).write_parquet(target)
            else:
                pl.DataFrame(schema=schema).write_parquet(target)
            out.append(target)
        shutil.rmtree(self._parts)
        return out


def scan_events(events_dir: str | Path, with_attributes: bool = False, bucket: int | None = None) -> pl.LazyFrame:
    """Lazily scan the events (all buckets, or only ``bucket``); with ``with_attributes`` join the item and customer
    tables in."""
    events_dir = Path(events_dir)
    files = bucket_files(events_dir)
    if bucket is not None and not 0 <= bucket < len(files):
        raise IndexError(f"{events_dir / EVENTS}: no bucket {bucket} (it has {len(files)})")
    lf = pl.scan_parquet(files if bucket is None else files[bucket])
    if with_attributes:
        for table, key in (("items", "item_id"), ("customers", "customer_id")):
            if (events_dir / f"{table}.parquet").exists():
                lf = lf.join(pl.scan_parquet(events_dir / f"{table}.parquet"), on=key, how="left", maintain_order="left")
    return lf


def read_report(events_dir: str | Path) -> dict:
    return json.loads((Path(events_dir) / "report.json").read_text())


def baskets_by_customer(events: pl.LazyFrame) -> dict[str, list[list[str]]]:
    """Purchase baskets per customer in order (time, then basket_seq, then basket id), items de-duplicated
    within a basket in first-seen order. Guest rows (no customer) are left out."""
    df = (events.filter(pl.col("customer_id").is_not_null() & (pl.col("event_type") == "purchase"))
          .group_by("customer_id", "basket_id", maintain_order=True)
          .agg(pl.col("event_time").min(), pl.col("basket_seq").min(), pl.col("item_id").unique(maintain_order=True))
          .sort("customer_id", "event_time", "basket_seq", "basket_id", nulls_last=True)
          .group_by("customer_id", maintain_order=True).agg(pl.col("item_id"))
          .collect())
    return dict(zip(df["customer_id"].to_list(), df["item_id"].to_list()))
