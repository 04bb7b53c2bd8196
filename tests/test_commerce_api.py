"""Issue 22 item 2: the agent-facing seller API (`twins sell`): catalog, checkout sessions with a quote from the
buyer's twin and negotiation, per-agent limits, conformance with the protocols' schemas, and a checkout that the
next `twins ingest` reads and that changes the buyer's machine twin (end to end through the CLI)."""

import json
import shutil
from importlib import resources
from pathlib import Path

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from twins.cli import app as cli
from twins.commerce.app import SellSettings, create_app
from twins.commerce.catalog import load_catalog
from twins.commerce.quote import MachineTwins, Quoter
from twins.commerce.ratelimit import Buckets

DATA = Path(__file__).parent / "data" / "commerce"
ROOT = Path(__file__).parent.parent
AGENT = {"UCP-Agent": 'profile="https://agents.example/replenisher/profile.json"'}


def _acp_validator():
    schema = json.loads(resources.files("twins.commerce").joinpath("schemas/acp_checkout_2025-09-29.json").read_text())
    return jsonschema_rs.validator_for(schema)


def _client(home: Path, **settings) -> TestClient:
    quoter = Quoter(MachineTwins(home / "store", "ucp_orders"))
    return TestClient(create_app(load_catalog(DATA / "catalog.yaml"), quoter, home, SellSettings(**settings)))


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TWINS_HOME", str(tmp_path))
    (tmp_path / "commerce" / "ucp").mkdir(parents=True)
    shutil.copy(DATA / "ucp_orders.jsonl", tmp_path / "commerce" / "ucp" / "history.jsonl")
    return tmp_path


def _twin(home: Path, twin_id: str) -> dict:
    out = _cli("twin", "show", twin_id, "--source", "ucp_orders", "--kind", "machine", "--json")
    return json.loads(out[out.index("{"):])


def test_catalog_search_and_lookup(home):
    with _client(home) as c:
        found = c.post("/catalog/search", json={"query": "toner", "quantity": 3,
                                                "filters": {"compatible_with": "printer-x1", "in_stock": True}}).json()
        assert [p["id"] for p in found["products"]] == ["toner-k"]
        assert found["products"][0]["unit_price"] == 2350 and "unit_cost" not in found["products"][0]
        cheap = c.post("/catalog/search", json={"filters": {"max_unit_price": 1000}}).json()["products"]
        assert [p["id"] for p in cheap] == ["paper-a4"]
        looked = c.post("/catalog/lookup", json={"ids": ["ink-c", "nope"]}).json()
        assert [p["id"] for p in looked["products"]] == ["ink-c"] and looked["missing"] == ["nope"]
        assert c.get("/catalog/items/nope").status_code == 404
        assert c.get("/.well-known/ucp").json()["endpoints"]["checkout_sessions"] == "/checkout_sessions"


def test_quote_negotiation_and_schema_conformance(home):
    acp = _acp_validator()
    with _client(home) as c:
        made = c.post("/checkout_sessions", json={"buyer": {"customer_id": "new-1"},
                                                  "items": [{"id": "ink-c", "quantity": 4}]}, headers=AGENT)
        assert made.status_code == 201
        s = made.json()
        acp.validate(s)
        quote = s["negotiation"][0]
        assert quote["decision"] == "open" and quote["unit_price"] < quote["list_unit_price"] == 1800
        first = c.post(f"/checkout_sessions/{s['id']}", json={"counter": {"suggested_unit_price": 1300}}).json()
        acp.validate(first)
        assert first["negotiation"][0]["decision"] == "counter"
        assert 1300 < first["negotiation"][0]["unit_price"] < quote["unit_price"]
        ok = c.post(f"/checkout_sessions/{s['id']}", json={"counter": {"requested_discount_percent": 7}}).json()
        assert ok["negotiation"][0]["decision"] == "accept" and ok["negotiation"][0]["unit_price"] == 1674
        done = c.post(f"/checkout_sessions/{s['id']}/complete", json={}).json()
        acp.validate(done)
        assert done["status"] == "completed" and done["totals"][-1]["amount"] == 4 * 1674
        assert c.post(f"/checkout_sessions/{s['id']}/complete", json={}).status_code == 409
        gone = c.post("/checkout_sessions", json={"buyer": {"customer_id": "u-9"}, "items": [{"id": "paper-a4", "quantity": 1}]}).json()
        cancel = c.post(f"/checkout_sessions/{gone['id']}/cancel",
                        json={"intent_trace": {"reason_code": "price_sensitivity"}})
        assert cancel.json()["status"] == "canceled"
        assert c.post(f"/checkout_sessions/{gone['id']}/cancel", json={"intent_trace": {"reason_code": "meh"}}).status_code == 422
        assert c.post("/checkout_sessions", json={"buyer": {"customer_id": "x"}, "items": [{"id": "nope", "quantity": 1}]}).status_code == 404
    from ucp_sdk.models.schemas.shopping.order import Order

    orders = [json.loads(x) for f in (home / "commerce" / "ucp").glob("2*.jsonl") for x in f.read_text().splitlines()]
    assert len(orders) == 1 and orders[0]["agent_profile"].startswith("https://agents.example")
    Order.model_validate(orders[0]["order"])
    events = [json.loads(x)["event"] for f in (home / "commerce" / "acp").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert events == ["checkout_session.created", "checkout_session.updated", "checkout_session.updated",
                      "checkout_session.completed", "checkout_session.created", "checkout_session.canceled"]


def test_openapi_documents_every_route(home):
    with _client(home) as c:
        spec = c.get("/openapi.json").json()
    for path in ("/catalog/search", "/catalog/lookup", "/checkout_sessions", "/checkout_sessions/{session_id}",
                 "/checkout_sessions/{session_id}/complete", "/checkout_sessions/{session_id}/cancel"):
        assert path in spec["paths"], path
    assert {"CheckoutSession", "Counter", "IntentTrace"} <= set(spec["components"]["schemas"])


def test_limits_per_agent_and_no_human_barrier(home):
    with _client(home, agent_rate=0.01, agent_burst=3) as c:
        bot = {"UCP-Agent": 'profile="https://a.example/bot"', "User-Agent": "python-httpx/0.28 (bot)"}
        codes = [c.post("/catalog/search", json={}, headers=bot).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = c.post("/catalog/search", json={}, headers=bot)
        assert "--agent-rate" in refused.json()["message"] and int(refused.headers["retry-after"]) >= 1
        other = {"UCP-Agent": 'profile="https://b.example/bot"'}
        assert c.post("/catalog/search", json={}, headers=other).status_code == 200  # each agent its own bucket
        assert c.get("/health").status_code == 200
    buckets = Buckets(rate=2.0, burst=1, max_agents=2)
    assert buckets.take("a", 0.0) == 0 and buckets.take("a", 0.1) == pytest.approx(0.4)
    assert buckets.take("a", 0.6) == 0
    buckets.take("b", 1.0), buckets.take("c", 1.0)
    assert "a" not in buckets._state and len(buckets._state) == 2


def test_body_cap(home):
    with _client(home) as c:
        big = {"buyer": {"customer_id": "x"}, "items": [{"id": "ink-c", "quantity": 1}], "pad": "x" * (5 << 20)}
        assert c.post("/checkout_sessions", json=big).status_code == 413


def test_checkout_is_ingested_and_changes_the_buyers_machine_twin(home):
    _cli("ingest", str(ROOT / "configs/sources/ucp_orders.yaml"), "--no-track")
    _cli("machines", str(ROOT / "configs/sources/ucp_orders.yaml"))
    before = _twin(home, "m-001/toner-k")
    with _client(home) as c:
        known = c.post("/checkout_sessions", json={"buyer": {"customer_id": "m-001"},
                                                   "items": [{"id": "toner-k", "quantity": 3}]}, headers=AGENT).json()
        unknown = c.post("/checkout_sessions", json={"buyer": {"customer_id": "m-999"},
                                                     "items": [{"id": "toner-k", "quantity": 3}]}, headers=AGENT).json()
        # the twin says the machine orders again within days: express delivery, unlike the unknown buyer's
        assert known["fulfillment_options"][0]["id"] == "express"
        assert unknown["fulfillment_options"][0]["id"] == "standard"
        done = c.post(f"/checkout_sessions/{known['id']}/complete", json={}).json()
        assert done["status"] == "completed"
    _cli("ingest", str(ROOT / "configs/sources/ucp_orders.yaml"), "--no-track")
    _cli("machines", str(ROOT / "configs/sources/ucp_orders.yaml"))
    after = _twin(home, "m-001/toner-k")
    assert after["n_orders"] == before["n_orders"] + 1
    assert after["last_order"] > before["last_order"] and after["rate"] != before["rate"]
    assert after["basis"] == "actor"  # the declared agent made it a machine's order
