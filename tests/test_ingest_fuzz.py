"""Property-based fuzzing of ingest (issue 23): random bytes as a file, random rows in a CSV, random configs within
the schema. Every example ends either in a clear error (ConfigError or SourceError, naming the file or the key) or
in a reconciled ingest (rows in = accepted + quarantined, and rows in = the records written), never in another
exception. Bounded in examples and time (about 20 s on 2 cores)."""

from __future__ import annotations

import csv
import io
import tempfile
from datetime import datetime
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twins.config import ConfigError
from twins.data.ingest import REASONS, ingest
from twins.data.readers import SourceError
from twins.data.source import SourceConfig

FUZZ = settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
HEADER = ["invoice", "customer", "item", "quantity", "price", "date"]
COLUMNS = dict(zip(["basket_id", "customer_id", "item_id", "quantity", "unit_price", "event_time"], HEADER))
SUFFIXES = [".csv", ".tsv", ".txt", ".parquet", ".json", ".xlsx", ".csv.gz"]

# what a cell of a careless export holds: text with separators, quotes, line breaks and invisible characters,
# ids, numbers in every notation, dates in several formats, sentinels, nothing
cells = st.one_of(
    st.none(),
    st.text(alphabet=st.sampled_from('ab1,;."\n\r\t \u200b\ufeff\u00a0\x00é'), max_size=8),
    st.sampled_from(["nan", "NULL", "N/A", "None", "", "  ", "17850.0", "C536379", "POST", "inf", "-0", "1e308",
                     "1,234.50", "2,55", "-3", "0", "0001-01-01 00:00", "9999-12-31 23:59", "2023-02-30 10:00",
                     "2023-06-01 12:00", "2023-06-01T12:00:00+02:00", "01/06/2023 12:00", "20230601"]),
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.dates().map(lambda d: f"{d.isoformat()} 10:00"),
)
rows = st.lists(st.lists(cells, min_size=6, max_size=6), max_size=12)

configs = st.fixed_dictionaries({
    "csv": st.fixed_dictionaries({"decimal_comma": st.booleans(), "encoding": st.sampled_from(["utf8", "utf8-lossy"])}),
    "time": st.fixed_dictionaries({"format": st.sampled_from([None, "%Y-%m-%d %H:%M", "%d/%m/%Y %H:%M", "%Y%m%d"]),
                                   "timezone": st.sampled_from(["UTC", "Europe/London", "America/Sao_Paulo"])}),
    "validation": st.fixed_dictionaries({
        "duplicates": st.sampled_from(["quarantine", "keep"]), "overlap": st.sampled_from(["lines", "later_file"]),
        "max_quantity": st.floats(0, 1e9), "max_unit_price": st.floats(0, 1e9),
        "min_unit_price": st.one_of(st.none(), st.floats(0, 10)),
        "not_before": st.datetimes(datetime(1, 1, 1), datetime(2100, 1, 1)).map(str),
        "not_after": st.datetimes(datetime(1, 1, 1), datetime(9999, 1, 1)).map(str)}),
    "ids": st.fixed_dictionaries({"normalize_float": st.booleans(),
                                  "null_values": st.lists(st.sampled_from(["nan", "NULL", "-", "", "?"]), max_size=3)}),
    "returns": st.fixed_dictionaries({"negative_quantity": st.booleans(), "id_prefix": st.sampled_from([None, "C", ""])}),
    "exclude": st.fixed_dictionaries({"item_codes": st.lists(st.sampled_from(["POST", "a", ""]), max_size=2),
                                      "item_pattern": st.sampled_from([None, "^POST", "[0-9]+$", ".*", "^("])}),
    "guest_customer_ids": st.lists(st.sampled_from(["0", "guest", ""]), max_size=2),
})


def write_csv(path: Path, table: list[list[str | None]], separator: str = ",") -> int:
    """Write rows as a well-quoted CSV; returns the number of records (as Python's csv module reads them back).
    Lines end in CRLF so that the writer quotes a field holding a lone CR (with LF it would not)."""
    text = io.StringIO()
    writer = csv.writer(text, delimiter=separator, lineterminator="\r\n")
    writer.writerow(HEADER)
    writer.writerows([["" if v is None else v for v in row] for row in table])
    path.write_bytes(text.getvalue().encode("utf-8"))
    return sum(1 for _ in csv.reader(io.StringIO(text.getvalue(), newline=""), delimiter=separator)) - 1


def outcome(tree: dict, file: str, folder: Path) -> int | None:
    """Ingest; the rows in when it ran, None when it stopped with a clear error (asserted)."""
    try:
        cfg = SourceConfig.model_validate({"name": "fuzz", "files": [{"path": file}], "columns": COLUMNS,
                                           "base_dir": folder, **tree})
        report = ingest(cfg, folder / "out")
    except SourceError as exc:
        assert file in str(exc) and "Traceback" not in str(exc), str(exc)
        assert not (folder / "out").exists()
        return None
    except (ConfigError, ValueError) as exc:  # a config the schema refuses: the message names the key
        assert "validation error" in str(exc) or isinstance(exc, ConfigError), repr(exc)
        return None
    assert report.rows_in == report.accepted + report.quarantined_total
    assert set(report.quarantined) <= set(REASONS)
    events = pl.read_parquet(folder / "out" / "events.parquet")
    quarantine = pl.read_parquet(folder / "out" / "quarantine.parquet")
    assert (events.height, quarantine.height) == (report.accepted, report.quarantined_total)
    assert events["quantity"].drop_nulls().is_finite().all() and events["unit_price"].drop_nulls().is_finite().all()
    return report.rows_in


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_as_a_file(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        name = f"orders{suffix}"
        (Path(tmp) / name).write_bytes(data)
        outcome({}, name, Path(tmp))


@FUZZ
@given(table=rows, separator=st.sampled_from([",", ";"]))
def test_random_rows_reconcile(table, separator):
    with tempfile.TemporaryDirectory() as tmp:
        records = write_csv(Path(tmp) / "orders.csv", table, separator)
        rows_in = outcome({"csv": {"separator": separator}, "time": {"format": "%Y-%m-%d %H:%M"}}, "orders.csv", Path(tmp))
        assert rows_in == records  # nothing dropped or split by the reader


@FUZZ
@given(tree=configs, table=rows)
def test_random_configs_within_the_schema(tree, table):
    with tempfile.TemporaryDirectory() as tmp:
        records = write_csv(Path(tmp) / "orders.csv", table)
        rows_in = outcome(tree, "orders.csv", Path(tmp))
        assert rows_in in (None, records)
