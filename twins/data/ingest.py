"""Ingest: raw files -> canonical events + quarantine, reconciled (rows in = accepted + quarantined).

Pure expression builders (``canonical_frame``, ``with_reasons``) do the work; ``ingest`` is the I/O edge.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import polars as pl

from twins import publish
from twins.data import readers
from twins.data.schema import CANONICAL, EVENT_TYPES, FILE_COLUMN, QUARANTINE_REASON, READER_REASON, ROW_COLUMN
from twins.data.source import AttributeTable, FileSpec, Ids, SourceConfig

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


def _to_float(col: str, dtype: pl.DataType, decimal_comma: bool = False) -> pl.Expr:
    """Text to float. By default "1,234.50" loses its thousands separators and a decimal comma ("2,50") stays
    unparsable (bad_*) rather than silently becoming 250; with ``decimal_comma`` "1.234,50" reads 1234.5."""
    e = pl.col(col)
    if dtype == pl.String:
        e = e.str.strip_chars()
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
    no_id = "(?i)^(?:" + "|".join(re.escape(v) for v in ids.null_values) + ")?$"  # or empty
    return pl.when(e.str.contains(no_id)).then(None).otherwise(e).alias(col)


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

    def number(col: str, dtype: pl.DataType) -> pl.Expr:
        return _to_float(col, dtype, cfg.csv.decimal_comma and fmt in ("csv", "whitespace"))

    def ident(col: str, dtype: pl.DataType) -> pl.Expr:
        return id_expr(col, dtype, cfg.ids)

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
                         **{f"raw:{col}": pl.col(col).cast(pl.String) for col in raw_cols})
    written = lambda col: pl.col(f"raw:{col}").str.strip_chars().str.len_bytes() > 0  # noqa: E731  (blank = missing)
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
    )
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


def finish(lf: pl.LazyFrame, cfg: SourceConfig) -> pl.LazyFrame:
    """Across all files: basket ids (for the files that map none), and basket order for order-only sources."""
    if any("basket_id" not in cfg.mapping(spec)[0] for spec in cfg.files):
        # order numbers may restart in every file; a time is the same instant in any file (so overlapping
        # files still yield the same basket ids and their copies are found as overlap_duplicate)
        key = (pl.col(_FILE_IDX).cast(pl.String) + "|" + pl.col("_order").cast(pl.String) if cfg.order_column
               else pl.col("event_time").dt.to_string("%Y-%m-%dT%H:%M:%S%.f"))
        lf = lf.with_columns(basket_id=pl.when(pl.col("_no_basket"))
                             .then(pl.col("customer_id").fill_null("guest") + "|" + key).otherwise(pl.col("basket_id")))
    if cfg.order_column:
        # rank accepted rows only, so that a quarantined basket leaves no gap in 0..n-1
        lf = lf.with_columns(basket_seq=pl.when(pl.col(QUARANTINE_REASON).is_null())
                             .then(pl.struct(_FILE_IDX, "_order")).rank("dense").over("customer_id") - 1)
    else:
        lf = lf.with_columns(basket_seq=pl.lit(None, pl.Int64))
    return lf


def duplicate_rows(raws: list[pl.LazyFrame], key_cols: list[list[str]]) -> list[tuple[pl.Series, pl.Series]]:
    """Exact copies of raw lines, per file: (0-based row numbers of ``duplicate_line``, of ``overlap_duplicate``).

    The first occurrence (by file, then row) is kept; a copy is an overlap_duplicate when its line first appeared
    in an earlier file. Only a 64-bit hash of each line's mapped columns is held in memory (a false match among
    10M lines has p ~ 3e-6), so the main pass can stream. A copy of a bad line is bad for the same reason; that
    reason wins over the duplicate one. ``key_cols``: each file's mapped columns (files that map other columns
    hold no copies of each other's lines)."""
    keys = pl.concat([raw.select(pl.lit(i, pl.Int32).alias("f"),
                                 pl.struct(pl.lit(key_cols.index(cols)).alias("_mapping"), *cols).hash(seed=7).alias("h"))
                      .with_row_index("r") for i, (raw, cols) in enumerate(zip(raws, key_cols))]).collect(engine="streaming")
    first = keys["h"].is_first_distinct()
    copies = keys.filter(~first)
    if copies.height:
        origin = keys.filter(first & pl.col("h").is_in(copies["h"].unique().implode())).select("h", first_f="f")
        copies = copies.join(origin, on="h", how="left", maintain_order="left")
    else:
        copies = copies.with_columns(first_f=pl.col("f"))
    in_file = pl.col("first_f") == pl.col("f")
    return [(k.filter(in_file)["r"], k.filter(~in_file)["r"]) for k in (copies.filter(pl.col("f") == i) for i in range(len(raws)))]


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

def plan(cfg: SourceConfig, not_after: datetime | None = None) -> tuple[pl.LazyFrame, list[InputFile]]:
    """The ingest plan over all files (lazy, with ``reason``) and the (path, format, sheet) of each file. Finding
    duplicate lines is the one eager pass (over hashes only); with ``validation.overlap: later_file``, each file's
    time range is another."""
    not_after = not_after or cfg.validation.not_after or datetime.now(timezone.utc)
    if not_after.tzinfo is None:
        not_after = not_after.replace(tzinfo=timezone.utc)
    raws, files, keys = [], [], []
    inputs = cfg.input_files()
    for path, spec in inputs:
        needed = _needed(cfg, spec)
        fmt = readers.detect_format(path, cfg.format)
        raws.append(readers.scan(path, fmt, cfg.csv, spec.sheet, spec.json_lines, list(needed.values())))
        readers.check_columns(path, raws[-1], needed, cfg.csv)
        files.append(InputFile(path, fmt, spec.sheet))
        keys.append(sorted(set(needed.values())))
    later_first = cfg.validation.overlap == "later_file"  # then a line's copy in a later file is the one kept
    try:
        dups = (duplicate_rows(raws[::-1] if later_first else raws, keys[::-1] if later_first else keys)
                if cfg.validation.duplicates == "quarantine" else None)
    except pl.exceptions.PolarsError as exc:
        raise _read_error(cfg, files, exc) from None
    if dups is not None and later_first:
        dups = dups[::-1]
    frames = []
    for i, (raw, (_, spec), (path, fmt, _)) in enumerate(zip(raws, inputs, files)):
        multiline = readers.multiline_records(path, fmt, cfg.csv)
        lf = with_reasons(canonical_frame(raw, cfg, i, path.name, fmt, spec, multiline), cfg, not_after,
                          cfg.mapping(spec)[0])
        if dups is not None:
            same, earlier = (rows.implode() for rows in dups[i])
            reason, row = pl.col(QUARANTINE_REASON), pl.col(_ROW_IDX)
            lf = lf.with_columns(**{QUARANTINE_REASON: pl.when(reason.is_null() & row.is_in(same))
                                    .then(pl.lit("duplicate_line"))
                                    .when(reason.is_null() & row.is_in(earlier))
                                    .then(pl.lit("overlap_duplicate")).otherwise(reason)})
        frames.append(lf)
    if later_first:
        frames = superseded(frames)
    return finish(pl.concat(frames, how="diagonal_relaxed"), cfg), files


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


def superseded(frames: list[pl.LazyFrame]) -> list[pl.LazyFrame]:
    """``overlap: later_file``: a file's rows inside a later file's time range (its first to its last accepted
    event) are ``superseded``: the later export is taken as the truth for the times it covers."""
    ok = pl.col(QUARANTINE_REASON).is_null()
    spans = [lf.filter(ok).select(pl.col("event_time").min().alias("lo"), pl.col("event_time").max().alias("hi"))
             for lf in frames]
    spans = [s.row(0) for s in pl.collect_all(spans, engine="streaming")]
    out = []
    for i, lf in enumerate(frames):
        later = [pl.col("event_time").is_between(pl.lit(lo, CANONICAL["event_time"]), pl.lit(hi, CANONICAL["event_time"]))
                 for lo, hi in spans[i + 1:] if lo is not None]
        covered = pl.any_horizontal(later).fill_null(False) if later else pl.lit(False)
        out.append(lf.with_columns(pl.when(ok & covered).then(pl.lit("superseded")).otherwise(pl.col(QUARANTINE_REASON))
                                   .alias(QUARANTINE_REASON)))
    return out


def ingest(cfg: SourceConfig, out_dir: str | Path, not_after: datetime | None = None) -> IngestReport:
    """Run the ingest: write ``events.parquet``, ``quarantine.parquet``, ``report.json`` and the attribute
    tables (``items.parquet``, ``customers.parquet``) into ``out_dir``, published by ``twins.publish`` (locked
    against another run, one atomic swap: a failed or killed run leaves the previous output in place). Raises
    SourceError on unreadable input, ``publish.OutputBusy`` / ``publish.DiskFull``."""
    out_dir = Path(out_dir)
    with publish.locked(out_dir, f"twins ingest {cfg.name}"), publish.staged_dir(out_dir) as tmp:
        report = _write(cfg, tmp, out_dir, not_after)
        publish.publish_dir(tmp, out_dir)
    return report


def _write(cfg: SourceConfig, tmp: Path, out_dir: Path, not_after: datetime | None) -> IngestReport:
    """Write the ingest's files into the empty folder ``tmp``; the report names them as they will be in ``out_dir``."""
    t0 = time.perf_counter()
    lf, files = plan(cfg, not_after)
    extras = list(dict.fromkeys([*cfg.extra_columns, *(k for f in cfg.files for k in cfg.extra_constants(f))]))
    ok = pl.col(QUARANTINE_REASON).is_null()
    events = lf.filter(ok).select(*[pl.col(c).cast(t) for c, t in CANONICAL.items()], *extras)
    attributes = {name: attribute_tables(tables, key, prefix, cfg) for name, tables, key, prefix in
                  (("items", cfg.item_attributes, "item_id", "item_"),
                   ("customers", cfg.customer_attributes, "customer_id", "customer_")) if tables}
    raw_cols = [c for c in lf.collect_schema().names() if c.startswith("raw:")]
    quarantine = lf.filter(~ok).select(FILE_COLUMN, ROW_COLUMN, QUARANTINE_REASON,
                                       *[pl.col(c).alias(c.removeprefix("raw:")) for c in raw_cols])
    sinks = [events.sink_parquet(tmp / "events.parquet", compression="lz4", lazy=True),
             quarantine.sink_parquet(tmp / "quarantine.parquet", compression="lz4", lazy=True),
             *[frame.sink_parquet(tmp / f"{name}.parquet", lazy=True) for name, frame in attributes.items()]]
    try:
        pl.collect_all(sinks, engine="streaming")
    except pl.exceptions.PolarsError as exc:
        if publish.is_disk_full(exc):
            raise publish.disk_full(out_dir.parent, exc) from exc
        raise _read_error(cfg, files, exc) from None
    per_file: dict[str, int] = {}
    for i, (f, (_, spec)) in enumerate(zip(files, cfg.input_files())):  # one file read twice is counted twice
        key = str(f.path) if str(f.path) not in per_file else f"{f.path} (files[{i}])"
        per_file[key] = readers.count_rows(f.path, f.fmt, cfg.csv, f.sheet, spec.json_lines)
    stats = pl.scan_parquet(tmp / "events.parquet").select(
        pl.len().alias("n"), pl.col("customer_id").is_null().sum().alias("guests"),
        (pl.col("event_type") == "return").sum().alias("returns"), pl.col("customer_id").n_unique().alias("customers"),
        pl.col("customer_id").null_count().alias("nulls")).collect().row(0, named=True)
    reasons = pl.scan_parquet(tmp / "quarantine.parquet").group_by(QUARANTINE_REASON).len().collect()
    report = IngestReport(
        source=cfg.name, files=[str(f.path) for f in files], rows_in=sum(per_file.values()), accepted=stats["n"],
        quarantined={r: n for r, n in reasons.iter_rows()}, guest_rows=stats["guests"], returns=stats["returns"],
        customers=stats["customers"] - (1 if stats["nulls"] else 0),
        events_path=str(out_dir / "events.parquet"), quarantine_path=str(out_dir / "quarantine.parquet"),
        seconds=time.perf_counter() - t0, per_file_rows=per_file, hints=_hints(tmp / "quarantine.parquet", cfg))
    if report.rows_in != report.accepted + report.quarantined_total:
        raise ReconciliationError(f"{cfg.name}: rows in {report.rows_in} != accepted {report.accepted} + "
                                  f"quarantined {report.quarantined_total}; output not written")
    (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return report


def _hints(quarantine_path: Path, cfg: SourceConfig) -> list[str]:
    """Config fixes the output points at (the quarantine and the events written beside it)."""
    return _decimal_comma_hint(quarantine_path, cfg) + _float_id_hint(quarantine_path.with_name("events.parquet"), cfg)


def _float_id_hint(events_path: Path, cfg: SourceConfig) -> list[str]:
    """Customer ids that read like floats ('17850.0', as a spreadsheet or pandas writes an integer id), when
    ``ids.normalize_float`` is off: `twins twin show 17850` would not find them."""
    if cfg.ids.normalize_float:
        return []
    ids = pl.scan_parquet(events_path).select(pl.col("customer_id").unique()).filter(pl.col("customer_id").str.contains(_FLOAT_ID))
    found = ids.select(pl.len(), pl.col("customer_id").sort().first()).collect().row(0)
    if not found[0]:
        return []
    return [f"{found[0]:,} customer id(s) are written as floats (e.g. {found[1]!r}); if they are whole numbers, set "
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
