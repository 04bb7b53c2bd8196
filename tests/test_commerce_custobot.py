"""Issue 22 item 4: custobots that speak only the seller API's shapes buy from `twins sell` and from a seller
they were not written for (a fixed-price seller behind the same API): search, compare, counter, complete or
cancel with an intent trace."""

import json
from pathlib import Path

from fastapi.testclient import TestClient

from twins.commerce.app import create_app
from twins.commerce.catalog import load_catalog
from twins.commerce.custobot import Custobot
from twins.commerce.policies import FixedPrice
from twins.commerce.quote import Quoter

CATALOG = Path(__file__).parent / "data" / "commerce" / "catalog.yaml"


def _seller(home: Path, policy=None) -> TestClient:
    quoter = Quoter(None, policy=policy, fallback=policy)
    return TestClient(create_app(load_catalog(CATALOG), quoter, home))


def test_a_bound_custobot_counters_at_its_reservation(tmp_path):
    with _seller(tmp_path) as twins_sell:
        # opening 2232 (list 2350 at 3 less 5 %); round 1 level 2186: a counter at 2200 is accepted
        took = Custobot("m-1", reservation=2200, kind="bound").buy([twins_sell], "toner", 3)
        assert (took["status"], took["unit_price"], took["rounds"]) == ("completed", 2200, 1)
        # at 2000 the seller concedes to its floor (2140) and then declines: the custobot cancels, saying why
        left = Custobot("m-2", reservation=2000, kind="bound").buy([twins_sell], "toner", 3)
        assert (left["status"], left["rounds"]) == ("canceled", 2)
    lines = [json.loads(x) for f in (tmp_path / "commerce" / "acp").glob("*.jsonl") for x in f.read_text().splitlines()]
    cancel = [x for x in lines if x["event"] == "checkout_session.canceled"]
    assert [x["request"]["intent_trace"]["reason_code"] for x in cancel] == ["price_sensitivity"]


def test_an_adaptable_custobot_compares_sellers(tmp_path):
    with _seller(tmp_path / "a", FixedPrice()) as fixed, _seller(tmp_path / "b") as twins_sell:
        cheapest = Custobot("m-3", reservation=2400).buy([fixed, twins_sell], "toner", 3)
        assert (cheapest["status"], cheapest["seller"], cheapest["unit_price"]) == ("completed", 1, 2232)
        first = Custobot("m-4", reservation=2400, first_proposal_bias=True).buy([fixed, twins_sell], "toner", 3)
        assert (first["seller"], first["unit_price"]) == (0, 2350)
    fixed_log = [json.loads(x) for f in (tmp_path / "a" / "commerce" / "acp").glob("*.jsonl")
                 for x in f.read_text().splitlines()]
    passed_over = [(x["customer_id"], x["request"]["intent_trace"]["reason_code"]) for x in fixed_log
                   if x["event"] == "checkout_session.canceled"]
    assert passed_over == [("m-3", "comparison")]  # the seller it did not take hears why
