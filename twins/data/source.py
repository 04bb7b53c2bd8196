"""Source configs: a declarative mapping from any CSV/Parquet/Excel/JSON log onto canonical events.

See README.md ("Bring your own log") for a worked example of every key.
"""

from __future__ import annotations

from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from twins import config
from twins.data.jsonl import JsonLines
from twins.data.schema import EVENT_TYPES, MAPPABLE

Format = Literal["csv", "parquet", "whitespace", "basket_json", "excel", "jsonl"]
WILDCARDS = "*?["


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileSpec(_Strict):
    """One input file. Files are read in the listed order; that order breaks ties for duplicates
    across files (the first file wins) and orders baskets of order-only sources. A file may map its own columns
    and fix its own event type and canonical values, so that the orders, readings, service requests and messages
    of one log, each exported with its own columns, are one source."""

    path: str = Field(description="relative to the config's folder, absolute, package://pkg/file, or a pattern "
                                  "(exports/orders_*.csv) for the files it matches, in name order")
    columns: dict[str, str] | None = Field(None, description="canonical column -> source column for this file "
                                                              "(default: the source's `columns`)")
    event_type: str | None = Field(None, description="every row of this file is this event type (e.g. telemetry)")
    constants: dict[str, str | float] = Field(default_factory=dict, description="values set for every row of this "
                                              "file: canonical columns (text: stock, actor: machine, ...) override "
                                              "the source's constants; other names are extra columns")
    sheet: str | None = Field(None, description="Excel files: the sheet to read (default: the first)")
    json_lines: JsonLines | None = Field(None, alias="json", description="JSON-lines files: explode, where, "
                                         "present_as (see twins.data.jsonl)")

    @model_validator(mode="after")
    def _one_event_type(self) -> "FileSpec":
        if self.event_type is not None and "event_type" in self.constants:
            raise ValueError(f"{self.path}: give event_type or constants.event_type, not both")
        return self


class CsvOptions(_Strict):
    separator: str = ","
    has_header: bool = True
    column_names: list[str] | None = None
    quote_char: str | None = '"'
    encoding: Literal["utf8", "utf8-lossy"] = "utf8-lossy"
    comment_prefix: str | None = None
    decimal_comma: bool = Field(False, description="numbers are written '2,55', grouped '1.234,50' ('1.234' reads "
                                                     "1234), as in many European exports")

    @field_validator("column_names")
    @classmethod
    def _unique(cls, names: list[str] | None) -> list[str] | None:
        twice = sorted({n for n in names or [] if names.count(n) > 1})
        if twice:
            raise ValueError(f"names {twice} are given more than once; each column needs its own name")
        return names


class TimeOptions(_Strict):
    format: str | None = Field(None, description="strftime format, e.g. '%Y%m%d'; None lets polars infer ISO 8601")
    timezone: str = Field("UTC", description="zone of naive timestamps; events are stored in UTC")


class Returns(_Strict):
    """How a source marks cancellations and returns; any matching rule makes the row a return."""

    negative_quantity: bool = True
    id_prefix: str | None = Field(None, description="e.g. 'C' for invoices 'C536379'")
    id_column: str | None = Field(None, description="source column the prefix is tested on (default: the basket id)")
    flag_column: str | None = None
    flag_values: list[str] = Field(default_factory=lambda: ["1", "true", "True", "Y", "yes"])


class Exclusions(_Strict):
    """Non-product codes (postage, fees, adjustments) quarantined with reason ``non_product``."""

    item_codes: list[str] = Field(default_factory=list)
    item_pattern: str | None = Field(None, description="regular expression on the item id, e.g. '^(POST|DOT|M|BANK)'")

    @field_validator("item_pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        """Checked with the engine that runs it (Rust's regex syntax: no look-around, no back-references)."""
        if pattern is not None:
            try:
                pl.select(pl.lit("").str.contains(pattern))
            except pl.exceptions.ComputeError as exc:
                error = next((line for line in str(exc).splitlines() if line.startswith("error:")), "invalid")
                raise ValueError(f"{pattern!r} is not a regular expression polars can run ({error})") from None
        return pattern


class Ids(_Strict):
    """How customer, item and basket ids are read. Control and format characters (zero-width space, BOM, soft
    hyphen) are removed and blanks stripped; an id left empty, or one of ``null_values``, is no id: no customer
    (a guest row), ``missing_item``, ``missing_basket``."""

    null_values: list[str] = Field(default_factory=lambda: ["nan", "null", "none", "na", "n/a", "#n/a"],
                                   description="texts meaning 'no id' (compared ignoring case), as pandas, R, "
                                               "Excel and SQL exports write a missing value")
    normalize_float: bool = Field(False, description="ids written as floats by a spreadsheet or pandas ('17850.0') "
                                                     "become integers ('17850')")


#: Default lower bound on event times: the day after the Unix epoch, so that placeholder dates are refused: a zero
#: timestamp (1970-01-01 in any zone), Excel's zero dates (1899-12-30, 1900-01-01), .NET/SQL's minimum (0001-01-01).
NOT_BEFORE = datetime(1970, 1, 2, tzinfo=timezone.utc)


class Validation(_Strict):
    max_quantity: float = 1e6
    max_unit_price: float = 1e6
    min_unit_price: float | None = Field(None, description="purchase and return lines priced below this are "
                                                           "'low_price' (e.g. 0.01 refuses zero-price lines)")
    not_before: datetime = Field(NOT_BEFORE, description="events earlier than this are 'early_event'")
    not_after: datetime | None = Field(None, description="events later than this are 'future_event'; default: ingest time")
    duplicates: Literal["quarantine", "keep"] = "quarantine"
    overlap: Literal["lines", "later_file"] = Field(
        "lines", description="files that overlap in time: 'lines' keeps every line once (a copy of an earlier file's "
                             "line is 'overlap_duplicate'); 'later_file' takes each time range from the last file that "
                             "covers it (an earlier file's lines inside a later file's first-to-last event are "
                             "'superseded')")


class AttributeTable(_Strict):
    """An item or customer table joined onto the events by key (columns prefixed ``item_`` / ``customer_``):
    either ``columns`` taken from a table with one row per key, or ``count_as``: the number of rows per key
    (e.g. campaigns a household received, coupons offered on a product)."""

    path: str
    key: str
    columns: list[str] = Field(default_factory=list)
    count_as: str | None = Field(None, pattern=r"^[A-Za-z0-9_]+$")
    format: Format | None = None
    csv: CsvOptions = Field(default_factory=CsvOptions)
    sheet: str | None = Field(None, description="Excel files: the sheet to read (default: the first)")

    @model_validator(mode="after")
    def _one_kind(self) -> "AttributeTable":
        if bool(self.columns) == bool(self.count_as):
            raise ValueError(f"{self.path}: give either columns (one row per key) or count_as (rows per key), not both or neither")
        return self


class SourceConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    format: Format | None = Field(None, description="default: from each file's suffix")
    files: list[FileSpec] = Field(min_length=1)
    csv: CsvOptions = Field(default_factory=CsvOptions)
    columns: dict[str, str] = Field(description="canonical column -> source column (a file with its own `columns` "
                                                "uses those instead; optional when every file has them)")
    constants: dict[str, str | float] = Field(default_factory=dict, description="canonical column -> fixed value")
    order_column: str | None = Field(None, description="source column giving basket order for sources without time")
    extra_columns: list[str] = Field(default_factory=list, description="source columns passed through unchanged")
    time: TimeOptions = Field(default_factory=TimeOptions)
    returns: Returns = Field(default_factory=Returns)
    exclude: Exclusions = Field(default_factory=Exclusions)
    guest_customer_ids: list[str] = Field(default_factory=list, description="ids meaning 'no customer' besides null/empty")
    ids: Ids = Field(default_factory=Ids)
    validation: Validation = Field(default_factory=Validation)
    buckets: int | None = Field(None, ge=1, description="customer buckets of the event store (events.parquet/"
                                "bucket-NNNNN.parquet); default: one per 1M input rows, at least 1")
    item_attributes: list[AttributeTable] = Field(default_factory=list, description="one table or a list")
    customer_attributes: list[AttributeTable] = Field(default_factory=list, description="one table or a list")
    base_dir: Path = Field(Path("."), description="relative paths resolve against this (the config's folder)")

    @model_validator(mode="before")
    @classmethod
    def _columns_per_file(cls, data):
        """``columns`` may be left out when every file maps its own."""
        files = data.get("files") if isinstance(data, dict) else None
        if isinstance(files, list) and files and "columns" not in data and all(
                isinstance(f, dict) and f.get("columns") is not None for f in files):
            data = {**data, "columns": {}}
        return data

    @field_validator("item_attributes", "customer_attributes", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        if value is None:
            return []
        return [value] if isinstance(value, (dict, AttributeTable)) else value

    @model_validator(mode="after")
    def _check(self) -> "SourceConfig":
        for where, columns, constants in [("", self.columns, self.constants)] * (not self.per_file()) + [
                (f"files[{i}] ({spec.path}): ", *self.mapping(spec)) for i, spec in enumerate(self.files)]:
            _check_mapping(where, columns, constants, self.order_column)
        if self.validation.overlap == "later_file" and any("event_time" not in self.mapping(f)[0] for f in self.files):
            raise ValueError("validation.overlap: later_file compares the files' time ranges; map columns.event_time "
                             "or use overlap: lines")
        return self

    def per_file(self) -> bool:
        """Whether some file maps its own columns."""
        return any(spec.columns is not None for spec in self.files)

    def mapping(self, spec: FileSpec) -> tuple[dict[str, str], dict[str, str | float]]:
        """A file's canonical mapping: (canonical -> source column, canonical -> fixed value). The file's own
        ``columns``, ``event_type`` and canonical ``constants`` win over the source's."""
        columns = self.columns if spec.columns is None else spec.columns
        own = {k: v for k, v in spec.constants.items() if k in MAPPABLE}
        if spec.event_type is not None:
            own["event_type"] = spec.event_type
        constants = {k: v for k, v in self.constants.items() if k not in columns} | own
        return {k: v for k, v in columns.items() if k not in own}, constants

    def extra_constants(self, spec: FileSpec) -> dict[str, str | float]:
        """A file's constants that are not canonical columns: extra columns set for its every row."""
        return {k: v for k, v in spec.constants.items() if k not in MAPPABLE}

    def resolve(self, path: str) -> Path:
        """Resolve a file path: ``package://pkg/sub/file`` inside an installed package, else relative to base_dir."""
        if path.startswith("package://"):
            pkg, _, rel = path.removeprefix("package://").partition("/")
            try:
                return Path(str(resources.files(pkg).joinpath(rel)))
            except ModuleNotFoundError:
                raise config.ConfigError(f"{path}: package {pkg!r} is not installed (pip install {pkg.replace('_', '-')})") from None
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p)

    def input_files(self) -> list[tuple[Path, FileSpec]]:
        """Every input file in read order, with its spec. A ``path`` with a wildcard (``*``, ``?``, ``[...]``, ``**``,
        e.g. ``exports/orders_*.csv``) stands for the files it matches, in path order (see ``expand``); one that
        matches none is an error. A path that exists as written is that file, wildcard characters or not
        (``orders[1].csv``)."""
        out = []
        for spec in self.files:
            path = self.resolve(spec.path)
            if not any(ch in spec.path for ch in WILDCARDS) or path.exists():
                out.append((path, spec))
                continue
            matches = expand(path)
            if not matches:
                raise config.ConfigError(f"files: {spec.path!r} matches no file ({path}); check the pattern "
                                         "(wildcards: * ? [...], ** for any folders) and the folder")
            out += [(q, spec) for q in matches]
        return out


def _check_mapping(where: str, columns: dict[str, str], constants: dict[str, str | float],
                   order_column: str | None) -> None:
    """One file's (or the source's) mapping covers what its events need; errors start with ``where``."""
    unknown = (set(columns) | set(constants)) - set(MAPPABLE)
    if unknown:
        raise ValueError(f"{where}columns/constants: unknown canonical column(s) {sorted(unknown)}; allowed: "
                         f"{list(MAPPABLE)}")
    both = set(columns) & set(constants)
    if both:
        raise ValueError(f"{where}{sorted(both)} given both in columns and constants; keep one")
    mapped = set(columns) | set(constants)
    if "customer_id" not in mapped:
        raise ValueError(f"{where}columns.customer_id is required (the source column that identifies the customer)")
    etype = constants.get("event_type")
    if etype is not None and etype not in EVENT_TYPES:
        raise ValueError(f"{where}event_type must be one of {EVENT_TYPES}, not {etype!r}")
    if etype in (None, "purchase", "return") and "item_id" not in mapped:
        raise ValueError(f"{where}columns.item_id (or constants.item_id) is required for purchase events")
    if etype == "telemetry" and not {"quantity", "text"} <= mapped:
        raise ValueError(f"{where}telemetry rows need columns.quantity (the reading) and columns.text or "
                         "constants.text ('stock': units on hand, 'usage': a cumulative usage counter)")
    if "event_time" not in mapped and order_column is None and etype != "message":
        raise ValueError(f"{where}give columns.event_time or, for sources without time, order_column")


def expand(pattern: Path) -> list[Path]:
    """The files an absolute wildcard path matches, in path order. ``**`` does not enter linked folders (a link to a
    folder above would loop), names starting with '.' match only a pattern part starting with '.', and a file reached
    twice (through a link) is read once, at its first path."""
    parts = pattern.parts
    first = next(i for i, part in enumerate(parts) if any(ch in part for ch in WILDCARDS))
    root, rest = Path(*parts[:first]), parts[first:]
    dotted = any(part.startswith(".") for part in rest)
    seen, out = set(), []
    for match in sorted(root.glob("/".join(rest))):
        hidden = any(part.startswith(".") for part in match.relative_to(root).parts)
        if match.is_file() and (dotted or not hidden) and match.resolve() not in seen:
            seen.add(match.resolve())
            out.append(match)
    return out


def load_source(path: str | Path, overrides: list[str] | None = None) -> SourceConfig:
    """Load a source config; relative file paths resolve against the config file's folder."""
    tree = config.read_yaml(path, overrides)
    tree.setdefault("base_dir", str(Path(path).resolve().parent))
    return config.validate(SourceConfig, tree, path)
