"""Readers: one input file -> a polars LazyFrame of raw columns, with errors that name the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from twins.data.source import CsvOptions, Format

_SUFFIX_FORMATS: dict[str, Format] = {
    ".csv": "csv", ".tsv": "csv", ".txt": "whitespace", ".parquet": "parquet", ".pq": "parquet", ".json": "basket_json",
}
_COMPRESSED = (".gz", ".zst")  # text files polars reads compressed
_SEPARATORS = (",", ";", "\t", "|")


class SourceError(ValueError):
    """An input file cannot be used as configured; the message names the file, the column and the fix."""


def detect_format(path: Path, declared: Format | None) -> Format:
    if declared:
        return declared
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:  # orders.csv.gz: the format is the suffix before
        suffixes.pop()
    fmt = _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt in ("parquet", "basket_json") and path.suffix.lower() in _COMPRESSED:
        raise SourceError(f"{path}: a compressed {fmt} file cannot be read; decompress it first (e.g. `gunzip`); "
                          "compressed csv and whitespace files are read as they are")
    if fmt is None:
        raise SourceError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
                          f"set `format:` to one of csv, parquet, whitespace, basket_json in the source config")
    return fmt


def scan(path: Path, fmt: Format, csv: CsvOptions) -> pl.LazyFrame:
    """Open ``path`` lazily. CSV and whitespace files are read as text so that every value can be
    validated (and quarantined) by the ingest step rather than rejected by the reader."""
    if not path.exists():
        raise SourceError(f"{path}: file not found (check `files:` in the source config; relative paths "
                          f"resolve against the config's folder)")
    if path.is_file() and path.stat().st_size == 0:
        raise SourceError(f"{path}: the file is empty (0 bytes); remove it from `files:` or re-export it")
    if fmt == "parquet":
        lf = pl.scan_parquet(path)
    elif fmt == "csv":
        lf = pl.scan_csv(path, separator=csv.separator, has_header=csv.has_header, new_columns=csv.column_names,
                         quote_char=csv.quote_char, encoding=csv.encoding, comment_prefix=csv.comment_prefix,
                         infer_schema=False)
    elif fmt == "whitespace":
        lf = _scan_whitespace(path, csv)
    else:
        lf = _read_basket_json(path).lazy()
    try:
        lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise SourceError(f"{path}: cannot be read as {fmt}: {_first_line(exc)}; check `format:` and `csv:` "
                          f"options in the source config") from None
    return lf


def count_rows(path: Path, fmt: Format, csv: CsvOptions) -> int:
    """Rows in the file, counted independently of the ingest so that the reconciliation means something."""
    if fmt == "parquet":
        return pl.scan_parquet(path).select(pl.len()).collect().item()
    return scan(path, fmt, csv).select(pl.len()).collect().item()


def check_columns(path: Path, lf: pl.LazyFrame, needed: dict[str, str], csv: CsvOptions,
                  where: str = "the source config", mapping: str = "`columns:`") -> None:
    """Fail fast when a column the config maps is not in the file, and suggest the likely fix: ``where`` names
    the part of the config that reads this file, ``mapping`` its keys that name the file's columns."""
    have = lf.collect_schema().names()
    missing = {canon: col for canon, col in needed.items() if col not in have}
    if not missing:
        return
    lines = [f"{path}: missing column(s) " + ", ".join(f"{col!r} (for {canon})" for canon, col in missing.items()),
             f"  the file has columns: {have[:20]}{' ...' if len(have) > 20 else ''}"]
    if len(have) == 1:
        seps = [s for s in _SEPARATORS if s in have[0] and s != csv.separator]
        if seps:
            lines.append(f"  the header looks {seps[0]!r}-separated: set `csv: {{separator: {seps[0]!r}}}` in {where}")
    lines.append(f"  fix: name columns that exist in the file under {mapping} in {where}")
    raise SourceError("\n".join(lines))


def _scan_whitespace(path: Path, csv: CsvOptions) -> pl.LazyFrame:
    """Whitespace-separated text (e.g. CDNOW_master.txt): split every line on runs of blanks."""
    lines = pl.scan_csv(path, has_header=False, separator="\x1f", quote_char=None, new_columns=["line"],
                        infer_schema=False, encoding=csv.encoding, comment_prefix=csv.comment_prefix)
    names = csv.column_names
    if csv.has_header:
        header = lines.head(1).collect()
        if header.height == 0:
            raise SourceError(f"{path}: no header line; set `csv: {{has_header: false, column_names: [...]}}`")
        names = header.item().split()
        lines = lines.slice(1)
    if not names:
        raise SourceError(f"{path}: whitespace files without a header need `csv: {{column_names: [...]}}`")
    fields = pl.col("line").str.strip_chars().str.extract_all(r"\S+")
    return lines.select([fields.list.get(i, null_on_oob=True).alias(n) for i, n in enumerate(names)])


def _read_basket_json(path: Path) -> pl.DataFrame:
    """Basket-sequence JSON as published for next-basket benchmarks:
    ``{customer: [[item, ...], ...]}`` or ``{split: {customer: [[item, ...], ...]}}`` (baskets in order).
    Rows: customer, basket_index (0-based), item, split (null when the file has no split level)."""
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: not valid basket JSON ({exc}); expected {{customer: [[item, ...], ...]}}") from None
    if not isinstance(tree, dict) or not tree:
        raise SourceError(f"{path}: expected a JSON object {{customer: [[item, ...], ...]}}")
    splits = tree if all(isinstance(v, dict) for v in tree.values()) else {None: tree}
    cust, idx, item, split = [], [], [], []
    for split_name, users in splits.items():
        for user, baskets in users.items():
            if not isinstance(baskets, list):
                raise SourceError(f"{path}: customer {user!r} maps to {type(baskets).__name__}, expected a list of baskets")
            for b, basket in enumerate(baskets):
                for it in basket if isinstance(basket, list) else [basket]:
                    cust.append(str(user))
                    idx.append(b)
                    item.append(None if it is None else str(it))
                    split.append(split_name)
    return pl.DataFrame({"customer": cust, "basket_index": idx, "item": item, "split": split},
                        schema={"customer": pl.String, "basket_index": pl.Int64, "item": pl.String, "split": pl.String})


def read_error(path: Path, fmt: Format, exc: BaseException) -> SourceError:
    """A SourceError for a failure while reading ``path`` (found only when rows are parsed), with the fix."""
    text = str(exc).lower()
    if "utf-8" in text or "utf8" in text:
        fix = ("the file is not UTF-8: re-encode it (e.g. `iconv -f latin1 -t utf-8`) or set "
               "`csv: {encoding: utf8-lossy}` in the source config")
    elif "more fields" in text:
        fix = ("a line has more fields than the header: quote values that contain the separator, "
               "or set `csv: {separator: ...}` in the source config")
    elif "properly escaped" in text or "quote" in text:
        fix = ("a quoted field is never closed (is the file truncated?): re-export it, or set "
               "`csv: {quote_char: null}` in the source config if quotes are part of the data")
    elif "time zone" in text:
        fix = ("the timestamps carry a UTC offset: set `time: {format: ...}` with %z "
               "(e.g. '%Y-%m-%dT%H:%M:%S%z') in the source config")
    else:
        fix = "check `format:` and the `csv:` options (separator, quote_char, encoding) in the source config"
    return SourceError(f"{path}: cannot be read as {fmt}: {_first_line(exc)}; {fix}")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
