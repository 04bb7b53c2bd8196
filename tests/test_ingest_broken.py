"""The corpus of broken inputs (tests/data/broken/): every file either fails with a clear error that names
the file (and, where it applies, the column and the fix) or ingests into a reconciled result whose bad rows
are quarantined with the right reason and line number. Never an unhandled traceback, never a silent drop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from twins.cli import app
from twins.config import ConfigError
from twins.data.ingest import IngestReport, ingest
from twins.data.readers import SourceError
from twins.data.source import SourceConfig, load_source

BROKEN = Path(__file__).parent / "data" / "broken"
BASE = BROKEN / "base.yaml"


def broken_source(file: str, *overrides: str) -> SourceConfig:
    """base.yaml pointed at one broken file, plus `--set`-style overrides."""
    return load_source(BASE, [f"files=[{{path: {file}}}]", *overrides])


def data_lines(file: str) -> int:
    """Data lines in a header CSV, counted without polars (so the reconciliation is checked independently)."""
    return len((BROKEN / file).read_bytes().splitlines()) - 1


def run(cfg: SourceConfig, out: Path) -> tuple[IngestReport, pl.DataFrame, pl.DataFrame]:
    report = ingest(cfg, out)
    events = pl.read_parquet(out / "events.parquet")
    quarantine = pl.read_parquet(out / "quarantine.parquet")
    assert report.rows_in == report.accepted + report.quarantined_total
    assert events.height == report.accepted and quarantine.height == report.quarantined_total
    saved = json.loads((out / "report.json").read_text())
    assert (saved["rows_in"], saved["accepted"], saved["quarantined"]) == (report.rows_in, report.accepted, report.quarantined)
    return report, events, quarantine


def rows_by_reason(quarantine: pl.DataFrame) -> dict[str, list[int]]:
    return {r: sorted(g["source_row"].to_list()) for (r,), g in quarantine.group_by("reason")}


# file, overrides, accepted, {reason: [line numbers in the file]}
RECONCILED = [
    pytest.param("clean.csv", [], 4, {}, id="clean"),
    pytest.param("truncated.csv", [], 2, {"unparsable_time": [4]}, id="truncated-last-line"),
    pytest.param("latin1.csv", [], 3, {}, id="latin1-lossy"),
    pytest.param("mixed_types.csv", [], 2, {"bad_quantity": [3], "bad_price": [4, 6]}, id="mixed-types"),
    pytest.param("future.csv", [], 1, {"future_event": [3, 4]}, id="future-dates"),
    pytest.param("prices.csv", [], 2, {"negative_value": [3], "non_finite": [4, 5, 6]}, id="negative-nan-inf-prices"),
    pytest.param("duplicates.csv", [], 3, {"duplicate_line": [4, 6, 7]}, id="duplicate-lines"),
    pytest.param("header_only.csv", [], 0, {}, id="header-only"),
    pytest.param("bad_dates.csv", [], 1, {"unparsable_time": [3, 4, 5, 6]}, id="unparsable-dates"),
    pytest.param("absurd.csv", [], 1, {"absurd_quantity": [3, 5], "absurd_price": [4]}, id="absurd-values"),
    pytest.param("semicolon.csv", ["csv.separator=';'"], 2, {}, id="semicolon-with-fix"),
]


@pytest.mark.parametrize(("file", "overrides", "accepted", "quarantined"), RECONCILED)
def test_broken_file_is_reconciled(tmp_path, file, overrides, accepted, quarantined):
    report, events, quarantine = run(broken_source(file, *overrides), tmp_path / "out")
    assert report.rows_in == data_lines(file)  # nothing dropped before validation
    assert report.accepted == accepted
    assert report.quarantined == {r: len(rows) for r, rows in quarantined.items()}
    assert rows_by_reason(quarantine) == quarantined
    assert set(quarantine["source_file"]) <= {file}
    # the quarantine keeps the raw source columns, as text, for every mapped and passed-through column
    assert {"invoice", "customer", "item", "description", "quantity", "price", "date"} <= set(quarantine.columns)
    # what was accepted is clean
    for col in ("quantity", "unit_price", "amount"):
        assert all(math.isfinite(v) and v >= 0 for v in events[col].to_list())
    assert events["event_time"].null_count() == 0


def test_truncated_line_keeps_what_was_read(tmp_path):
    _, _, quarantine = run(broken_source("truncated.csv"), tmp_path / "out")
    row = quarantine.row(0, named=True)
    assert (row["invoice"], row["customer"], row["quantity"], row["price"], row["date"]) == ("1002", "C02", "3", "1.5", None)


def test_mixed_types_parse_thousands_but_not_decimal_commas(tmp_path):
    _, events, quarantine = run(broken_source("mixed_types.csv"), tmp_path / "out")
    assert events.filter(pl.col("customer_id") == "C04")["unit_price"].to_list() == [1234.5]  # "1,234.50"
    raw = dict(zip(quarantine["source_row"].to_list(), zip(quarantine["quantity"], quarantine["price"])))
    assert raw == {3: ("abc", "2.25"), 4: ("1", "1,2x"), 6: ("1", "2,50")}  # "2,50" is not read as 250


def test_decimal_commas_in_the_quarantine_give_a_hint(tmp_path):
    report, _, _ = run(broken_source("mixed_types.csv"), tmp_path / "out")
    assert report.hints == ["1 quarantined row(s) hold numbers with a decimal comma (e.g. price '2,50' in "
                            "mixed_types.csv line 6); if the files write numbers that way, set "
                            "`csv: {decimal_comma: true}` in the source config"]
    assert report.summary().endswith("\n  hint: " + report.hints[0])
    clean, _, _ = run(broken_source("clean.csv"), tmp_path / "clean")
    assert clean.hints == []


def test_decimal_comma_config_reads_european_numbers(tmp_path):
    cfg = broken_source("decimal_comma.csv", "csv.separator=;", "csv.decimal_comma=true")
    report, events, quarantine = run(cfg, tmp_path / "out")
    prices = dict(zip(events["customer_id"], events["unit_price"]))
    assert prices == {"C01": 2.55, "C02": 1234.5, "C03": 1234.0, "C04": 2.5}  # "1.234" is a thousands group
    assert events.filter(pl.col("customer_id") == "C03")["quantity"].to_list() == [1.5]
    assert rows_by_reason(quarantine) == {"bad_price": [6]} and report.hints == []


def test_latin1_lossy_keeps_the_row_with_replacement_characters(tmp_path):
    _, events, _ = run(broken_source("latin1.csv"), tmp_path / "out")
    assert events["customer_id"].to_list() == ["C01", "C03", "Ren\ufffd"]  # sorted by customer
    assert events["description"][2] == "caf\ufffd cr\ufffdme"


def test_future_events_are_judged_against_not_after(tmp_path):
    _, events, _ = run(broken_source("future.csv", "validation.not_after=2100-01-01T00:00:00Z"), tmp_path / "out")
    assert events.height == 3


def test_duplicates_keep_keeps_every_line(tmp_path):
    report, _, _ = run(broken_source("duplicates.csv", "validation.duplicates=keep"), tmp_path / "out")
    assert (report.accepted, report.quarantined) == (6, {})


def test_semicolon_config_reads_the_file(tmp_path):
    report, events, _ = run(load_source(BROKEN / "semicolon.yaml"), tmp_path / "out")
    assert report.accepted == 2
    assert events["unit_price"].to_list() == [1.5, 2.25]


# file, overrides, words the message must contain (file, column where relevant, and the fix)
ERRORS = [
    pytest.param("empty.csv", [], ["empty.csv", "empty (0 bytes)", "files:"], id="empty-file"),
    pytest.param("semicolon.csv", [], ["semicolon.csv", "missing column(s)", "'invoice' (for basket_id)",
                                       "csv: {separator: ';'}"], id="wrong-delimiter"),
    pytest.param("missing_column.csv", [], ["missing_column.csv", "'price' (for unit_price)",
                                            "the file has columns", "columns:"], id="missing-column"),
    pytest.param("latin1.csv", ["csv.encoding=utf8"], ["latin1.csv", "invalid utf-8", "not UTF-8", "iconv",
                                                       "encoding: utf8-lossy"], id="latin1-strict"),
    pytest.param("truncated_quote.csv", [], ["truncated_quote.csv", "column 'description'", "never closed",
                                             "quote_char"], id="truncated-in-quotes"),
    pytest.param("extra_field.csv", [], ["extra_field.csv", "more fields", "quote values that contain the separator"],
                 id="unquoted-separator"),
    pytest.param("no_such_file.csv", [], ["no_such_file.csv", "file not found", "files:"], id="missing-file"),
    pytest.param("clean.csv", ["extra_columns=[colour]"],
                 ["clean.csv", "'colour' (for extra:colour)"], id="missing-extra-column"),
]


@pytest.mark.parametrize(("file", "overrides", "words"), ERRORS)
def test_broken_file_fails_clearly(tmp_path, file, overrides, words):
    out = tmp_path / "out"
    with pytest.raises(SourceError) as err:
        ingest(broken_source(file, *overrides), out)
    message = str(err.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "Traceback" not in message
    assert not out.exists()  # nothing half-written
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder left


def test_misspelt_config_key_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        load_source(BROKEN / "bad_config.yaml")
    message = str(err.value)
    assert "bad_config.yaml" in message
    assert "colums: Extra inputs are not permitted" in message
    assert "columns: Field required" in message


def test_bad_override_is_a_config_error():
    with pytest.raises(ConfigError, match="not of the form key.path=value"):
        broken_source("clean.csv", "csv.separator")
    with pytest.raises(ConfigError, match=r"config .*base\.yaml is invalid:\n  - csv\.separatr: Extra inputs"):
        broken_source("clean.csv", "csv.separatr=';'")


# ------------------------------------------------------------------------------------------------- CLI

@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TWINS_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "1000")  # rich would otherwise wrap long lines at 80 columns
    return home


@pytest.mark.parametrize(("overrides", "words"), [
    pytest.param(["files=[{path: empty.csv}]"], ["empty.csv", "0 bytes"], id="empty-file"),
    pytest.param(["files=[{path: latin1.csv}]", "csv.encoding=utf8"], ["latin1.csv", "not UTF-8", "utf8-lossy"],
                 id="latin1-strict"),
])
def test_cli_reports_broken_input_in_one_line(cli_env, overrides, words):
    args = ["ingest", str(BASE), "--no-track"]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in result.output
    assert not (cli_env / "events" / "broken" / "events.parquet").exists()


def test_cli_ingests_a_broken_file_into_quarantine(cli_env):
    result = CliRunner().invoke(app, ["ingest", str(BASE), "--no-track", "--set", "files=[{path: prices.csv}]"])
    assert result.exit_code == 0, result.output
    assert "rows in 6 = accepted 2 + quarantined 4 (non_finite 3, negative_value 1)" in result.output
    quarantine = pl.read_parquet(cli_env / "events" / "broken" / "quarantine.parquet")
    assert sorted(quarantine["source_row"].to_list()) == [3, 4, 5, 6]
