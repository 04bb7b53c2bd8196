"""Issue 23, item 5: ingest refuses what it cannot stand behind. Each test builds a tiny raw export that today's
code accepted silently (or answered with a wrong line number, a traceback, or another file) and checks the
defined answer: a quarantine reason, a normalised id, or an error naming the file, the line or the column."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import polars as pl
import pytest

from twins.config import ConfigError
from twins.data.ingest import ingest
from twins.data.readers import SourceError
from twins.data.source import SourceConfig

from test_ingest import COLUMNS, HEADER, run, source, write  # the same small shop log and its config


def reasons(quarantine: pl.DataFrame) -> dict[str, list[int]]:
    return {r: sorted(g["source_row"].to_list()) for (r,), g in quarantine.group_by("reason")}


# ------------------------------------------------------------------------------------------- values

def test_empty_quantity_or_price_on_a_purchase_is_quarantined(tmp_path):
    write(tmp_path / "t.csv", HEADER,
          "1,c1,a,2,1.5,2023-01-01 10:00",
          "2,c1,a,,1.5,2023-01-01 10:00",     # no quantity: was accepted with spend None
          "3,c1,a,2,,2023-01-01 10:00",       # no price
          "4,c1,a,2,  ,2023-01-01 10:00")     # blank price
    report, events, quarantine = run(source(tmp_path, "t.csv"), tmp_path / "out")
    assert reasons(quarantine) == {"missing_quantity": [3], "missing_price": [4, 5]}
    assert events["amount"].to_list() == [3.0]


def test_a_derived_price_is_not_missing(tmp_path):
    write(tmp_path / "t.csv", "invoice,customer,item,quantity,value,date",
          "1,c1,a,0,1.00,2023-01-03 10:00",   # no quantity to divide by: the amount stands
          "2,c1,b,2,,2023-01-03 10:00")       # neither amount nor price
    columns = {k: v for k, v in COLUMNS.items() if k != "unit_price"} | {"amount": "value"}
    _, events, quarantine = run(source(tmp_path, "t.csv", columns=columns), tmp_path / "out")
    assert events["item_id"].to_list() == ["a"] and reasons(quarantine) == {"missing_price": [3]}


def test_minimum_price_rule_refuses_zero_price_lines(tmp_path):
    write(tmp_path / "t.csv", HEADER, "1,c1,a,1,0,2023-01-01 10:00", "2,c1,b,1,0.50,2023-01-01 10:00",
          "C3,c1,b,-1,0.00,2023-01-02 10:00")
    kept, _, _ = run(source(tmp_path, "t.csv"), tmp_path / "o1")
    assert kept.accepted == 3  # no rule by default
    _, events, quarantine = run(source(tmp_path, "t.csv", validation={"min_unit_price": 0.01},
                                       returns={"id_prefix": "C"}), tmp_path / "o2")
    assert reasons(quarantine) == {"low_price": [2, 4]} and events["item_id"].to_list() == ["b"]


def test_dates_before_not_before_are_quarantined(tmp_path):
    write(tmp_path / "t.csv", HEADER,
          "1,c1,a,1,1.0,0001-01-01 00:00",    # .NET / SQL minimum: recency_days 738,885 before
          "2,c1,a,1,1.0,1899-12-30 00:00",    # Excel's zero date
          "3,c1,a,1,1.0,1970-01-01 00:00",    # a zero Unix time
          "4,c1,a,1,1.0,1985-06-01 12:00",
          "5,c1,a,1,1.0,2023-01-01 10:00")
    _, events, quarantine = run(source(tmp_path, "t.csv"), tmp_path / "o1")
    assert reasons(quarantine) == {"early_event": [2, 3, 4]}
    assert events["event_time"].min() == datetime(1985, 6, 1, 12, tzinfo=timezone.utc)
    _, events, quarantine = run(source(tmp_path, "t.csv", validation={"not_before": "2000-01-01"}), tmp_path / "o2")
    assert reasons(quarantine) == {"early_event": [2, 3, 4, 5]} and events.height == 1


# ---------------------------------------------------------------------------------------------- ids

def test_invisible_and_null_sentinel_ids_are_no_ids(tmp_path):
    write(tmp_path / "t.csv", HEADER,
          "1,c1,a,1,1.0,2023-01-01 10:00",
          "2,\u200b,a,1,1.0,2023-01-01 10:00",        # zero-width space: was a customer of its own
          "3,\ufeff\u00a0,a,1,1.0,2023-01-01 10:00",  # BOM and no-break space
          "4,nan,a,1,1.0,2023-01-01 10:00",           # pandas' missing value
          "5,NULL,a,1,1.0,2023-01-01 10:00",
          "6,N/A,a,1,1.0,2023-01-01 10:00",
          "7,c\u200b1,b,1,1.0,2023-01-02 10:00",      # the same customer as c1
          "8,c2,\u200b,1,1.0,2023-01-02 10:00",       # an item id of nothing
          "9,c2,None,1,1.0,2023-01-02 10:00",
          "\x01,c2,a,1,1.0,2023-01-02 10:00",         # a control character for a basket id
          "11,c2,  ,1,1.0,2023-01-02 10:00")
    report, events, quarantine = run(source(tmp_path, "t.csv"), tmp_path / "out")
    assert reasons(quarantine) == {"missing_item": [9, 10, 12], "missing_basket": [11]}
    assert events["customer_id"].to_list() == ["c1", "c1", None, None, None, None, None]  # by customer, guests last
    assert (report.customers, report.guest_rows) == (1, 5)


def test_null_values_are_configurable(tmp_path):
    write(tmp_path / "t.csv", HEADER, "1,NA,a,1,1.0,2023-01-01 10:00", "2,-,a,1,1.0,2023-01-01 10:00")
    _, events, _ = run(source(tmp_path, "t.csv", ids={"null_values": ["-"]}), tmp_path / "out")
    assert events["customer_id"].to_list() == ["NA", None]


def test_float_ids_from_parquet(tmp_path):
    pl.DataFrame({"customer": [17850.0, 1.0, float("nan"), 2.5], "item": ["a", "b", "c", "d"],
                  "date": [datetime(2023, 1, 1, 10)] * 4, "invoice": ["1", "2", "3", "4"],
                  "quantity": [1.0] * 4, "price": [1.0] * 4}).write_parquet(tmp_path / "t.parquet")
    plain, events, _ = run(source(tmp_path, "t.parquet", time={"format": None}), tmp_path / "o1")
    assert events["customer_id"].to_list() == ["1.0", "17850.0", "2.5", None]  # NaN is no customer (sorted, last)
    assert plain.hints == ["2 customer id(s) are written as floats (e.g. '1.0'); if they are whole numbers, set "
                           "`ids: {normalize_float: true}` in the source config"]
    report, events, _ = run(source(tmp_path, "t.parquet", time={"format": None}, ids={"normalize_float": True}),
                            tmp_path / "o2")
    assert events["customer_id"].to_list() == ["1", "17850", "2.5", None]
    assert not any("normalize_float" in h for h in report.hints)


def test_float_ids_written_as_text_are_normalised_and_attribute_keys_follow(tmp_path):
    write(tmp_path / "t.csv", HEADER, "1,17850.0,a,1,1.0,2023-01-01 10:00", "2,17850,b,1,1.0,2023-01-02 10:00")
    write(tmp_path / "people.csv", "id,segment", "17850.00,gold", "nan,none")
    cfg = source(tmp_path, "t.csv", ids={"normalize_float": True},
                 customer_attributes={"path": "people.csv", "key": "id", "columns": ["segment"]})
    report, events, _ = run(cfg, tmp_path / "out")
    assert events["customer_id"].to_list() == ["17850", "17850"] and report.customers == 1
    assert pl.read_parquet(tmp_path / "out" / "customers.parquet").rows() == [("17850", "gold")]


def test_twin_show_finds_a_normalised_float_id(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from twins.cli import app

    write(tmp_path / "t.csv", HEADER, "1,17850.0,a,1,1.0,2023-01-01 10:00", "2,17850.0,b,1,1.0,2023-02-01 10:00")
    config = tmp_path / "shop.yaml"
    config.write_text(json.dumps({"name": "shop", "files": [{"path": "t.csv"}], "columns": COLUMNS,
                                  "time": {"format": "%Y-%m-%d %H:%M"}, "ids": {"normalize_float": True}}))
    monkeypatch.setenv("TWINS_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    for args in (["ingest", str(config), "--no-track"], ["build", str(config), "--no-track", "--outlook-days", "0"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["twin", "show", "17850", "--source", "shop"])
    assert result.exit_code == 0, result.output
    assert "17850" in result.output


# ----------------------------------------------------------------------------------- basket JSON

def test_non_string_items_in_basket_json(tmp_path):
    baskets = {"7": [["a", 12, 3.0], [True, 1.5, {"x": 1}, ["b"], None]]}
    (tmp_path / "b.json").write_text(json.dumps(baskets))
    cfg = SourceConfig(name="j", files=[{"path": "b.json"}], columns={"customer_id": "customer", "item_id": "item"},
                       order_column="basket_index", base_dir=tmp_path)
    _, events, quarantine = run(cfg, tmp_path / "out")
    assert events["item_id"].to_list() == ["a", "12", "3"]  # whole numbers are ids
    assert dict(zip(quarantine["item"], quarantine["reason"])) == {
        "true": "bad_item", "1.5": "bad_item", '{"x": 1}': "bad_item", '["b"]': "bad_item", None: "missing_item"}


# ------------------------------------------------------------------------------------ line numbers

def test_source_row_is_the_line_after_multi_line_quoted_fields(tmp_path):
    write(tmp_path / "t.csv", HEADER + ",note",
          '1,c1,a,1,1.0,2023-01-01 10:00,"two\nlines"',
          '2,c1,a,x,1.0,2023-01-01 10:00,plain',                 # line 4
          '3,c1,a,1,1.0,2023-01-01 10:00,"three\r\nlines\nhere"',
          '4,c1,a,1,1.0,bad date,ok')                             # line 8
    cfg = source(tmp_path, "t.csv", extra_columns=["note"])
    _, _, quarantine = run(cfg, tmp_path / "out")
    assert reasons(quarantine) == {"bad_quantity": [4], "unparsable_time": [8]}
    lines = (tmp_path / "t.csv").read_text().split("\n")
    assert lines[3].startswith("2,c1,a,x") and lines[7].startswith("4,c1,a,1,1.0,bad date")


def test_duplicate_lines_are_still_found_after_multi_line_fields(tmp_path):
    write(tmp_path / "t.csv", HEADER + ",note", '1,c1,a,1,1.0,2023-01-01 10:00,"a\nb"',
          '1,c1,a,1,1.0,2023-01-01 10:00,"a\nb"')
    _, _, quarantine = run(source(tmp_path, "t.csv", extra_columns=["note"]), tmp_path / "out")
    assert reasons(quarantine) == {"duplicate_line": [4]}


@pytest.mark.parametrize(("text", "words"), [
    pytest.param(HEADER + "\n1,c1,a,1,1.0,2023-01-01 10:00\n2,c2,\"b\nc\",1,1.0,2023-01-01 10:00\n"
                 "3,c1,a,1,1.0,2023-01-01 10:00,extra\n", ["more fields", "on line 5"], id="more-fields"),
    pytest.param(HEADER + "\n1,c1,a,1,1.0,2023-01-01 10:00\n2,c1,\"open,1,1.0,2023-01-01 10:00\n"
                 "3,c1,a,1,1.0,2023-01-01 10:00\n", ["never closed", "on line 3"], id="unclosed-quote"),
])
def test_malformed_csv_errors_name_the_line(tmp_path, text, words):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(SourceError) as err:
        ingest(source(tmp_path, "t.csv"), tmp_path / "out")
    assert str(err.value).startswith(f"{tmp_path / 't.csv'}: cannot be read as csv")
    for word in words:
        assert word in str(err.value)


def test_a_file_that_is_not_utf8_names_the_line(tmp_path):
    (tmp_path / "t.csv").write_bytes((HEADER + "\n1,c1,a,1,1.0,2023-01-01 10:00\n1,Ren\xe9,a,1,1.0,2023-01-01 10:00\n")
                                     .encode("latin-1"))
    with pytest.raises(SourceError, match="invalid utf-8 sequence on line 3; the file is not UTF-8"):
        ingest(source(tmp_path, "t.csv", csv={"encoding": "utf8"}), tmp_path / "out")


# ----------------------------------------------------------------------------------- headers, paths

def test_duplicated_column_names_are_an_error_naming_them(tmp_path):
    write(tmp_path / "t.csv", HEADER + ",item", "1,c1,a,1,1.0,2023-01-01 10:00,b")
    with pytest.raises(SourceError, match=r"t\.csv: the header names column\(s\) \['item'\] more than once; .*column_names"):
        ingest(source(tmp_path, "t.csv"), tmp_path / "out")
    names = HEADER.split(",") + ["item2"]
    report, events, _ = run(source(tmp_path, "t.csv", csv={"column_names": names}), tmp_path / "o2")
    assert events["item_id"].to_list() == ["a"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table([pa.array(["c1"]), pa.array(["c2"])], names=["customer", "customer"]), tmp_path / "t.parquet")
    with pytest.raises(SourceError, match=r"t\.parquet: .*'customer'.*more than once"):
        ingest(source(tmp_path, "t.parquet"), tmp_path / "o3")
    import xlsxwriter

    book = xlsxwriter.Workbook(tmp_path / "t.xlsx")  # fastexcel alone would rename the second one 'customer_1'
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, ["customer", "customer"])
    sheet.write_row(1, 0, ["c1", "c2"])
    book.close()
    with pytest.raises(SourceError, match=r"t\.xlsx: the header names column\(s\) \['customer'\] more than once; rename"):
        ingest(source(tmp_path, "t.xlsx"), tmp_path / "o4")

    with pytest.raises(ConfigError, match=r"csv\.column_names: .*\['a'\] are given more than once"):
        from twins.config import validate

        validate(SourceConfig, {"name": "t", "files": [{"path": "x.csv"}], "columns": COLUMNS,
                                "csv": {"column_names": ["a", "a"]}}, "x.yaml")


def test_a_folder_in_files_is_a_clear_error(tmp_path):
    (tmp_path / "exports").mkdir()
    write(tmp_path / "exports" / "a.csv", HEADER, "1,c1,a,1,1.0,2023-01-01 10:00")
    with pytest.raises(SourceError, match=r"exports: is a folder, not a file; .*'exports/\*\.csv'"):
        ingest(source(tmp_path, "exports"), tmp_path / "out")


def test_a_literal_bracket_in_a_file_name_reads_that_file(tmp_path):
    write(tmp_path / "orders[1].csv", HEADER, "1,c1,a,1,1.0,2023-01-01 10:00")
    write(tmp_path / "orders1.csv", HEADER, "9,c9,z,1,1.0,2023-01-01 10:00")  # what the pattern [1] would match
    report, events, _ = run(source(tmp_path, "orders[1].csv"), tmp_path / "out")
    assert report.files == [str(tmp_path / "orders[1].csv")] and events["item_id"].to_list() == ["a"]


def test_a_pattern_does_not_loop_through_linked_folders(tmp_path):
    (tmp_path / "exports" / "2023").mkdir(parents=True)
    write(tmp_path / "exports" / "2023" / "jan.csv", HEADER, "1,c1,a,1,1.0,2023-01-01 10:00")
    os.symlink("..", tmp_path / "exports" / "2023" / "up")         # a loop: exports/2023/up/2023/up/...
    os.symlink("2023/jan.csv", tmp_path / "exports" / "jan.csv")   # the same file under another name
    write(tmp_path / "exports" / ".hidden.csv", HEADER, "2,c2,b,1,1.0,2023-01-01 10:00")
    report, events, quarantine = run(source(tmp_path, "exports/**/*.csv"), tmp_path / "out")
    assert report.files == [str(tmp_path / "exports" / "2023" / "jan.csv")]
    assert (events.height, quarantine.height) == (1, 0)


# --------------------------------------------------------------------------------------- Excel

def test_excel_workbook_is_read_through_calamine(tmp_path):
    pl.DataFrame({"invoice": ["536365", "536366"], "customer": [17850.0, None], "item": ["85123A", "71053"],
                  "quantity": [6, 2], "price": [2.55, 3.39],
                  "date": [datetime(2024, 12, 1, 8, 26), datetime(2024, 12, 1, 8, 28)]}
                 ).write_excel(tmp_path / "orders.xlsx", worksheet="orders")
    cfg = source(tmp_path, "orders.xlsx", time={"format": None})
    cfg.files[0].sheet = "orders"
    report, events, _ = run(cfg, tmp_path / "out")
    assert events.select("customer_id", "item_id", "quantity", "unit_price").rows() == [
        ("17850", "85123A", 6.0, 2.55), (None, "71053", 2.0, 3.39)]
    assert events["event_time"][0] == datetime(2024, 12, 1, 8, 26, tzinfo=timezone.utc)
    cfg.files[0].sheet = "Sheet9"
    with pytest.raises(SourceError, match=r"orders\.xlsx: .*'Sheet9'.*set `sheet:`"):
        ingest(cfg, tmp_path / "o2")
    (tmp_path / "bad.xlsx").write_bytes(b"PK not really a workbook")
    with pytest.raises(SourceError, match=r"bad\.xlsx: cannot be read as an Excel workbook"):
        ingest(source(tmp_path, "bad.xlsx"), tmp_path / "o3")


# ------------------------------------------------------------------------------------- overlap

def test_overlap_later_file_takes_the_overlapping_dates_from_the_later_export(tmp_path):
    write(tmp_path / "jan.csv", HEADER,
          "1,c1,a,1,1.0,2023-01-10 10:00",
          "2,c2,b,1,2.0,2023-01-20 10:00",   # corrected in feb.csv (quantity 3): both would be kept by 'lines'
          "3,c1,c,1,3.0,2023-01-31 10:00")   # the same line in feb.csv
    write(tmp_path / "feb.csv", HEADER,
          "2,c2,b,3,2.0,2023-01-20 10:00",
          "3,c1,c,1,3.0,2023-01-31 10:00",
          "4,c2,a,1,1.0,2023-02-05 10:00")
    _, lines, _ = run(source(tmp_path, "jan.csv", "feb.csv"), tmp_path / "o1")
    assert lines.filter(pl.col("basket_id") == "2")["quantity"].to_list() == [1.0, 3.0]  # double counted
    _, events, quarantine = run(source(tmp_path, "jan.csv", "feb.csv", validation={"overlap": "later_file"}),
                                tmp_path / "o2")
    assert sorted(events.select("basket_id", "quantity").rows()) == [("1", 1.0), ("2", 3.0), ("3", 1.0), ("4", 1.0)]
    assert sorted(zip(quarantine["source_file"], quarantine["source_row"], quarantine["reason"])) == [
        ("jan.csv", 3, "superseded"), ("jan.csv", 4, "overlap_duplicate")]
    with pytest.raises(ValueError, match="later_file compares the files' time ranges"):
        SourceConfig(name="o", files=[{"path": "a.csv"}], columns={"customer_id": "c", "item_id": "i"},
                     order_column="o", validation={"overlap": "later_file"})


def test_an_exclusion_pattern_polars_cannot_run_is_a_config_error():
    from twins.config import validate

    with pytest.raises(ConfigError, match=r"exclude\.item_pattern: .*'\(\?<=P\)OST' is not a regular expression polars "
                                          r"can run \(error: look-around"):
        validate(SourceConfig, {"name": "t", "files": [{"path": "x.csv"}], "columns": COLUMNS,
                                "exclude": {"item_pattern": "(?<=P)OST"}}, "x.yaml")
