"""The seller API remembers its own dealings with each buyer (twins.commerce.dealings), as the agent market's seller
does: a price taken without a counter is probed upward next time, a counter caps the price, a buyer that left is not
probed, and a restarted service rebuilds the record from its ledger."""

from pathlib import Path

from fastapi.testclient import TestClient

from twins.commerce.app import create_app
from twins.commerce.catalog import load_catalog
from twins.commerce.quote import Quoter

CATALOG = Path(__file__).parent / "data" / "commerce" / "catalog.yaml"
AGENT = {"UCP-Agent": 'profile="https://agents.example/r.json"'}


def _client(home: Path) -> TestClient:
    return TestClient(create_app(load_catalog(CATALOG), Quoter(None), home))


def _quote(c: TestClient, customer: str) -> dict:
    s = c.post("/checkout_sessions", json={"buyer": {"customer_id": customer}, "items": [{"id": "ink-c", "quantity": 2}]},
               headers=AGENT).json()
    return s


def test_dealings_drive_the_next_quote_and_survive_a_restart(tmp_path):
    with _client(tmp_path) as c:
        first = _quote(c, "m-1")
        assert first["negotiation"][0]["unit_price"] == 1710          # a first buyer: list 1800 less 5 %
        c.post(f"/checkout_sessions/{first['id']}/complete", json={})
        probe = _quote(c, "m-1")["negotiation"][0]
        assert probe["unit_price"] == round(1710 * 1.015) and probe["rounds_left"] == 1   # took 1710: asked more
        gone = _quote(c, "m-2")
        c.post(f"/checkout_sessions/{gone['id']}/cancel", json={"intent_trace": {"reason_code": "comparison"}})
        again = _quote(c, "m-2")
        c.post(f"/checkout_sessions/{again['id']}", json={"counter": {"suggested_unit_price": 1650}})
        c.post(f"/checkout_sessions/{again['id']}/complete", json={})
        capped = _quote(c, "m-2")["negotiation"][0]
        assert capped["unit_price"] == 1650 and capped["rounds_left"] == 2   # its counter caps it; left once: no probe
    with _client(tmp_path) as restarted:
        assert _quote(restarted, "m-1")["negotiation"][0]["unit_price"] == probe["unit_price"]
        assert _quote(restarted, "m-2")["negotiation"][0]["unit_price"] == 1650
