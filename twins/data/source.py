"""Source configs: a declarative mapping from any CSV/Parquet/JSON log onto canonical events.

See README.md ("Bring your own log") for a worked example of every key.
"""

from __future__ import annotations

import glob
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from twins import config
from twins.data.schema import EVENT_TYPES, MAPPABLE

Format = Literal["csv", "parquet", "whitespace", "basket_json"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileSpec(_Strict):
    """One input file. Files are read in the listed order; that order breaks ties for duplicates
    across files (the first file wins) and orders baskets of order-only sources."""

    path: str = Field(description="relative to the config's folder, absolute, package://pkg/file, or a pattern "
                                  "(exports/orders_*.csv) for the files it matches, in name order")
    constants: dict[str, str] = Field(default_factory=dict, description="extra columns set for every row of this file")


class CsvOptions(_Strict):
    separator: str = ","
    has_header: bool = True
    column_names: list[str] | None = None
    quote_char: str | None = '"'
    encoding: Literal["utf8", "utf8-lossy"] = "utf8-lossy"
    comment_prefix: str | None = None
    decimal_comma: bool = Field(False, description="numbers are written '2,55', grouped '1.234,50' ('1.234' reads "
                                                     "1234), as in many European exports")


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


class Validation(_Strict):
    max_quantity: float = 1e6
    max_unit_price: float = 1e6
    not_after: datetime | None = Field(None, description="events later than this are 'future_event'; default: ingest time")
    duplicates: Literal["quarantine", "keep"] = "quarantine"


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
    columns: dict[str, str] = Field(description="canonical column -> source column")
    constants: dict[str, str | float] = Field(default_factory=dict, description="canonical column -> fixed value")
    order_column: str | None = Field(None, description="source column giving basket order for sources without time")
    extra_columns: list[str] = Field(default_factory=list, description="source columns passed through unchanged")
    time: TimeOptions = Field(default_factory=TimeOptions)
    returns: Returns = Field(default_factory=Returns)
    exclude: Exclusions = Field(default_factory=Exclusions)
    guest_customer_ids: list[str] = Field(default_factory=list, description="ids meaning 'no customer' besides null/empty")
    validation: Validation = Field(default_factory=Validation)
    item_attributes: list[AttributeTable] = Field(default_factory=list, description="one table or a list")
    customer_attributes: list[AttributeTable] = Field(default_factory=list, description="one table or a list")
    base_dir: Path = Field(Path("."), description="relative paths resolve against this (the config's folder)")

    @field_validator("item_attributes", "customer_attributes", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        if value is None:
            return []
        return [value] if isinstance(value, (dict, AttributeTable)) else value

    @model_validator(mode="after")
    def _check(self) -> "SourceConfig":
        unknown = set(self.columns) - set(MAPPABLE)
        if unknown:
            raise ValueError(f"columns: unknown canonical column(s) {sorted(unknown)}; allowed: {list(MAPPABLE)}")
        both = set(self.columns) & set(self.constants)
        if both:
            raise ValueError(f"{sorted(both)} given both in columns and constants; keep one")
        mapped = set(self.columns) | set(self.constants)
        if "customer_id" not in mapped:
            raise ValueError("columns.customer_id is required (the source column that identifies the customer)")
        etype = self.constants.get("event_type")
        if etype is not None and etype not in EVENT_TYPES:
            raise ValueError(f"constants.event_type must be one of {EVENT_TYPES}, not {etype!r}")
        if etype in (None, "purchase", "return") and "item_id" not in mapped:
            raise ValueError("columns.item_id (or constants.item_id) is required for purchase events")
        if "event_time" not in mapped and self.order_column is None and etype != "message":
            raise ValueError("give columns.event_time or, for sources without time, order_column")
        return self

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
        e.g. ``exports/orders_*.csv``) stands for the files it matches, in path order; one that matches none is an
        error."""
        out = []
        for spec in self.files:
            path = self.resolve(spec.path)
            if not any(ch in spec.path for ch in "*?["):
                out.append((path, spec))
                continue
            matches = sorted(Path(q) for q in glob.glob(str(path), recursive=True) if Path(q).is_file())
            if not matches:
                raise config.ConfigError(f"files: {spec.path!r} matches no file ({path}); check the pattern "
                                         "(wildcards: * ? [...], ** for any folders) and the folder")
            out += [(q, spec) for q in matches]
        return out


def load_source(path: str | Path, overrides: list[str] | None = None) -> SourceConfig:
    """Load a source config; relative file paths resolve against the config file's folder."""
    tree = config.read_yaml(path, overrides)
    tree.setdefault("base_dir", str(Path(path).resolve().parent))
    return config.validate(SourceConfig, tree, path)
