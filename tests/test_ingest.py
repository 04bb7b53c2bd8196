"""Ingest features on small generated files: time zones, returns, exclusions, guests, duplicates across
files, attribute tables, order-only sources, Parquet input, derived prices and atomic output."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from twins.config import ConfigError
from twins.data.events import read_report, scan_events
from twins.data.ingest import IngestReport, ingest
from twins.data.readers import SourceError
from twins.data.source import SourceConfig, load_source

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

HEADER = "invoice,customer,item,quantity,price,date"
COLUMNS = {"basket_id": "invoice", "customer_id": "customer", "item_id": "item", "quantity": "quantity",
           "unit_price": "price", "event_time": "date"}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def source(tmp_path: Path, *files: str, **kw) -> SourceConfig:
    tree = {"name": "t", "files": [{"path": f} for f in files], "columns": dict(COLUMNS),
            "time": {"format": "%Y-%m-%d %H:%M"}, "validation": {"not_after": "2030-01-01T00:00:00Z"},
            "base_dir": tmp_path}
    for key, value in kw.items():
        tree[key] = value if not isinstance(value, dict) or key == "columns" else {**tree.get(key, {}), **value}
    return SourceConfig.model_validate(tree)


def run(cfg: SourceConfig, out: Path) -> tuple[IngestReport, pl.DataFrame, pl.DataFrame]:
    report = ingest(cfg, out)
    events = pl.read_parquet(out / "events.parquet")
    quarantine = pl.read_parquet(out / "quarantine.parquet")
    assert report.rows_in == report.accepted + report.quarantined_total
    assert (events.height, quarantine.height) == (report.accepted, report.quarantined_total)
    return report, events, quarantine


def reasons(quarantine: pl.DataFrame) -> dict[str, list[tuple[str, int]]]:
    return {r: sorted(zip(g["source_file"], g["source_row"])) for (r,), g in quarantine.group_by("reason")}


# ------------------------------------------------------------------------------------------------ time

def test_date_format_and_time_zone_to_utc_with_dst(tmp_path):
    write(tmp_path / "t.csv", HEADER,
          "1,c1,a,1,1.0,15/01/2023 12:00",   # GMT: UTC+0
          "2,c1,a,1,1.0,15/07/2023 12:00",   # BST: UTC+1
          "3,c1,a,1,1.0,26/03/2023 01:30",   # clocks jump 01:00 -> 02:00: this time does not exist
          "4,c1,a,1,1.0,29/10/2023 01:30",   # clocks fall back 02:00 -> 01:00: ambiguous, earliest (BST)
          "5,c1,a,1,1.0,26/03/2023 02:30")   # just after the jump: BST
    cfg = source(tmp_path, "t.csv", time={"format": "%d/%m/%Y %H:%M", "timezone": "Europe/London"})
    report, events, quarantine = run(cfg, tmp_path / "out")
    assert events["event_time"].dtype == pl.Datetime("us", "UTC")
    assert events["event_time"].to_list() == [utc(2023, 1, 15, 12), utc(2023, 3, 26, 1, 30), utc(2023, 7, 15, 11),
                                              utc(2023, 10, 29, 0, 30)]  # sorted by customer and time
    assert reasons(quarantine) == {"unparsable_time": [("t.csv", 4)]}
    assert quarantine["date"].to_list() == ["26/03/2023 01:30"]


def test_iso_times_inferred_and_converted_from_new_york(tmp_path):
    write(tmp_path / "t.csv", HEADER, "1,c1,a,1,1.0,2023-07-01 12:00:00", "2,c1,a,1,1.0,2023-12-01 12:00:00")
    cfg = source(tmp_path, "t.csv", time={"format": None, "timezone": "America/New_York"})
    _, events, _ = run(cfg, tmp_path / "out")
    assert events["event_time"].to_list() == [utc(2023, 7, 1, 16), utc(2023, 12, 1, 17)]


def test_utc_offsets_in_the_data_win_over_the_configured_zone(tmp_path):
    write(tmp_path / "t.csv", HEADER, "1,c1,a,1,1.0,2023-01-05T10:00:00+0100", "2,c1,a,1,1.0,2023-07-05T10:00:00-0400")
    cfg = source(tmp_path, "t.csv", time={"format": "%Y-%m-%dT%H:%M:%S%z", "timezone": "Asia/Tokyo"})
    _, events, _ = run(cfg, tmp_path / "out")
    assert events["event_time"].to_list() == [utc(2023, 1, 5, 9), utc(2023, 7, 5, 14)]


def test_offsets_without_a_format_give_a_clear_error(tmp_path):
    write(tmp_path / "t.csv", HEADER, "1,c1,a,1,1.0,2023-01-05T10:00:00+01:00")
    with pytest.raises(SourceError) as err:
        ingest(source(tmp_path, "t.csv", time={"format": None}), tmp_path / "out")
    assert str(err.value).startswith(f"{tmp_path / 't.csv'}: cannot be read as csv")
    assert "%z" in str(err.value) and "time: {format:" in str(err.value)


def test_future_events_default_to_ingest_time(tmp_path):
    write(tmp_path / "t.csv", HEADER, "1,c1,a,1,1.0,2020-01-01 00:00", "2,c1,a,1,1.0,2999-01-01 00:00")
    cfg = source(tmp_path, "t.csv", validation={"not_after": None})
    report, _, quarantine = run(cfg, tmp_path / "out")
    assert (report.accepted, reasons(quarantine)) == (1, {"future_event": [("t.csv", 3)]})


# --------------------------------------------------------------------------------------------- returns

def test_returns_by_invoice_prefix_and_negative_quantity(tmp_path):
    write(tmp_path / "t.csv", HEADER,
          "100,c1,a,2,1.5,2023-01-01 10:00",
          "C101,c1,a,2,1.5,2023-01-02 10:00",    # prefix, positive quantity
          "C102,c1,b,-3,2.0,2023-01-03 10:00",   # prefix and negative quantity
          "103,c2,a,-1,1.5,2023-01-04 10:00")    # negative quantity only
    _, events, _ = run(source(tmp_path, "t.csv", returns={"id_prefix": "C"}), tmp_path / "out")
    assert events["event_type"].to_list() == ["purchase", "return", "return", "return"]
    assert events["quantity"].to_list() == [2.0, 2.0, 3.0, 1.0]
    assert events["amount"].to_list() == [3.0, 3.0, 6.0, 1.5]
    assert events["basket_id"].to_list() == ["100", "C101", "C102", "103"]


def test_return_prefix_on_another_column(tmp_path):
    write(tmp_path / "t.csv", HEADER + ",doc", "1,c1,a,1,1.0,2023-01-01 10:00,INV1", "2,c1,a,1,1.0,2023-01-02 10:00,CRN2")
    cfg = source(tmp_path, "t.csv", returns={"id_prefix": "CRN", "id_column": "doc"})
    report, events, _ = run(cfg, tmp_path / "out")
    assert events["event_type"].to_list() == ["purchase", "return"] and report.returns == 1


def test_returns_by_flag_column(tmp_path):
    write(tmp_path / "t.csv", HEADER + ",kind",
          "1,c1,a,2,1.0,2023-01-01 10:00,sale",
          "2,c1,a,2,1.0,2023-01-02 10:00,return",
          "3,c1,a,-4,1.0,2023-01-03 10:00,RETURN",
          "4,c1,a,1,1.0,2023-01-04 10:00,")
    cfg = source(tmp_path, "t.csv", returns={"flag_column": "kind", "flag_values": ["return", "RETURN"],
                                             "negative_quantity": False})
    report, events, _ = run(cfg, tmp_path / "out")
    assert events["event_type"].to_list() == ["purchase", "return", "return", "purchase"]
    assert events["quantity"].to_list() == [2.0, 2.0, 4.0, 1.0]
    assert report.returns == 2


def test_negative_quantity_that_marks_no_return_is_quarantined(tmp_path):
    write(tmp_path / "t.csv", HEADER, "1,c1,a,2,1.0,2023-01-01 10:00", "2,c1,a,-2,1.0,2023-01-02 10:00")
    cfg = source(tmp_path, "t.csv", returns={"negative_quantity": False})
    report, events, quarantine = run(cfg, tmp_path / "out")
    assert events["quantity"].to_list() == [2.0]
    assert reasons(quarantine) == {"negative_value": [("t.csv", 3)]}
    assert quarantine["quantity"].to_list() == ["-2"]


def test_event_type_column_is_validated(tmp_path):
    write(tmp_path / "t.csv", HEADER + ",kind", "1,c1,a,1,1.0,2023-01-01 10:00,Purchase",
          "2,c1,a,1,1.0,2023-01-02 10:00,refund")
    cfg = source(tmp_path, "t.csv", columns={**COLUMNS, "event_type": "kind"})
    _, events, quarantine = run(cfg, tmp_path / "out")
    assert events["event_type"].to_list() == ["purchase"]
    assert reasons(quarantine) == {"bad_event_type": [("t.csv", 3)]}


# ---------------------------------------------------------------------------------------- non-products

def test_non_product_codes_by_list_and_pattern(tmp_path):
    write(tmp_path / "t.csv", HEADER,
          "1,c1,85123A,1,2.5,2023-01-01 10:00",
          "1,c1,POST,1,18.0,2023-01-01 10:00",
          "1,c1,DOT,1,5.0,2023-01-01 10:00",
          "2,c2,BANK CHARGES,1,15.0,2023-01-02 10:00",
          "2,c2,M,1,0.5,2023-01-02 10:00",
          "2,c2,MUG,1,3.0,2023-01-02 10:00")
    cfg = source(tmp_path, "t.csv", exclude={"item_codes": ["POST", "DOT"], "item_pattern": "^(BANK|M$)"})
    report, events, quarantine = run(cfg, tmp_path / "out")
    assert events["item_id"].to_list() == ["85123A", "MUG"]
    assert reasons(quarantine) == {"non_product": [("t.csv", 3), ("t.csv", 4), ("t.csv", 5), ("t.csv", 6)]}
    assert report.quarantined == {"non_product": 4}


# ---------------------------------------------------------------------------------------------- guests

def test_guest_customers_are_kept_without_an_id(tmp_path):
    write(tmp_path / "t.csv", HEADER,
          "1,c1,a,1,1.0,2023-01-01 10:00",
          "2,,a,1,1.0,2023-01-01 11:00",
          '3,"",a,1,1.0,2023-01-01 12:00',
          "4,   ,a,1,1.0,2023-01-01 13:00",
          "5,-1,a,1,1.0,2023-01-01 14:00",
          "6,GUEST,a,1,1.0,2023-01-01 15:00",
          "7,c2,a,1,1.0,2023-01-01 16:00")
    cfg = source(tmp_path, "t.csv", guest_customer_ids=["-1", "GUEST"])
    report, events, quarantine = run(cfg, tmp_path / "out")
    assert quarantine.height == 0
    assert events["customer_id"].to_list() == ["c1", "c2", None, None, None, None, None]  # guests last
    assert (report.accepted, report.guest_rows, report.customers) == (7, 5, 2)
    assert read_report(tmp_path / "out")["guest_rows"] == 5


# ------------------------------------------------------------------------------------------ duplicates

def test_exact_duplicate_lines_are_quarantined_first_wins(tmp_path):
    write(tmp_path / "t.csv", HEADER,
          "1,c1,a,1,1.0,2023-01-01 10:00",
          "1,c1,a,1,1.0,2023-01-01 10:00",
          "1,c1,a,2,1.0,2023-01-01 10:00",   # differs in quantity: kept
          "1,c1,a,1,1.0,2023-01-01 10:00")
    report, events, quarantine = run(source(tmp_path, "t.csv"), tmp_path / "out")
    assert events["quantity"].to_list() == [1.0, 2.0]
    assert reasons(quarantine) == {"duplicate_line": [("t.csv", 3), ("t.csv", 5)]}


@pytest.mark.parametrize("with_basket_id", [True, False], ids=["basket-column", "basket-from-time"])
def test_overlapping_files_first_file_wins(tmp_path, with_basket_id):
    write(tmp_path / "jan.csv", HEADER,
          "1,c1,a,1,1.0,2023-01-10 10:00",
          "2,c2,b,1,2.0,2023-01-20 10:00",
          "3,c1,c,1,3.0,2023-01-31 10:00")
    write(tmp_path / "feb.csv", HEADER,
          "2,c2,b,1,2.0,2023-01-20 10:00",   # overlap: a copy of jan.csv line 3
          "3,c1,c,1,3.0,2023-01-31 10:00",   # overlap: a copy of jan.csv line 4
          "4,c2,a,1,1.0,2023-02-05 10:00",
          "4,c2,a,1,1.0,2023-02-05 10:00")   # a duplicate within feb.csv
    columns = dict(COLUMNS) if with_basket_id else {k: v for k, v in COLUMNS.items() if k != "basket_id"}
    report, events, quarantine = run(source(tmp_path, "jan.csv", "feb.csv", columns=columns), tmp_path / "out")
    assert report.per_file_rows == {str(tmp_path / "jan.csv"): 3, str(tmp_path / "feb.csv"): 4}
    assert reasons(quarantine) == {"overlap_duplicate": [("feb.csv", 2), ("feb.csv", 3)],
                                   "duplicate_line": [("feb.csv", 5)]}
    assert events["item_id"].to_list() == ["a", "c", "b", "a"]  # by customer, then time
    assert events.height == 4 and events["basket_id"].n_unique() == 4


def test_a_wildcard_path_reads_the_matching_files_in_name_order(tmp_path):
    (tmp_path / "exports").mkdir()
    write(tmp_path / "exports" / "orders_2023-02.csv", HEADER, "2,c1,b,1,2.0,2023-02-03 10:00",
          "1,c1,a,1,1.0,2023-01-10 10:00")  # a copy of the January line: the earlier file (by name) wins
    write(tmp_path / "exports" / "orders_2023-01.csv", HEADER, "1,c1,a,1,1.0,2023-01-10 10:00")
    write(tmp_path / "exports" / "notes.csv", HEADER, "9,c9,z,1,1.0,2023-01-10 10:00")
    report, events, quarantine = run(source(tmp_path, "exports/orders_*.csv"), tmp_path / "out")
    assert list(report.per_file_rows) == [str(tmp_path / "exports" / f"orders_2023-0{m}.csv") for m in (1, 2)]
    assert reasons(quarantine) == {"overlap_duplicate": [("orders_2023-02.csv", 3)]}
    assert events["item_id"].to_list() == ["a", "b"] and report.rows_in == 3
    with pytest.raises(ConfigError, match=r"'exports/returns_\*\.csv' matches no file"):
        ingest(source(tmp_path, "exports/returns_*.csv"), tmp_path / "out2")


def test_gzipped_csv_is_read_by_its_suffix(tmp_path):
    import gzip

    text = "\n".join([HEADER, "1,c1,a,2,1.5,2023-01-10 10:00", "2,c2,b,x,1.0,2023-01-11 10:00"]) + "\n"
    (tmp_path / "orders.csv.gz").write_bytes(gzip.compress(text.encode()))
    report, events, quarantine = run(source(tmp_path, "orders.csv.gz"), tmp_path / "out")
    assert events["quantity"].to_list() == [2.0] and reasons(quarantine) == {"bad_quantity": [("orders.csv.gz", 3)]}
    (tmp_path / "t.parquet.gz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(SourceError, match="a compressed parquet file cannot be read; decompress it first"):
        ingest(source(tmp_path, "t.parquet.gz"), tmp_path / "out2")


# -------------------------------------------------------------------------------------- attribute tables

def test_attribute_tables_are_written_and_joinable(tmp_path):
    write(tmp_path / "t.csv", HEADER, "1,1,a,1,1.0,2023-01-01 10:00", "2,2,b,1,2.0,2023-01-02 10:00",
          "3,3,z,1,2.0,2023-01-03 10:00")
    write(tmp_path / "items.csv", "sku,department,brand", "a,fruit,acme", "b, bakery ,bestbread", "x,misc,none")
    pl.DataFrame({"cust": [1, 2], "age": ["25-34", "45-54"], "size": [2, 4]}).write_parquet(tmp_path / "people.parquet")
    cfg = source(tmp_path, "t.csv",
                 item_attributes={"path": "items.csv", "key": "sku", "columns": ["department", "brand"]},
                 customer_attributes={"path": "people.parquet", "key": "cust", "columns": ["age", "size"]})
    run(cfg, tmp_path / "out")
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items.columns == ["item_id", "item_department", "item_brand"] and items.height == 3
    customers = pl.read_parquet(tmp_path / "out" / "customers.parquet")
    assert customers.columns == ["customer_id", "customer_age", "customer_size"]
    assert customers["customer_id"].to_list() == ["1", "2"]
    joined = scan_events(tmp_path / "out", with_attributes=True).collect()
    assert joined["item_department"].to_list() == ["fruit", " bakery ", None]
    assert joined["customer_age"].to_list() == ["25-34", "45-54", None]
    assert joined["customer_size"].to_list() == [2, 4, None]
    plain = scan_events(tmp_path / "out").collect()
    assert "item_department" not in plain.columns and plain.height == 3


def test_non_unique_attribute_key_is_a_clear_error(tmp_path):
    write(tmp_path / "t.csv", HEADER, "1,c1,a,1,1.0,2023-01-01 10:00")
    write(tmp_path / "items.csv", "sku,department", "a,fruit", "b,bakery", "a,veg")
    cfg = source(tmp_path, "t.csv", item_attributes={"path": "items.csv", "key": "sku", "columns": ["department"]})
    with pytest.raises(SourceError) as err:
        ingest(cfg, tmp_path / "out")
    message = str(err.value)
    assert str(tmp_path / "items.csv") in message
    assert "key column 'sku' is not unique (e.g. ['a'])" in message and "de-duplicate" in message
    assert not (tmp_path / "out").exists()


def test_unreadable_attribute_table_is_named(tmp_path):
    write(tmp_path / "t.csv", HEADER, "1,c1,a,1,1.0,2023-01-01 10:00")
    (tmp_path / "items.csv").write_bytes("sku,department\na,fruit\nb,caf\xe9\n".encode("latin-1"))
    cfg = source(tmp_path, "t.csv", item_attributes={"path": "items.csv", "key": "sku", "columns": ["department"],
                                                     "csv": {"encoding": "utf8"}})
    with pytest.raises(SourceError) as err:
        ingest(cfg, tmp_path / "out")
    assert str(err.value).startswith(f"{tmp_path / 'items.csv'}: cannot be read as csv: invalid utf-8")
    assert "encoding: utf8-lossy" in str(err.value)


def test_attribute_table_missing_column_names_it(tmp_path):
    write(tmp_path / "t.csv", HEADER, "1,c1,a,1,1.0,2023-01-01 10:00")
    write(tmp_path / "items.csv", "sku,department", "a,fruit")
    cfg = source(tmp_path, "t.csv", item_attributes={"path": "items.csv", "key": "sku", "columns": ["brand"]})
    with pytest.raises(SourceError, match=r"items\.csv: missing column\(s\) 'brand'") as err:
        ingest(cfg, tmp_path / "out")
    assert "`key:` and `columns:` in its entry under `item_attributes:` of the source config" in str(err.value)


def test_attribute_table_with_another_separator_points_at_its_own_csv_options(tmp_path):
    write(tmp_path / "t.csv", HEADER, "1,c1,a,1,1.0,2023-01-01 10:00")
    write(tmp_path / "items.csv", "sku;department", "a;fruit")
    cfg = source(tmp_path, "t.csv", item_attributes={"path": "items.csv", "key": "sku", "columns": ["department"]})
    with pytest.raises(SourceError, match="set `csv: {separator: ';'}` in its entry under `item_attributes:`"):
        ingest(cfg, tmp_path / "out")
    cfg = source(tmp_path, "t.csv", item_attributes={"path": "items.csv", "key": "sku", "columns": ["department"],
                                                     "csv": {"separator": ";"}})
    ingest(cfg, tmp_path / "out")


# ------------------------------------------------------------------------------------------ order only

def test_order_only_source_numbers_baskets_per_customer(tmp_path):
    write(tmp_path / "history.csv", "cust,order,item",
          "u1,1,a", "u1,1,b", "u2,5,a", "u1,3,c", "u1,2,d", "u2,x,b", "u2,7,", "u2,9,c")
    write(tmp_path / "future.csv", "cust,order,item",   # order numbers restart: these come after history
          "u1,1,e", "u2,1,f", "u2,1,g")
    cfg = SourceConfig(name="o", files=[{"path": "history.csv"}, {"path": "future.csv"}],
                       columns={"customer_id": "cust", "item_id": "item"}, order_column="order", base_dir=tmp_path)
    report, events, quarantine = run(cfg, tmp_path / "out")
    # u2's basket 7 has only a row without an item: it is quarantined and leaves no gap in basket_seq
    assert reasons(quarantine) == {"bad_order": [("history.csv", 7)], "missing_item": [("history.csv", 8)]}
    got = {(c, i): s for c, i, s in events.select("customer_id", "item_id", "basket_seq").iter_rows()}
    assert got == {("u1", "a"): 0, ("u1", "b"): 0, ("u1", "d"): 1, ("u1", "c"): 2, ("u1", "e"): 3,
                   ("u2", "a"): 0, ("u2", "c"): 1, ("u2", "f"): 2, ("u2", "g"): 2}
    assert events["event_time"].null_count() == events.height
    per_customer = events.group_by("customer_id").agg(pl.col("basket_id").n_unique(), pl.col("basket_seq").max())
    assert all(n == m + 1 for n, m in per_customer.select("basket_id", "basket_seq").iter_rows())


def test_basket_json_gives_order_from_the_file(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({"train": {"7": [["a", "b"], ["c"]]}, "test": {"8": [["d"]]}}))
    cfg = SourceConfig(name="j", files=[{"path": "b.json"}], columns={"customer_id": "customer", "item_id": "item"},
                       order_column="basket_index", extra_columns=["split"], base_dir=tmp_path)
    _, events, _ = run(cfg, tmp_path / "out")
    assert events.select("customer_id", "item_id", "basket_seq", "split").rows() == [
        ("7", "a", 0, "train"), ("7", "b", 0, "train"), ("7", "c", 1, "train"), ("8", "d", 0, "test")]


# ------------------------------------------------------------------------------------- parquet, prices

def test_parquet_input_with_typed_columns(tmp_path):
    pl.DataFrame({
        "household": pl.Series([11, 11, 12, 13], dtype=pl.Int64),
        "product": pl.Series([100, 101, 100, 102], dtype=pl.Int32),
        "ts": [datetime(2023, 6, 1, 8, 0), datetime(2023, 6, 1, 8, 0), datetime(2023, 12, 24, 18, 30), None],
        "qty": pl.Series([2, 1, -1, 1], dtype=pl.Int16),
        "price": [0.99, float("nan"), 4.5, 1.0],
        "store": ["s1", "s1", "s2", "s2"],
    }).write_parquet(tmp_path / "t.parquet")
    cfg = SourceConfig(name="p", files=[{"path": "t.parquet"}], base_dir=tmp_path, extra_columns=["store"],
                       columns={"customer_id": "household", "item_id": "product", "event_time": "ts",
                                "quantity": "qty", "unit_price": "price"},
                       time={"timezone": "Europe/Berlin"}, validation={"not_after": "2030-01-01T00:00:00Z"})
    report, events, quarantine = run(cfg, tmp_path / "out")
    assert reasons(quarantine) == {"non_finite": [("t.parquet", 2)], "unparsable_time": [("t.parquet", 4)]}
    assert events.schema["customer_id"] == pl.String and events.schema["quantity"] == pl.Float64
    assert events.select("customer_id", "item_id", "event_time", "quantity", "event_type", "store").rows() == [
        ("11", "100", utc(2023, 6, 1, 6), 2.0, "purchase", "s1"),
        ("12", "100", utc(2023, 12, 24, 17, 30), 1.0, "return", "s2")]
    assert quarantine.sort("source_row").select("household", "price", "ts").rows() == [
        ("11", "NaN", "2023-06-01 08:00:00.000000"), ("13", "1.0", None)]  # raw values, as text


def test_parquet_dates_and_aware_datetimes(tmp_path):
    pl.DataFrame({"c": ["a", "b"], "i": ["x", "y"], "d": [date(2023, 3, 26), date(2023, 7, 1)],
                  "t": [datetime(2023, 3, 26, 0, 0, tzinfo=timezone.utc), datetime(2023, 7, 1, 12, 0, tzinfo=timezone.utc)]}
                 ).write_parquet(tmp_path / "t.parquet")
    base = dict(name="p", files=[{"path": "t.parquet"}], base_dir=tmp_path, time={"timezone": "Europe/Paris"},
                validation={"not_after": "2030-01-01T00:00:00Z"})
    _, by_date, _ = run(SourceConfig(columns={"customer_id": "c", "item_id": "i", "event_time": "d"}, **base), tmp_path / "o1")
    assert by_date["event_time"].to_list() == [utc(2023, 3, 25, 23), utc(2023, 6, 30, 22)]  # local midnight
    _, aware, _ = run(SourceConfig(columns={"customer_id": "c", "item_id": "i", "event_time": "t"}, **base), tmp_path / "o2")
    assert aware["event_time"].to_list() == [utc(2023, 3, 26), utc(2023, 7, 1, 12)]  # already UTC: unchanged


def test_parquet_date_on_a_day_without_local_midnight(tmp_path):
    # Sao Paulo moved its clocks from 00:00 to 01:00 on 2018-11-04: that day starts at 01:00 local time
    pl.DataFrame({"c": ["a", "a"], "i": ["x", "y"], "d": [date(2018, 11, 4), date(2018, 11, 5)]}).write_parquet(tmp_path / "t.parquet")
    cfg = SourceConfig(name="p", files=[{"path": "t.parquet"}], base_dir=tmp_path, time={"timezone": "America/Sao_Paulo"},
                       columns={"customer_id": "c", "item_id": "i", "event_time": "d"})
    report, events, _ = run(cfg, tmp_path / "out")
    assert report.accepted == 2
    assert events["event_time"].to_list() == [utc(2018, 11, 4, 3), utc(2018, 11, 5, 2)]


def test_unit_price_derived_from_amount_and_quantity(tmp_path):
    write(tmp_path / "t.csv", "invoice,customer,item,quantity,value,date",
          "1,c1,a,4,10.00,2023-01-01 10:00",
          "2,c1,b,-2,-5.00,2023-01-02 10:00",    # a return: both made positive
          "3,c1,c,0,1.00,2023-01-03 10:00",      # no quantity to divide by: no unit price
          '4,c1,d,3,"1,200.00",2023-01-04 10:00')
    columns = {k: v for k, v in COLUMNS.items() if k != "unit_price"} | {"amount": "value"}
    _, events, _ = run(source(tmp_path, "t.csv", columns=columns), tmp_path / "out")
    assert events["unit_price"].to_list() == [2.5, 2.5, None, 400.0]
    assert events["amount"].to_list() == [10.0, 5.0, 1.0, 1200.0]
    assert events["event_type"].to_list() == ["purchase", "return", "purchase", "purchase"]


def test_amount_derived_from_quantity_and_price(tmp_path):
    write(tmp_path / "t.csv", HEADER, "1,c1,a,3,1.25,2023-01-01 10:00")
    _, events, _ = run(source(tmp_path, "t.csv"), tmp_path / "out")
    assert events.select("quantity", "unit_price", "amount").row(0) == (3.0, 1.25, 3.75)


def test_constants_and_extra_columns(tmp_path):
    write(tmp_path / "a.csv", HEADER + ",store", "1,c1,a,1,1.0,2023-01-01 10:00,s9")
    cfg = source(tmp_path, "a.csv", constants={"channel": "web", "actor": "machine"}, extra_columns=["store"])
    cfg.files[0].constants["region"] = "north"
    _, events, _ = run(cfg, tmp_path / "out")
    assert events.select("channel", "actor", "store", "region").row(0) == ("web", "machine", "s9", "north")


def test_whitespace_file_line_numbers(tmp_path):
    (tmp_path / "w.txt").write_text(" id  date  n  value\n 01 19970101 1 11.77\n\n 02 1997013x 2 5.00\n 03 19970105 1 3\n")
    cfg = SourceConfig(name="w", files=[{"path": "w.txt"}], base_dir=tmp_path, constants={"item_id": "cd"},
                       columns={"customer_id": "id", "event_time": "date", "quantity": "n", "amount": "value"},
                       time={"format": "%Y%m%d"}, validation={"not_after": "2030-01-01T00:00:00Z"})
    report, events, quarantine = run(cfg, tmp_path / "out")
    assert events.select("customer_id", "unit_price").rows() == [("01", 11.77), ("03", 3.0)]
    assert reasons(quarantine) == {"unparsable_time": [("w.txt", 3), ("w.txt", 4)]}  # blank line 3, bad date line 4


def test_headerless_tsv_of_messages(tmp_path):
    (tmp_path / "m.tsv").write_text('Great service!\t1,7\tm1\n"quoted" text\t0\tm2\n\t3\tm3\nhello\t2\t\n')
    cfg = SourceConfig(name="m", files=[{"path": "m.tsv", "constants": {"split": "train"}}], base_dir=tmp_path,
                       format="csv", csv={"separator": "\t", "has_header": False, "quote_char": None,
                                          "column_names": ["text", "labels", "comment_id"]},
                       columns={"customer_id": "comment_id", "basket_id": "comment_id", "text": "text"},
                       constants={"event_type": "message", "actor": "human"}, extra_columns=["labels"])
    report, events, quarantine = run(cfg, tmp_path / "out")
    assert quarantine.height == 0 and report.guest_rows == 1  # line 4 has no comment id
    assert events.select("customer_id", "text", "labels", "split", "event_type").rows() == [
        ("m1", "Great service!", "1,7", "train", "message"), ("m2", '"quoted" text', "0", "train", "message"),
        ("m3", None, "3", "train", "message"), (None, "hello", "2", "train", "message")]
    assert events["item_id"].null_count() == 4 and events["event_time"].null_count() == 4


def test_headerless_csv_line_numbers_start_at_one(tmp_path):
    write(tmp_path / "t.csv", "1,c1,a,1,1.0,2023-01-01 10:00", "2,c1,a,x,1.0,2023-01-01 10:00")
    cfg = source(tmp_path, "t.csv", csv={"has_header": False, "column_names": HEADER.split(",")})
    _, _, quarantine = run(cfg, tmp_path / "out")
    assert reasons(quarantine) == {"bad_quantity": [("t.csv", 2)]}


# ------------------------------------------------------------------------------------------- atomicity

def test_failing_ingest_leaves_the_previous_output_intact(tmp_path):
    out = tmp_path / "out"
    write(tmp_path / "t.csv", HEADER, "1,c1,a,1,1.0,2023-01-01 10:00", "2,c2,b,1,2.0,2023-01-02 10:00")
    first, _, _ = run(source(tmp_path, "t.csv"), out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # fails while the rows are streamed (after the temporary folder was made): not UTF-8 under strict decoding
    (tmp_path / "t.csv").write_bytes(f"{HEADER}\n1,Jos\xe9,a,1,1.0,2023-01-01 10:00\n".encode("latin-1"))
    with pytest.raises(SourceError, match="not UTF-8"):
        ingest(source(tmp_path, "t.csv", csv={"encoding": "utf8"}), out)
    # fails before reading: a column is missing
    write(tmp_path / "t.csv", "invoice,customer,item,quantity,date", "1,c1,a,1,2023-01-01 10:00")
    with pytest.raises(SourceError, match="'price' \\(for unit_price\\)"):
        ingest(source(tmp_path, "t.csv"), out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folders left
    assert read_report(out)["accepted"] == first.accepted == 2


def test_second_ingest_replaces_the_output(tmp_path):
    out = tmp_path / "out"
    write(tmp_path / "t.csv", HEADER, "1,c1,a,1,1.0,2023-01-01 10:00")
    run(source(tmp_path, "t.csv", item_attributes=None), out)
    write(tmp_path / "t.csv", HEADER, "1,c1,a,1,1.0,2023-01-01 10:00", "2,c2,b,1,2.0,2023-01-02 10:00")
    report, events, _ = run(source(tmp_path, "t.csv"), out)
    assert events.height == report.accepted == 2
    assert read_report(out)["accepted"] == 2


# -------------------------------------------------------------------------------------------- real data

@pytest.mark.skipif(not (SHARED_DATA / "cdnow" / "CDNOW_master.txt").is_file(),
                    reason=f"CDNOW master file not found under {SHARED_DATA} (the shared data folder is absent)")
def test_cdnow_ingests_every_row(tmp_path, monkeypatch):
    monkeypatch.setenv("TWINS_DATA_DIR", str(SHARED_DATA))
    report = ingest(load_source(REPO / "configs" / "sources" / "cdnow.yaml"), tmp_path / "cdnow")
    assert (report.rows_in, report.accepted, report.quarantined) == (69_659, 69_659, {})
    assert report.customers == 23_570 and report.guest_rows == 0
