"""Readers: one input file -> a polars LazyFrame of raw columns, with errors that name the file and the fix."""

from __future__ import annotations

import csv as csvlib
import gzip
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from twins.data.schema import READER_REASON
from twins.data import jsonl
from twins.data.source import CsvOptions, Format

_SUFFIX_FORMATS: dict[str, Format] = {
    ".csv": "csv", ".tsv": "csv", ".txt": "whitespace", ".parquet": "parquet", ".pq": "parquet", ".json": "basket_json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".xlsx": "excel", ".xlsm": "excel", ".xlsb": "excel", ".xls": "excel", ".ods": "excel",
}
_COMPRESSED = (".gz", ".zst")  # text files polars reads compressed
_SEPARATORS = (",", ";", "\t", "|")
_LOCATE_BYTES = 256 << 20  # how much of a file is re-read to find the line an error is on


class SourceError(ValueError):
    """An input file cannot be used as configured; the message names the file, the column and the fix."""


def detect_format(path: Path, declared: Format | None) -> Format:
    _check_path(path, folder_ok=True)
    if path.is_dir() and (declared or _SUFFIX_FORMATS.get(path.suffix.lower())) != "parquet":
        _check_path(path)  # only a folder of Parquet files is read as one input
    return declared or _suffix_format(path)


def _suffix_format(path: Path) -> Format:
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:  # orders.csv.gz: the format is the suffix before
        suffixes.pop()
    fmt = _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt in ("parquet", "basket_json", "excel") and path.suffix.lower() in _COMPRESSED:
        raise SourceError(f"{path}: a compressed {fmt} file cannot be read; decompress it first (e.g. `gunzip`); "
                          "compressed csv and whitespace files are read as they are")
    if fmt is None:
        raise SourceError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
                          f"set `format:` to one of csv, parquet, whitespace, basket_json, excel, jsonl in the source config")
    return fmt


def scan(path: Path, fmt: Format, csv: CsvOptions, sheet: str | None = None,
         json_lines: jsonl.JsonLines | None = None, columns: Sequence[str] = ()) -> pl.LazyFrame:
    """Open ``path`` lazily (the name as written: no wildcards). CSV, whitespace and Excel files are read as text
    so that every value can be validated (and quarantined) by the ingest step rather than rejected by the reader."""
    _check_path(path, folder_ok=fmt == "parquet")
    if path.is_file() and path.stat().st_size == 0:
        raise SourceError(f"{path}: the file is empty (0 bytes); remove it from `files:` or re-export it")
    try:
        if fmt == "parquet":
            lf = pl.scan_parquet(parquet_files(path), glob=False)
        elif fmt == "csv":
            lf = pl.scan_csv(path, separator=csv.separator, has_header=csv.has_header, new_columns=csv.column_names,
                             quote_char=csv.quote_char, encoding=csv.encoding, comment_prefix=csv.comment_prefix,
                             infer_schema=False, glob=False)
        elif fmt == "whitespace":
            lf = _scan_whitespace(path, csv)
        elif fmt == "excel":
            lf = _read_excel(path, sheet).lazy()
        elif fmt == "jsonl":
            lf = jsonl.read(path, json_lines, READER_REASON, columns).lazy()
        else:
            lf = _read_basket_json(path).lazy()
        names = lf.collect_schema().names()
    except pl.exceptions.DuplicateError as exc:
        raise SourceError(f"{path}: {_first_line(exc)} (a column name appears more than once in the header); "
                          f"rename the columns where the file is written") from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise SourceError(f"{path}: cannot be read as {fmt}: {_first_line(exc)}; check `format:` and `csv:` "
                          f"options in the source config") from None
    if fmt == "csv":  # polars reads a second 'a' as 'a_duplicated_0'
        _refuse_twice(path, fmt, [m.group(1) for n in names if (m := re.fullmatch(r"(.+)_duplicated_\d+", n))
                                  and m.group(1) in names])
    return lf


def _check_path(path: Path, folder_ok: bool = False) -> None:
    if not path.exists():
        raise SourceError(f"{path}: file not found (check `files:` in the source config; relative paths "
                          f"resolve against the config's folder)")
    if path.is_dir() and not folder_ok:
        raise SourceError(f"{path}: is a folder, not a file; name its files under `files:`, or a pattern such as "
                          f"'{path.name}/*.csv' for all of them")


def parquet_files(path: Path) -> Path | list[Path]:
    """A Parquet file, or a folder of Parquet files read as one table in name order (such as a bucketed
    ``events.parquet`` written by ``twins ingest`` or ``twins sim``)."""
    if not path.is_dir():
        return path
    files = sorted(path.glob("*.parquet"))
    if not files:
        raise SourceError(f"{path}: a folder without .parquet files; name a file or a folder of Parquet files")
    return files


def count_rows(path: Path, fmt: Format, csv: CsvOptions, sheet: str | None = None,
               json_lines: jsonl.JsonLines | None = None) -> int:
    """Rows in the file, counted independently of the ingest so that the reconciliation means something."""
    if fmt == "parquet":
        return pl.scan_parquet(parquet_files(path), glob=False).select(pl.len()).collect().item()
    return scan(path, fmt, csv, sheet, json_lines).select(pl.len()).collect().item()


def multiline_records(path: Path, fmt: Format, csv: CsvOptions, records: int) -> bool:
    """Whether some record of a CSV file of ``records`` records spans lines (a quoted field holding a line break),
    so that record numbers are not line numbers. Counting lines is fast (no values are parsed)."""
    if fmt != "csv" or csv.quote_char is None:
        return False
    lines = pl.scan_csv(path, has_header=False, separator="\x1f", quote_char=None, infer_schema=False,
                        encoding="utf8-lossy", truncate_ragged_lines=True, glob=False).select(pl.len())
    return lines.collect().item() != records + csv.has_header


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
                        infer_schema=False, encoding=csv.encoding, comment_prefix=csv.comment_prefix, glob=False)
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


def _refuse_twice(path: Path, fmt: Format, twice: list[str]) -> None:
    """Refuse a header that names a column twice: which of the two a config means is anyone's guess."""
    if twice:
        fix = ("rename them in the file, or give every column a name with `csv: {column_names: [...]}` in the source "
               "config (the header line is still skipped)") if fmt == "csv" else "rename them in the file"
        raise SourceError(f"{path}: the header names column(s) {sorted(set(twice))} more than once; {fix}")


def _read_excel(path: Path, sheet: str | None) -> pl.DataFrame:
    """The first (or the named) sheet of a workbook, every cell as text (dates as ISO 8601), through calamine; its
    first row names the columns (read as written: fastexcel would rename a second 'a' to 'a_1')."""
    try:
        cells = pl.read_excel(path, sheet_name=sheet, engine="calamine", infer_schema_length=0,
                              read_options={"header_row": None})
    except ValueError as exc:  # a sheet that is not there
        raise SourceError(f"{path}: {_first_line(exc)}; set `sheet:` on the file in the source config to one of "
                          f"its sheets") from None
    except Exception as exc:  # fastexcel's CalamineError and friends derive from Exception only
        raise SourceError(f"{path}: cannot be read as an Excel workbook: {_first_line(exc)}; re-save it as .xlsx "
                          f"or export it as CSV") from None
    if cells.height == 0:
        raise SourceError(f"{path}: the sheet {sheet or '(the first)'} is empty; set `sheet:` on the file in the "
                          f"source config to the sheet that holds the data")
    names = [default if name is None else str(name) for default, name in zip(cells.columns, cells.row(0))]
    _refuse_twice(path, "excel", [n for n in names if names.count(n) > 1])
    return cells.slice(1).rename(dict(zip(cells.columns, names)))


def _item_text(item: object) -> str | None:
    """A basket item as an id: a string is itself, a whole number its digits (JSON has one number type: 7 and
    7.0 are the same item); anything else (a fraction, true/false, an object, a list) is no id."""
    if isinstance(item, str):
        return item
    if isinstance(item, int) and not isinstance(item, bool):
        return str(item)
    if isinstance(item, float) and item.is_integer():
        return str(int(item))
    return None


def _read_basket_json(path: Path) -> pl.DataFrame:
    """Basket-sequence JSON as published for next-basket benchmarks:
    ``{customer: [[item, ...], ...]}`` or ``{split: {customer: [[item, ...], ...]}}`` (baskets in order).
    Rows: customer, basket_index (0-based), item, split (null when the file has no split level). An item that is
    no id (see ``_item_text``) keeps its JSON text, and its row is quarantined as ``bad_item``."""
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: not valid basket JSON ({exc}); expected {{customer: [[item, ...], ...]}}") from None
    if not isinstance(tree, dict) or not tree:
        raise SourceError(f"{path}: expected a JSON object {{customer: [[item, ...], ...]}}")
    splits = tree if all(isinstance(v, dict) for v in tree.values()) else {None: tree}
    cust, idx, item, split, bad = [], [], [], [], []
    for split_name, users in splits.items():
        for user, baskets in users.items():
            if not isinstance(baskets, list):
                raise SourceError(f"{path}: customer {user!r} maps to {type(baskets).__name__}, expected a list of baskets")
            for b, basket in enumerate(baskets):
                for it in basket if isinstance(basket, list) else [basket]:
                    text = _item_text(it)
                    cust.append(str(user))
                    idx.append(b)
                    item.append(json.dumps(it) if text is None and it is not None else text)
                    split.append(split_name)
                    bad.append("bad_item" if text is None and it is not None else None)
    return pl.DataFrame({"customer": cust, "basket_index": idx, "item": item, "split": split, READER_REASON: bad},
                        schema={"customer": pl.String, "basket_index": pl.Int64, "item": pl.String, "split": pl.String,
                                READER_REASON: pl.String})


def read_error(path: Path, fmt: Format, exc: BaseException, csv: CsvOptions | None = None) -> SourceError:
    """A SourceError for a failure while reading ``path`` (found only when rows are parsed), with the line it is on
    where the file's CSV options let it be found, and the fix."""
    text = str(exc).lower()
    fault = ("utf8" if "utf-8" in text or "utf8" in text else "fields" if "more fields" in text
             else "quote" if "properly escaped" in text or "quote" in text else None)
    line = bad_line(path, csv, fault) if fmt == "csv" and csv and fault else None
    where = f" on line {line}" if line else ""
    if fault == "utf8":
        fix = ("the file is not UTF-8: re-encode it (e.g. `iconv -f latin1 -t utf-8`) or set "
               "`csv: {encoding: utf8-lossy}` in the source config")
    elif fault == "fields":
        fix = ("a line has more fields than the header: quote values that contain the separator, "
               "or set `csv: {separator: ...}` in the source config")
    elif fault == "quote":
        fix = ("a quoted field is never closed (is the file truncated?): re-export it, or set "
               "`csv: {quote_char: null}` in the source config if quotes are part of the data")
    elif "time zone" in text:
        fix = ("the timestamps carry a UTC offset: set `time: {format: ...}` with %z "
               "(e.g. '%Y-%m-%dT%H:%M:%S%z') in the source config")
    else:
        fix = "check `format:` and the `csv:` options (separator, quote_char, encoding) in the source config"
    return SourceError(f"{path}: cannot be read as {fmt}: {_first_line(exc)}{where}; {fix}")


def bad_line(path: Path, csv: CsvOptions, fault: str) -> int | None:
    """The 1-based line where a CSV file first shows ``fault`` ('utf8': bytes that are not UTF-8, 'fields': a record
    with more fields than the header, 'quote': a quoted field never closed), found by re-reading at most
    ``_LOCATE_BYTES`` with Python's csv module; None when it is not found there (or the file is zstd-compressed)."""
    if path.suffix.lower() == ".zst":
        return None
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as raw:
        if fault == "utf8":
            seen = 0
            for number, text in enumerate(raw, 1):
                try:
                    text.decode("utf-8")
                except UnicodeDecodeError:
                    return number
                seen += len(text)
                if seen > _LOCATE_BYTES:
                    return None
            return None
        lines = _Lines(io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=""), csv.comment_prefix)
        quoting = csvlib.QUOTE_NONE if csv.quote_char is None else csvlib.QUOTE_MINIMAL
        reader = csvlib.reader(lines, delimiter=csv.separator, quotechar=csv.quote_char or '"', quoting=quoting,
                               strict=fault == "quote")
        width = len(csv.column_names) if csv.column_names and not csv.has_header else None
        start = 1
        try:
            for row in reader:
                width = len(row) if width is None else width
                if fault == "fields" and len(row) > width:
                    return start
                start = lines.number + 1
        except csvlib.Error:  # a quote open at the end of the file, or a field grown past the csv module's limit
            return None if lines.cut else start
        return None


class _Lines:
    """The lines of a text file for ``csv.reader``, leaving out comment lines, counting physical lines read and
    stopping (``cut``) after ``_LOCATE_BYTES`` characters."""

    def __init__(self, text: io.TextIOBase, comment_prefix: str | None) -> None:
        self.text, self.comment_prefix, self.number, self.seen, self.cut = text, comment_prefix, 0, 0, False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        while True:
            line = next(self.text)
            self.number += 1
            self.seen += len(line)
            if self.seen > _LOCATE_BYTES:
                self.cut = True
                raise StopIteration
            if not (self.comment_prefix and line.startswith(self.comment_prefix)):
                return line


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
