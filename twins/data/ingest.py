"""Ingest: raw files -> canonical events + quarantine, reconciled (rows in = accepted + quarantined).

Pure expression builders (``canonical_frame``, ``with_reasons``) do the work; ``ingest`` is the I/O edge. Its
passes run per file and per bucket through ``twins.engine`` (module-level functions over picklable tasks), in memory
bounded by one file's stream, one hash partition and one bucket: 1 count each file's rows and spill its lines'
hashes (``twins.data.duplicates``); 2 validate each file into per-bucket parts and a quarantine part; 3 sort each
bucket into ``events.parquet/bucket-NNNNN.parquet``.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from twins import publish
from twins.data import duplicates, readers
from twins.data.events import BUCKET_FORMAT, EVENTS, bucket_of, by_customer_and_time
from twins.data.schema import CANONICAL, EVENT_TYPES, FILE_COLUMN, QUARANTINE_REASON, READER_REASON, ROW_COLUMN
from twins.data.source import AttributeTable, FileSpec, Ids, SourceConfig
from twins.engine import Engine, get_engine

#: Quarantine reasons, in the order they are tested (a row gets the first that applies; ``bad_item`` is a reader's).
REASONS = ("bad_item", "missing_item", "missing_basket", "unparsable_time", "bad_order", "bad_quantity",
           "missing_quantity", "bad_price", "missing_price", "non_finite", "negative_value", "absurd_quantity",
           "absurd_price", "low_price", "bad_event_type", "early_event", "future_event", "non_product",
           "duplicate_line", "overlap_duplicate", "superseded")

_FILE_IDX = "_file_idx"


class InputFile(NamedTuple):
    """One input file as read: its path, format and (Excel) sheet."""

    path: Path
    fmt: str
    sheet: str | None = None

_ROW_IDX = "_row"  # 0-based record number in its file (source_row is the line number)
_STRIPPED = "_stripped:"  # canonical_frame's helper columns: number columns' text, stripped once
#: Characters that never belong in an id: control (Cc) and format (Cf: zero-width space, BOM, soft hyphen...)
_INVISIBLE = r"[\p{Cc}\p{Cf}]"
_FLOAT_ID = r"^([+-]?\d+)\.0*$"  # "17850.0", as a spreadsheet or pandas writes an integer id


class ReconciliationError(RuntimeError):
    """Rows in != accepted + quarantined: something would have been lost. Never expected; report it."""


@dataclass
class IngestReport:
    source: str
    files: list[str]
    rows_in: int
    accepted: int
    quarantined: dict[str, int]
    guest_rows: int
    returns: int
    customers: int
    events_path: str
    quarantine_path: str
    seconds: float
    per_file_rows: dict[str, int] = field(default_factory=dict)
    hints: list[str] = field(default_factory=list)  # likely config fixes, read off the quarantine
    buckets: int = 1  # customer buckets of the event store

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(self.quarantined.items(), key=lambda kv: -kv[1])) or "none"
        return (f"{self.source}: rows in {self.rows_in:,} = accepted {self.accepted:,} + quarantined "
                f"{self.quarantined_total:,} ({reasons}); guest rows {self.guest_rows:,} (kept out of twins), "
                f"returns {self.returns:,}, customers {self.customers:,}; {self.seconds:.2f} s"
                + "".join(f"\n  hint: {h}" for h in self.hints))

    def to_dict(self) -> dict:
        return asdict(self) | {"quarantined_total": self.quarantined_total}


# ----------------------------------------------------------------------------------------------- pure parts

DECIMAL_COMMA = r"^[+-]?\d+,\d+$"  # "2,55": what a number with a decimal comma looks like


def _to_float(col: str, dtype: pl.DataType, decimal_comma: bool = False, stripped: bool = False) -> pl.Expr:
    """Text to float. By default "1,234.50" loses its thousands separators and a decimal comma ("2,50") stays
    unparsable (bad_*) rather than silently becoming 250; with ``decimal_comma`` "1.234,50" reads 1234.5.
    ``stripped``: text ``col`` has no surrounding blanks already (a column, so that it is stripped once: an
    expression naming ``strip_chars`` three times would strip three times)."""
    e = pl.col(col)
    if dtype == pl.String:
        e = e if stripped else e.str.strip_chars()
        thousands, decimal = (".", ",") if decimal_comma else (",", ".")
        grouped = rf"^[+-]?\d{{1,3}}(\{thousands}\d{{3}})+(\{decimal}\d*)?$"
        e = pl.when(e.str.contains(grouped)).then(e.str.replace_all(thousands, "", literal=True)).otherwise(e)
        if decimal_comma:
            e = e.str.replace(",", ".", literal=True)
    return e.cast(pl.Float64, strict=False)


def _to_time(col: str, dtype: pl.DataType, cfg: SourceConfig) -> pl.Expr:
    e = pl.col(col)
    tz = cfg.time.timezone
    if isinstance(dtype, pl.Datetime):
        e = e if dtype.time_zone else e.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
    elif dtype == pl.Date:  # the start of the local day (01:00 where a DST change skips midnight)
        day = e.cast(pl.Datetime("us"))
        e = pl.coalesce([d.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
                         for d in (day, day + pl.duration(hours=1))])
    else:
        e = e.cast(pl.String).str.strip_chars().str.to_datetime(cfg.time.format, strict=False, time_unit="us")
        if not re.search(r"%[:#]*z", cfg.time.format or ""):  # with %z the offset fixes the instant (parsed as UTC)
            e = e.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
    return e.dt.convert_time_zone("UTC").cast(CANONICAL["event_time"])


def _str(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.String).str.strip_chars()


def id_expr(col: str, dtype: pl.DataType, ids: Ids) -> pl.Expr:
    """An id as text: invisible characters removed, blanks stripped; empty, a null value ('nan', 'NULL', 'N/A'...),
    NaN or infinite -> null; with ``normalize_float`` a whole float ('17850.0', or 17850.0 in Parquet) -> '17850'."""
    return no_id(id_text(col, dtype, ids), ids).alias(col)


def id_text(col: str, dtype: pl.DataType, ids: Ids) -> pl.Expr:
    """``id_expr`` before its ``no_id`` step (computed as a column first, the text is cleaned once: an expression
    that names it twice, as ``no_id`` does, would clean it twice)."""
    e = pl.col(col)
    if dtype.is_float():
        e = pl.when(e.is_finite()).then(e)
        if ids.normalize_float:
            whole = (e == e.round(0)) & (e.abs() < 2 ** 53)
            e = pl.when(whole).then(e.cast(pl.Int64).cast(pl.String)).otherwise(e.cast(pl.String))
    e = e.cast(pl.String)
    e = pl.when(e.str.contains(_INVISIBLE)).then(e.str.replace_all(_INVISIBLE, "")).otherwise(e).str.strip_chars()
    if ids.normalize_float:
        e = e.str.replace(_FLOAT_ID, "${1}")
    return e.alias(col)


def no_id(e: pl.Expr, ids: Ids) -> pl.Expr:
    """Null where the id text ``e`` is empty or one of ``ids.null_values`` (ignoring case)."""
    pattern = "(?i)^(?:" + "|".join(re.escape(v) for v in ids.null_values) + ")?$"  # or empty
    return pl.when(e.str.contains(pattern)).then(None).otherwise(e)


def _first_line(fmt: str, cfg: SourceConfig) -> int:
    """The 1-based file line of the first data row (after a header line for text formats)."""
    return 2 if fmt in ("csv", "whitespace") and cfg.csv.has_header else 1


def _line_numbers(lf: pl.LazyFrame, first_line: int, multiline: bool) -> pl.LazyFrame:
    """``_row`` (the record number) and ``source_row`` (the file's line number): with ``multiline`` records, every
    line break inside the fields before a record moves it down a line."""
    lf = lf.with_row_index(_ROW_IDX)
    if not multiline:
        return lf.with_columns((pl.col(_ROW_IDX) + first_line).alias(ROW_COLUMN))
    text = [n for n, t in lf.collect_schema().items() if t == pl.String]
    breaks = pl.sum_horizontal([pl.col(n).str.count_matches("\n", literal=True).fill_null(0) for n in text])
    return lf.with_columns((pl.col(_ROW_IDX) + first_line + breaks.cum_sum() - breaks).cast(pl.get_index_type())
                           .alias(ROW_COLUMN))


def canonical_frame(lf: pl.LazyFrame, cfg: SourceConfig, file_idx: int, file_name: str, fmt: str,
                    spec: FileSpec, multiline: bool = False) -> pl.LazyFrame:
    """Map one file's raw columns onto canonical columns (its own mapping, ``SourceConfig.mapping``); keeps raw
    values (as text) for the quarantine and helper flags (``_bad_*``) for ``with_reasons``. ``multiline``: some
    records span lines (see ``readers.multiline_records``). Return rules apply to purchase rows only: a negative
    reading or service value keeps its sign."""
    schema = lf.collect_schema()
    m, c = cfg.mapping(spec)
    lf = _line_numbers(lf, _first_line(fmt, cfg), multiline).with_columns(
        pl.lit(file_name).alias(FILE_COLUMN), pl.lit(file_idx, pl.Int32).alias(_FILE_IDX))
    if READER_REASON not in schema:
        lf = lf.with_columns(pl.lit(None, pl.String).alias(READER_REASON))

    def mapped_or_const(canon: str, parse) -> pl.Expr:
        if canon in m:
            return parse(m[canon], schema[m[canon]])
        if canon in c:
            return pl.lit(c[canon]).cast(CANONICAL[canon])
        return pl.lit(None, CANONICAL[canon])

    numbers_as_text = {m[k] for k in ("quantity", "unit_price", "amount") if k in m and schema[m[k]] == pl.String}
    lf = lf.with_columns(**{_STRIPPED + col: pl.col(col).str.strip_chars() for col in numbers_as_text})

    def number(col: str, dtype: pl.DataType) -> pl.Expr:
        decimal_comma = cfg.csv.decimal_comma and fmt in ("csv", "whitespace")
        if col in numbers_as_text:
            return _to_float(_STRIPPED + col, dtype, decimal_comma, stripped=True)
        return _to_float(col, dtype, decimal_comma)

    def ident(col: str, dtype: pl.DataType) -> pl.Expr:
        return id_text(col, dtype, cfg.ids)  # then no_id, on the column

    exprs: dict[str, pl.Expr] = {
        "customer_id": mapped_or_const("customer_id", ident),
        "item_id": mapped_or_const("item_id", ident),
        "quantity": mapped_or_const("quantity", number),
        "unit_price": mapped_or_const("unit_price", number),
        "amount": mapped_or_const("amount", number),
        "event_time": mapped_or_const("event_time", lambda col, dt: _to_time(col, dt, cfg)),
        "event_type": mapped_or_const("event_type", lambda col, _: _str(col).str.to_lowercase()),
        "text": mapped_or_const("text", lambda col, _: pl.col(col).cast(pl.String)),
        "channel": mapped_or_const("channel", lambda col, _: _str(col)),
        "actor": mapped_or_const("actor", lambda col, _: _str(col).str.to_lowercase()),
    }
    raw_cols = sorted({*m.values(), *cfg.extra_columns, *([cfg.order_column] if cfg.order_column else [])})
    order = pl.col(cfg.order_column).cast(pl.Int64, strict=False) if cfg.order_column else pl.lit(None, pl.Int64)
    # parse once; the flags below compare parsed values with the raw text kept for the quarantine
    lf = lf.with_columns(**exprs, basket_id=ident(m["basket_id"], schema[m["basket_id"]]) if "basket_id" in m
                         else pl.lit(None, pl.String), _order=order,
                         **{f"raw:{col}": pl.col(col) for col in raw_cols})  # as read: text in the quarantine
    lf = lf.with_columns(**{k: no_id(pl.col(k), cfg.ids) for k in ("customer_id", "item_id", "basket_id") if k in m})

    def written(col: str) -> pl.Expr:
        """The source gave a value (blank text is missing)."""
        if col in numbers_as_text:
            return pl.col(_STRIPPED + col).str.len_bytes() > 0
        if schema[col] == pl.String:
            return pl.col(f"raw:{col}").str.strip_chars().str.len_bytes() > 0
        return pl.col(f"raw:{col}").is_not_null()

    failed = lambda canon: (written(m[canon]) & pl.col(canon).is_null()).fill_null(False) if canon in m else pl.lit(False)  # noqa: E731
    sale = pl.col("event_type").is_null() | pl.col("event_type").is_in(["purchase", "return"])
    negative_qty = sale & ((pl.col("quantity") < 0).fill_null(False) | (pl.col("amount") < 0).fill_null(False))
    is_return = negative_qty if cfg.returns.negative_quantity else pl.lit(False)
    if cfg.returns.id_prefix:
        id_col = cfg.returns.id_column or m.get("basket_id")
        if id_col:
            is_return = is_return | pl.col(f"raw:{id_col}" if id_col in raw_cols else id_col).cast(pl.String) \
                .str.strip_chars().str.starts_with(cfg.returns.id_prefix).fill_null(False)
    if cfg.returns.flag_column:
        is_return = is_return | _str(cfg.returns.flag_column).is_in(cfg.returns.flag_values).fill_null(False)
    is_return = is_return & sale
    lf = lf.with_columns(
        _bad_time=failed("event_time"), _bad_qty=failed("quantity"), _bad_price=failed("unit_price") | failed("amount"),
        _bad_order=(pl.col(f"raw:{cfg.order_column}").is_not_null() & pl.col("_order").is_null()) if cfg.order_column else pl.lit(False),
        _is_return=is_return, _negative_qty=negative_qty,
    ).drop([_STRIPPED + col for col in numbers_as_text])
    qty, price, amount = pl.col("quantity"), pl.col("unit_price"), pl.col("amount")
    lf = lf.with_columns(
        event_type=pl.when(pl.col("_is_return")).then(pl.lit("return"))
        .otherwise(pl.col("event_type").fill_null("purchase")),
        quantity=pl.when(sale).then(qty.abs()).otherwise(qty), amount=pl.when(sale).then(amount.abs()).otherwise(amount),
        actor=pl.col("actor").fill_null("unknown"), _no_basket=pl.lit("basket_id" not in m),
    ).with_columns(
        unit_price=pl.when(price.is_null() & pl.col("quantity").is_not_null() & (pl.col("quantity") != 0))
        .then(pl.col("amount") / pl.col("quantity")).otherwise(price),
    ).with_columns(
        amount=pl.when(pl.col("amount").is_null()).then(pl.col("quantity") * pl.col("unit_price")).otherwise(pl.col("amount")),
    )
    guests = pl.col("customer_id").is_null()
    if cfg.guest_customer_ids:
        guests = guests | pl.col("customer_id").is_in(cfg.guest_customer_ids)
    lf = lf.with_columns(customer_id=pl.when(guests).then(None).otherwise(pl.col("customer_id")))
    extras = {col: pl.col(col) for col in cfg.extra_columns}
    consts = {k: pl.lit(v) for k, v in cfg.extra_constants(spec).items()}
    return lf.with_columns(**extras, **consts)


def with_reasons(lf: pl.LazyFrame, cfg: SourceConfig, not_after: datetime,
                 columns: dict[str, str] | None = None) -> pl.LazyFrame:
    """Add the quarantine ``reason`` (null for accepted rows): the first failed check, in REASONS order.
    ``columns``: the file's mapping (default: the source's)."""
    v = cfg.validation
    columns = cfg.columns if columns is None else columns
    is_purchase = pl.col("event_type").is_in(["purchase", "return"])
    qty, price, amount = pl.col("quantity"), pl.col("unit_price"), pl.col("amount")
    numbers = [qty, price, amount]
    non_finite = pl.any_horizontal([(e.is_nan() | e.is_infinite()).fill_null(False) for e in numbers])
    # quantity and amount are made positive for returns; a negative one that marks no return is an error
    negative = (price < 0).fill_null(False) | (pl.col("_negative_qty") & ~pl.col("_is_return"))
    excluded = pl.lit(False)
    if cfg.exclude.item_codes:
        excluded = excluded | pl.col("item_id").is_in(cfg.exclude.item_codes).fill_null(False)
    if cfg.exclude.item_pattern:
        excluded = excluded | pl.col("item_id").str.contains(cfg.exclude.item_pattern).fill_null(False)
    mapped = lambda *canon: pl.lit(any(k in columns for k in canon))  # noqa: E731
    low_price = (price < v.min_unit_price).fill_null(False) if v.min_unit_price is not None else pl.lit(False)
    event_time = pl.col("event_time")
    checks: list[tuple[str, pl.Expr]] = [
        ("missing_item", is_purchase & pl.col("item_id").is_null() & mapped("item_id")),
        ("missing_basket", is_purchase & pl.col("basket_id").is_null() if "basket_id" in columns else pl.lit(False)),
        ("unparsable_time", pl.col("_bad_time") | (mapped("event_time") & event_time.is_null())),
        ("bad_order", pl.col("_bad_order") | (pl.lit(cfg.order_column is not None) & pl.col("_order").is_null())),
        ("bad_quantity", pl.col("_bad_qty")),
        ("missing_quantity", is_purchase & qty.is_null() & mapped("quantity")),
        ("bad_price", pl.col("_bad_price")),
        ("missing_price", is_purchase & price.is_null() & amount.is_null() & mapped("unit_price", "amount")),
        ("non_finite", non_finite),
        ("negative_value", negative),
        ("absurd_quantity", (qty > v.max_quantity).fill_null(False)),
        ("absurd_price", (price > v.max_unit_price).fill_null(False)),
        ("low_price", is_purchase & low_price),
        ("bad_event_type", ~pl.col("event_type").is_in(list(EVENT_TYPES)) | ~pl.col("actor").is_in(["human", "machine", "unknown"])),
        ("early_event", (event_time < pl.lit(_utc(v.not_before), CANONICAL["event_time"])).fill_null(False)),
        ("future_event", (event_time > pl.lit(not_after, CANONICAL["event_time"])).fill_null(False)),
        ("non_product", excluded),
    ]
    reason = pl.lit(None, pl.String)
    for name, cond in reversed(checks):
        reason = pl.when(cond).then(pl.lit(name)).otherwise(reason)
    return lf.with_columns(pl.coalesce(READER_REASON, reason).alias(QUARANTINE_REASON))


def _utc(t: datetime) -> datetime:
    """A configured time: naive ones are UTC."""
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def basket_ids(lf: pl.LazyFrame, cfg: SourceConfig) -> pl.LazyFrame:
    """Basket ids for the files that map none (row by row, so per file)."""
    if any("basket_id" not in cfg.mapping(spec)[0] for spec in cfg.files):
        # order numbers may restart in every file; a time is the same instant in any file (so overlapping
        # files still yield the same basket ids and their copies are found as overlap_duplicate)
        key = (pl.col(_FILE_IDX).cast(pl.String) + "|" + pl.col("_order").cast(pl.String) if cfg.order_column
               else pl.col("event_time").dt.to_string("%Y-%m-%dT%H:%M:%S%.f"))
        lf = lf.with_columns(basket_id=pl.when(pl.col("_no_basket"))
                             .then(pl.col("customer_id").fill_null("guest") + "|" + key).otherwise(pl.col("basket_id")))
    return lf


def basket_seq(lf: pl.LazyFrame, cfg: SourceConfig) -> pl.LazyFrame:
    """Basket order for order-only sources: the dense rank of (file, order number) within a customer over the
    accepted rows (a quarantined basket leaves no gap in 0..n-1); a window per customer, so per bucket."""
    if not cfg.order_column:
        return lf.with_columns(basket_seq=pl.lit(None, pl.Int64))
    return lf.with_columns(basket_seq=pl.when(pl.col(QUARANTINE_REASON).is_null())
                           .then(pl.struct(_FILE_IDX, "_order")).rank("dense").over("customer_id").cast(pl.Int64) - 1)


def finish(lf: pl.LazyFrame, cfg: SourceConfig) -> pl.LazyFrame:
    """Across all files: basket ids (for the files that map none), and basket order for order-only sources."""
    return basket_seq(basket_ids(lf, cfg), cfg)


def attribute_frame(table: AttributeTable, key_name: str, prefix: str, cfg: SourceConfig) -> pl.LazyFrame:
    """An item or customer attribute table keyed like the canonical events (its key read as the events' ids are,
    rows without a key left out): its ``columns`` (the key must be unique) or, with ``count_as``, the number of
    rows per key."""
    path = cfg.resolve(table.path)
    fmt = readers.detect_format(path, table.format)
    attrs = readers.scan(path, fmt, table.csv, table.sheet)
    readers.check_columns(path, attrs, {f"{prefix}{c}": c for c in [table.key, *table.columns]}, table.csv,
                          where=f"its entry under `{prefix}attributes:` of the source config", mapping="`key:` and `columns:`")
    key = id_expr(table.key, attrs.collect_schema()[table.key], cfg.ids).alias(key_name)
    attrs = attrs.filter(key.is_not_null())
    if table.count_as:
        return attrs.group_by(key).agg(pl.len().cast(pl.Int64).alias(f"{prefix}{table.count_as}"))
    attrs = attrs.select(key, *[pl.col(c).alias(f"{prefix}{c}") for c in table.columns])
    try:
        dupes = attrs.group_by(key_name).len().filter(pl.col("len") > 1).head(3).collect()
    except pl.exceptions.PolarsError as exc:
        raise readers.read_error(path, fmt, exc, table.csv) from None
    if dupes.height:
        raise readers.SourceError(f"{path}: key column {table.key!r} is not unique (e.g. {dupes[key_name].to_list()}); "
                                  f"an attribute table needs one row per key: de-duplicate it first")
    return attrs


def attribute_tables(tables: list[AttributeTable], key_name: str, prefix: str, cfg: SourceConfig) -> pl.LazyFrame:
    """Several attribute tables of one kind joined on the key: a key missing from a ``columns`` table gets nulls
    there, and 0 in a ``count_as`` column."""
    frames = [attribute_frame(t, key_name, prefix, cfg) for t in tables]
    out = frames[0]
    for frame in frames[1:]:
        out = out.join(frame, on=key_name, how="full", coalesce=True)
    counts = [f"{prefix}{t.count_as}" for t in tables if t.count_as]
    return out.with_columns(pl.col(counts).fill_null(0)) if counts else out


# ----------------------------------------------------------------------------------------------- I/O edge

#: input rows per bucket of the event store when the config sets no ``buckets``
ROWS_PER_BUCKET = 1_000_000


def default_buckets(rows: int) -> int:
    """One bucket per ``ROWS_PER_BUCKET`` input rows, at least 1."""
    return max(1, -(-rows // ROWS_PER_BUCKET))


class FileTask(NamedTuple):
    """One input file's work, as an engine runs it: the source, the file's place in ``input_files()`` and what the
    earlier passes found (``records``: its rows; ``dups``: its duplicate and overlap rows; ``later``: the accepted
    time spans of later files, for ``overlap: later_file``)."""

    cfg: SourceConfig
    index: int
    file: InputFile
    spec: FileSpec
    not_after: datetime
    records: int = 0
    dups: tuple[pl.Series, pl.Series] | None = None
    later: list[tuple[datetime | None, datetime | None]] | None = None


def _raw(task: FileTask) -> pl.LazyFrame:
    path, fmt, sheet = task.file
    return readers.scan(path, fmt, task.cfg.csv, sheet, task.spec.json_lines, list(_needed(task.cfg, task.spec).values()))


def _key_columns(cfg: SourceConfig, spec: FileSpec) -> list[str]:
    return sorted(set(_needed(cfg, spec).values()))


@contextmanager
def _reading(task: FileTask) -> Iterator[None]:
    """Name the file (and the line, where it can be found) when polars fails while reading it."""
    try:
        yield
    except pl.exceptions.PolarsError as exc:
        if publish.is_disk_full(exc):
            raise
        raise readers.read_error(task.file.path, task.file.fmt, exc, task.cfg.csv) from None


def count_file(task: FileTask) -> int:
    """Pass 1 without the duplicate check: the file's rows."""
    path, fmt, sheet = task.file
    with _reading(task):
        return readers.count_rows(path, fmt, task.cfg.csv, sheet, task.spec.json_lines)


def hash_file(args: tuple[FileTask, int, int, str, int]) -> int:
    """Pass 1: ``(task, mapping, rank, folder, partitions)`` -> the file's rows, its lines' hashes spilled (see
    ``duplicates.spill``)."""
    task, mapping, rank, folder, partitions = args
    with _reading(task):
        return duplicates.spill(_raw(task), _key_columns(task.cfg, task.spec), mapping, rank, Path(folder), partitions)


def resolve_partition(args: tuple[str, int]) -> pl.DataFrame:
    """Pass 1b: the copies in one hash partition (see ``duplicates.resolve``)."""
    return duplicates.resolve(Path(args[0]), args[1])


def file_frame(task: FileTask) -> pl.LazyFrame:
    """One file's rows as canonical events with their quarantine ``reason`` (duplicates and superseded rows marked
    from ``task.dups`` / ``task.later``) and basket ids; ``basket_seq`` is set per bucket (``basket_seq``)."""
    cfg, (path, fmt, _) = task.cfg, task.file
    multiline = readers.multiline_records(path, fmt, cfg.csv, task.records)
    lf = with_reasons(canonical_frame(_raw(task), cfg, task.index, path.name, fmt, task.spec, multiline), cfg,
                      task.not_after, cfg.mapping(task.spec)[0])
    if task.dups is not None:
        same, earlier = (rows.implode() for rows in task.dups)
        reason, row = pl.col(QUARANTINE_REASON), pl.col(_ROW_IDX)
        lf = lf.with_columns(**{QUARANTINE_REASON: pl.when(reason.is_null() & row.is_in(same))
                                .then(pl.lit("duplicate_line"))
                                .when(reason.is_null() & row.is_in(earlier))
                                .then(pl.lit("overlap_duplicate")).otherwise(reason)})
    if task.later is not None:
        lf = _supersede(lf, task.later)
    return basket_ids(lf, cfg)


def accepted_span(task: FileTask) -> tuple[datetime | None, datetime | None]:
    """The first and last time of a file's accepted events (``overlap: later_file``)."""
    with _reading(task):
        return _span(file_frame(task)).collect(engine="streaming").row(0)


def _span(lf: pl.LazyFrame) -> pl.LazyFrame:
    return lf.filter(pl.col(QUARANTINE_REASON).is_null()).select(pl.col("event_time").min().alias("lo"),
                                                                  pl.col("event_time").max().alias("hi"))


def _supersede(lf: pl.LazyFrame, later: list[tuple[datetime | None, datetime | None]]) -> pl.LazyFrame:
    """Accepted rows inside a later file's time span become ``superseded``."""
    ok = pl.col(QUARANTINE_REASON).is_null()
    inside = [pl.col("event_time").is_between(pl.lit(lo, CANONICAL["event_time"]), pl.lit(hi, CANONICAL["event_time"]))
              for lo, hi in later if lo is not None]
    covered = pl.any_horizontal(inside).fill_null(False) if inside else pl.lit(False)
    return lf.with_columns(pl.when(ok & covered).then(pl.lit("superseded")).otherwise(pl.col(QUARANTINE_REASON))
                           .alias(QUARANTINE_REASON))


def superseded(frames: list[pl.LazyFrame]) -> list[pl.LazyFrame]:
    """``overlap: later_file``: a file's rows inside a later file's time range (its first to its last accepted
    event) are ``superseded``: the later export is taken as the truth for the times it covers."""
    spans = [s.row(0) for s in pl.collect_all([_span(lf) for lf in frames], engine="streaming")]
    return [_supersede(lf, spans[i + 1:]) for i, lf in enumerate(frames)]


def _file_tasks(cfg: SourceConfig, not_after: datetime | None) -> list[FileTask]:
    """Every input file's task, its columns checked (fails fast on a missing one)."""
    not_after = not_after or cfg.validation.not_after or datetime.now(timezone.utc)
    if not_after.tzinfo is None:
        not_after = not_after.replace(tzinfo=timezone.utc)
    tasks = []
    for i, (path, spec) in enumerate(cfg.input_files()):
        task = FileTask(cfg, i, InputFile(path, readers.detect_format(path, cfg.format), spec.sheet), spec, not_after)
        readers.check_columns(path, _raw(task), _needed(cfg, spec), cfg.csv)
        tasks.append(task)
    return tasks


def first_pass(tasks: list[FileTask], engine: Engine, work: Path) -> list[FileTask]:
    """Count every file's rows and, with ``duplicates: quarantine``, find its duplicate and overlap rows exactly
    (hashes spilled under ``work``, removed after). The first copy is kept: by file order, or with ``overlap:
    later_file`` the copy in the later file."""
    cfg = tasks[0].cfg
    if cfg.validation.duplicates != "quarantine":
        return [t._replace(records=n) for t, n in zip(tasks, engine.map(count_file, tasks))]
    later_first = cfg.validation.overlap == "later_file"
    keys = [_key_columns(cfg, t.spec) for t in tasks]
    ranks = [len(tasks) - 1 - i if later_first else i for i in range(len(tasks))]
    parts = duplicates.partitions_for(sum(_size(t.file.path) for t in tasks))
    folder = work / "hashes"
    try:
        records = engine.map(hash_file, [(t, keys.index(k), r, str(folder), parts) for t, k, r in zip(tasks, keys, ranks)])
        copies = pl.concat(engine.map(resolve_partition, [(str(folder), p) for p in range(parts)]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    found = duplicates.by_file(copies, len(tasks))
    return [t._replace(records=n, dups=found[r]) for t, n, r in zip(tasks, records, ranks)]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.parquet")) if path.is_dir() else path.stat().st_size


def plan(cfg: SourceConfig, not_after: datetime | None = None, engine: str | None = None
         ) -> tuple[pl.LazyFrame, list[InputFile]]:
    """The ingest plan over all files as one lazy frame (with ``reason``; the in-memory path) and each file's
    (path, format, sheet). Finding duplicate lines is an eager pass (see ``first_pass``); with ``validation.overlap:
    later_file``, each file's time range is another."""
    tasks = _file_tasks(cfg, not_after)
    with tempfile.TemporaryDirectory(prefix="twins-plan-") as work:
        tasks = first_pass(tasks, get_engine(engine), Path(work))
    frames = [file_frame(t) for t in tasks]
    if cfg.validation.overlap == "later_file":
        frames = superseded(frames)
    return finish(pl.concat(frames, how="diagonal_relaxed"), cfg), [t.file for t in tasks]


def _needed(cfg: SourceConfig, spec: FileSpec) -> dict[str, str]:
    """The source columns one file must have, keyed by the config key that names each."""
    needed = dict(cfg.mapping(spec)[0])
    for col in cfg.extra_columns:
        needed[f"extra:{col}"] = col
    if cfg.order_column:
        needed["order_column"] = cfg.order_column
    if cfg.returns.flag_column:
        needed["returns.flag_column"] = cfg.returns.flag_column
    if cfg.returns.id_column:
        needed["returns.id_column"] = cfg.returns.id_column
    return needed


def ingest(cfg: SourceConfig, out_dir: str | Path, not_after: datetime | None = None,
           engine: str | None = None) -> IngestReport:
    """Run the ingest: write ``events.parquet`` (a folder of customer buckets, see ``twins.data.events``),
    ``quarantine.parquet``, ``report.json`` and the attribute tables (``items.parquet``, ``customers.parquet``) into
    ``out_dir``, published by ``twins.publish`` (locked against another run, one atomic swap: a failed or killed run
    leaves the previous output in place). Per-file and per-bucket work runs on ``engine`` (``twins.engine``; default
    local), memory bounded by one file's stream and one bucket. Raises SourceError on unreadable input,
    ``publish.OutputBusy`` / ``publish.DiskFull``."""
    out_dir = Path(out_dir)
    with publish.locked(out_dir, f"twins ingest {cfg.name}"), publish.staged_dir(out_dir) as tmp:
        try:
            report = _write(cfg, tmp, out_dir, not_after, get_engine(engine))
        except (pl.exceptions.PolarsError, OSError) as exc:
            if publish.is_disk_full(exc) and not isinstance(exc, publish.DiskFull):
                raise publish.disk_full(out_dir.parent, exc) from exc
            raise
        publish.publish_dir(tmp, out_dir)
    return report


class BucketTask(NamedTuple):
    """One bucket's sort: its parts under ``parts``, its file ``target``, the events' ``schema``."""

    cfg: SourceConfig
    bucket: int
    parts: str
    target: str
    schema: dict[str, pl.DataType]


_BUCKET = "__bucket"
_HELPERS = (_FILE_IDX, "_order")  # carried into the bucket parts of order-only sources: basket_seq


def write_file(args: tuple[FileTask, int, str, dict[str, pl.DataType]]) -> None:
    """Pass 2: ``(task, buckets, work, schema)``: the file's accepted events into per-bucket parts
    (``work/events/<file>/__bucket=<b>/``) and its quarantined rows into ``work/quarantine/<file>.parquet``, one
    stream with one consumer (two sinks on one scan let the faster one run ahead: memory grew with the file)."""
    task, n, work, schema = args
    lf = file_frame(task)
    have = lf.collect_schema()
    events = [(pl.col(c) if c in have else pl.lit(None)).cast(t).alias(c) for c, t in schema.items()]
    raw = [c for c in have.names() if c.startswith("raw:")]
    (Path(work) / "quarantine").mkdir(parents=True, exist_ok=True)
    parts = FileParts(Path(work) / "events" / f"{task.index:05d}", Path(work) / "quarantine" / f"{task.index:05d}.parquet",
                      n, [*schema, *(_HELPERS if task.cfg.order_column else ())], raw,
                      {FILE_COLUMN: pl.String, ROW_COLUMN: have[ROW_COLUMN], QUARANTINE_REASON: pl.String})
    with _reading(task):
        try:
            lf.select(*events, *(_HELPERS if task.cfg.order_column else ()), QUARANTINE_REASON, FILE_COLUMN, ROW_COLUMN,
                      *raw).sink_batches(parts, chunk_size=BATCH_ROWS)
        finally:
            parts.close()


#: rows per streamed batch of a file split into bucket parts and quarantine (memory: a few batches)
BATCH_ROWS = 250_000


class FileParts:
    """Splits each streamed batch of one file's validated rows: accepted events by ``bucket_of(customer_id)`` into one
    part file per bucket, ``events/__bucket=<b>/part.arrow`` (Arrow IPC, LZ4: written and read back once, 3x faster
    than Parquet; a record batch per streamed batch, rows in stream order), quarantined rows with their raw values
    as text into ``quarantine``: memory is one batch, where polars' partitioned sink would buffer every open
    partition. ``close`` when the stream ends."""

    def __init__(self, events: Path, quarantine: Path, n: int, columns: list[str], raw: list[str],
                 head: dict[str, pl.DataType]) -> None:
        self.events, self.quarantine, self.n, self.columns, self.raw = events, quarantine, n, columns, raw
        self.head = head
        self.writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        self.rejected: pq.ParquetWriter | None = None

    def __call__(self, batch: pl.DataFrame) -> None:
        ok = batch[QUARANTINE_REASON].is_null()
        self._accepted(batch.select(self.columns).filter(ok))  # the columns first: the raw ones are not copied
        bad = batch.filter(~ok)
        if bad.height:
            table = self._rejected(bad).to_arrow()
            if self.rejected is None:
                self.rejected = pq.ParquetWriter(self.quarantine, table.schema, compression="lz4")
            self.rejected.write_table(table)

    def _rejected(self, rows: pl.DataFrame) -> pl.DataFrame:
        return rows.select(*[pl.col(c).cast(t) for c, t in self.head.items()],
                           *[pl.col(c).cast(pl.String).alias(c.removeprefix("raw:")) for c in self.raw])

    def _accepted(self, events: pl.DataFrame) -> None:
        if events.is_empty():
            return
        for bucket, part in _by_bucket(events, self.n):
            table = part.to_arrow(compat_level=pl.CompatLevel.newest())
            if bucket not in self.writers:
                (self.events / f"{_BUCKET}={bucket}").mkdir(parents=True)
                self.writers[bucket] = pa.ipc.new_file(self.events / f"{_BUCKET}={bucket}" / "part.arrow", table.schema,
                                                       options=pa.ipc.IpcWriteOptions(compression="lz4"))
            self.writers[bucket].write_table(table)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        if self.rejected is not None:
            self.rejected.close()
        else:  # no row quarantined: an empty part of the same columns
            self._rejected(pl.DataFrame(schema=dict.fromkeys([*self.head, *self.raw], pl.Null))).write_parquet(
                self.quarantine, compression="lz4")


def _by_bucket(events: pl.DataFrame, n: int) -> Iterator[tuple[int, pl.DataFrame]]:
    """``events`` split by ``bucket_of(customer_id)``: each non-empty bucket and its rows in their order (one stable
    sort of the bucket numbers and one gather, then slices: 0.15 CPU s per 1M rows into 10 buckets where
    ``partition_by`` took 0.21)."""
    if n == 1:
        yield 0, events
        return
    buckets = bucket_of(events["customer_id"], n).to_numpy()
    grouped = events.rechunk()[pl.Series(np.argsort(buckets, kind="stable"))]  # a gather over chunks costs 2x
    start = 0
    for bucket, rows in enumerate(np.bincount(buckets, minlength=n).tolist()):
        if rows:
            yield bucket, grouped.slice(start, rows)
            start += rows


def sort_bucket(task: BucketTask) -> dict[str, int]:
    """Pass 3: one bucket's parts sorted by customer and time into its file (ties in input order: the parts are read
    in file order, each in row order), with ``basket_seq``; returns its counts (rows, guest rows, returns,
    customers, customer ids written as floats) and the first of those ids (for ``_float_id_hint``)."""
    files = sorted(Path(task.parts).glob(f"*/{_BUCKET}={task.bucket}/*.arrow"))
    events = by_customer_and_time(pl.read_ipc(files)) if files else pl.DataFrame(schema=task.schema)
    events = basket_seq(events.lazy().with_columns(pl.lit(None, pl.String).alias(QUARANTINE_REASON)), task.cfg)
    events = events.select(*task.schema).collect()
    events.write_parquet(task.target, compression="lz4")
    ids = events["customer_id"].drop_nulls().unique()
    floats = ids.filter(ids.str.contains(_FLOAT_ID))
    return {"rows": events.height, "guests": events["customer_id"].null_count(),
            "returns": (events["event_type"] == "return").sum(), "customers": ids.len(), "float_ids": floats.len(),
            "float_id": floats.min()}


def _events_schema(tasks: list[FileTask]) -> dict[str, pl.DataType]:
    """The events' columns (canonical, then extra) and types over all files (an extra constant missing from a
    file is null there; differing types relax to a common one)."""
    cfg = tasks[0].cfg
    extras = list(dict.fromkeys([*cfg.extra_columns, *(k for f in cfg.files for k in cfg.extra_constants(f))]))
    frames = []
    for task in tasks:
        path, fmt, _ = task.file
        have = canonical_frame(_raw(task), cfg, task.index, path.name, fmt, task.spec).collect_schema()
        frames.append(pl.DataFrame(schema={c: have[c] for c in extras if c in have}))
    relaxed = pl.concat(frames, how="diagonal_relaxed").schema
    return {**CANONICAL, **{c: relaxed[c] for c in extras}}


def _write(cfg: SourceConfig, tmp: Path, out_dir: Path, not_after: datetime | None, engine: Engine) -> IngestReport:
    """Write the ingest's files into the empty folder ``tmp``; the report names them as they will be in ``out_dir``.
    Passes: 1 count (and hash) every file; 2 validate each file into bucket parts and a quarantine part; 3 sort
    each bucket into its file."""
    t0 = time.perf_counter()
    work = tmp / ".work"
    tasks = first_pass(_file_tasks(cfg, not_after), engine, work)
    if cfg.validation.overlap == "later_file":
        spans = engine.map(accepted_span, tasks)
        tasks = [t._replace(later=spans[i + 1:]) for i, t in enumerate(tasks)]
    n = cfg.buckets or default_buckets(sum(t.records for t in tasks))
    schema = _events_schema(tasks)
    engine.map(write_file, [(t, n, str(work), schema) for t in tasks])
    folder = tmp / EVENTS
    folder.mkdir()
    stats = engine.map(sort_bucket, [BucketTask(cfg, b, str(work / "events"), str(folder / BUCKET_FORMAT.format(b)),
                                                schema) for b in range(n)])
    quarantine = tmp / "quarantine.parquet"
    pl.concat([pl.scan_parquet(work / "quarantine" / f"{t.index:05d}.parquet") for t in tasks],
              how="diagonal_relaxed").sink_parquet(quarantine, compression="lz4")
    shutil.rmtree(work)
    for name, tables, key, prefix in (("items", cfg.item_attributes, "item_id", "item_"),
                                      ("customers", cfg.customer_attributes, "customer_id", "customer_")):
        if tables:
            try:
                attribute_tables(tables, key, prefix, cfg).sink_parquet(tmp / f"{name}.parquet")
            except pl.exceptions.PolarsError as exc:
                if publish.is_disk_full(exc):
                    raise
                raise _read_error(cfg, [t.file for t in tasks], exc) from None
    per_file: dict[str, int] = {}
    for i, t in enumerate(tasks):  # one file read twice is counted twice
        per_file[str(t.file.path) if str(t.file.path) not in per_file else f"{t.file.path} (files[{i}])"] = t.records
    reasons = pl.scan_parquet(quarantine).group_by(QUARANTINE_REASON).len().collect()
    report = IngestReport(
        source=cfg.name, files=[str(t.file.path) for t in tasks], rows_in=sum(per_file.values()),
        accepted=sum(s["rows"] for s in stats), quarantined={r: k for r, k in reasons.iter_rows()},
        guest_rows=sum(s["guests"] for s in stats), returns=sum(s["returns"] for s in stats),
        customers=sum(s["customers"] for s in stats), events_path=str(out_dir / EVENTS),
        quarantine_path=str(out_dir / "quarantine.parquet"), seconds=time.perf_counter() - t0,
        per_file_rows=per_file, hints=_decimal_comma_hint(quarantine, cfg) + _float_id_hint(stats, cfg), buckets=n)
    if report.rows_in != report.accepted + report.quarantined_total:
        raise ReconciliationError(f"{cfg.name}: rows in {report.rows_in} != accepted {report.accepted} + "
                                  f"quarantined {report.quarantined_total}; output not written")
    (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return report


def _float_id_hint(stats: list[dict], cfg: SourceConfig) -> list[str]:
    """Customer ids that read like floats ('17850.0', as a spreadsheet or pandas writes an integer id), when
    ``ids.normalize_float`` is off: `twins twin show 17850` would not find them. ``stats``: ``sort_bucket``'s counts
    (a customer lies in one bucket, so they add up)."""
    found = sum(s["float_ids"] for s in stats)
    if cfg.ids.normalize_float or not found:
        return []
    first = min(s["float_id"] for s in stats if s["float_id"] is not None)
    return [f"{found:,} customer id(s) are written as floats (e.g. {first!r}); if they are whole numbers, set "
            "`ids: {normalize_float: true}` in the source config"]


def _decimal_comma_hint(quarantine_path: Path, cfg: SourceConfig) -> list[str]:
    """Numbers quarantined as bad_quantity / bad_price that are written with a decimal comma, when
    ``csv.decimal_comma`` is off."""
    columns = sorted({cfg.columns[c] for c in ("quantity", "unit_price", "amount") if c in cfg.columns})
    if cfg.csv.decimal_comma or not columns:
        return []
    q = pl.scan_parquet(quarantine_path).filter(pl.col(QUARANTINE_REASON).is_in(["bad_quantity", "bad_price"]))
    comma = pl.any_horizontal([pl.col(c).str.strip_chars().str.contains(DECIMAL_COMMA).fill_null(False) for c in columns])
    rows = q.filter(comma).select(FILE_COLUMN, ROW_COLUMN, *columns)
    n = rows.select(pl.len()).collect().item()
    if not n:
        return []
    first = rows.head(1).collect().row(0, named=True)
    col = next(c for c in columns if first[c] is not None and re.match(DECIMAL_COMMA, first[c].strip()))
    return [f"{n:,} quarantined row(s) hold numbers with a decimal comma (e.g. {col} {first[col]!r} in "
            f"{first[FILE_COLUMN]} line {first[ROW_COLUMN]}); if the files write numbers that way, set "
            "`csv: {decimal_comma: true}` in the source config"]


def _read_error(cfg: SourceConfig, files: list[InputFile], exc: Exception) -> readers.SourceError:
    """The streaming run does not say which file failed: read each one alone to name it."""
    now = datetime.now(timezone.utc)
    specs = [spec for _, spec in cfg.input_files()]
    for i, ((path, fmt, sheet), spec) in enumerate(zip(files, specs)):
        frame = with_reasons(canonical_frame(readers.scan(path, fmt, cfg.csv, sheet, spec.json_lines), cfg, i, path.name,
                                             fmt, spec),
                             cfg, now, cfg.mapping(spec)[0])
        try:
            frame.select(pl.all().null_count()).collect(engine="streaming")
        except pl.exceptions.PolarsError as file_exc:
            return readers.read_error(path, fmt, file_exc, cfg.csv)
    for table in [*cfg.item_attributes, *cfg.customer_attributes]:
        path = cfg.resolve(table.path)
        fmt = readers.detect_format(path, table.format)
        try:
            readers.scan(path, fmt, table.csv, table.sheet).select(pl.all().null_count()).collect(engine="streaming")
        except pl.exceptions.PolarsError as file_exc:
            return readers.read_error(path, fmt, file_exc, table.csv)
    return readers.SourceError(f"source {cfg.name}: reading failed: {readers._first_line(exc)} "
                               f"(check the files' format, separator and encoding in the source config)")
