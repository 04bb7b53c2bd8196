"""Issue 22 item 1: agent commerce events in, by config (JSON lines in the UCP/ACP shapes -> canonical events)."""

import json
import shutil
from importlib import resources
from pathlib import Path

import jsonschema_rs
import polars as pl
import pytest

from twins.data import jsonl
from twins.data.ingest import ingest
from twins.data.source import load_source

DATA = Path(__file__).parent / "data" / "commerce"
ROOT = Path(__file__).parent.parent


def _lines(name: str) -> list[dict]:
    return [json.loads(x) for x in (DATA / name).read_text().splitlines()]


def test_ucp_fixtures_validate_against_ucp_sdk():
    from ucp_sdk.models.schemas.shopping.order import Order

    lines = _lines("ucp_orders.jsonl")
    assert len(lines) == 7
    for line in lines:
        Order.model_validate(line["order"])


def test_acp_fixtures_validate_against_the_schema_subset():
    schema = json.loads(resources.files("twins.commerce").joinpath("schemas/acp_checkout_2025-09-29.json").read_text())
    session = jsonschema_rs.validator_for(schema)
    cancel = jsonschema_rs.validator_for({**schema, "$ref": "#/$defs/CancelRequest"})
    for line in _lines("acp_checkouts.jsonl"):
        session.validate(line["checkout_session"])
        if "request" in line:
            cancel.validate(line["request"])
    bad = dict(_lines("acp_checkouts.jsonl")[-1]["request"], intent_trace={"reason_code": "too_pricey"})
    assert not cancel.is_valid(bad)


def test_jsonl_reader_explodes_filters_and_flags(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": {"b": [{"c": 1}, {"c": 2}]}, "k": "x", "p": "uri"}\nnot json\n{"a": {"b": []}, "k": "x"}\n'
                 '{"a": {"b": [{"c": 3}]}, "k": "y"}\n')
    opts = jsonl.JsonLines(explode=["a.b"], where={"k": "x"}, present_as={"who": {"path": "p", "present": "m",
                                                                                  "absent": "u"}})
    rows = jsonl.read(f, opts, "_r")
    assert rows.filter(pl.col("_r").is_null())["a.b.c"].to_list() == ["1", "2"]
    assert rows.filter(pl.col("_r").is_null())["who"].to_list() == ["m", "m"]
    assert rows["_r"].to_list().count("bad_json") == 1


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TWINS_HOME", str(tmp_path))
    for proto, name in [("ucp", "ucp_orders.jsonl"), ("acp", "acp_checkouts.jsonl")]:
        (tmp_path / "commerce" / proto).mkdir(parents=True)
        shutil.copy(DATA / name, tmp_path / "commerce" / proto / name)
    return tmp_path


def test_ucp_orders_config(home):
    report = ingest(load_source(ROOT / "configs/sources/ucp_orders.yaml"), home / "ucp")
    assert report.rows_in == report.accepted == 9
    ev = pl.read_parquet(home / "ucp" / "events.parquet")
    buys = ev.filter(pl.col("event_type") == "purchase")
    assert buys.height == 8  # the order update repeats the lines: not a purchase again
    assert set(buys.filter(pl.col("customer_id") == "m-001")["actor"]) == {"machine"}
    assert set(buys.filter(pl.col("customer_id") == "p-007")["actor"]) == {"unknown"}
    ret = ev.filter(pl.col("event_type") == "return").row(0, named=True)
    assert (ret["item_id"], ret["quantity"], ret["amount"]) == ("toner-k", 1.0, 2350.0)


def test_acp_checkouts_config(home):
    report = ingest(load_source(ROOT / "configs/sources/acp_checkouts.yaml"), home / "acp")
    assert report.rows_in == report.accepted == 5
    ev = pl.read_parquet(home / "acp" / "events.parquet")
    assert ev.filter(pl.col("event_type") == "purchase")["amount"].to_list() == [6800.0]
    counter = ev.filter(pl.col("text") == "counter").row(0, named=True)
    assert (counter["event_type"], counter["unit_price"], counter["actor"]) == ("message", 1700.0, "machine")
    cancel = ev.filter(pl.col("basket_id") == "cs_2").row(0, named=True)
    assert (cancel["event_type"], cancel["text"], cancel["actor"]) == ("message", "price_sensitivity", "unknown")
