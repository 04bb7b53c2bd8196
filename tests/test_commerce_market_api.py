"""Issue 22 item 4: the agent market's buyers buy through the seller API's shapes. The same market against the same
twin-free policy, once in process (the benchmark's path) and once through ``twins sell``'s app (checkout create,
counters as checkout updates, complete or cancel), ends with the same win rate, retained share and rounds; margin
and revenue agree within 1e-5 relative, because the API carries prices in whole minor units (1e-4 of a market price
unit here, ``ApiChannel.minor_units``) and the in-process path in floats."""

import json

import pytest
from fastapi.testclient import TestClient

from twins.commerce.app import SellSettings, create_app
from twins.commerce.policies import AcceptAboveCost, UniformDiscount
from twins.commerce.quote import Quoter
from twins.sim.agent_market import MarketParams, simulate
from twins.sim.market_sellers import ApiChannel

PARAMS = MarketParams(n_customers=150, days=45, seed=4)
OPEN = SellSettings(agent_rate=1e9, agent_burst=10 ** 9)  # the market asks faster than an agent's default limit


@pytest.mark.parametrize("policy", [UniformDiscount, AcceptAboveCost], ids=["uniform_discount", "accept_above_cost"])
def test_market_through_the_api_matches_the_array_path(tmp_path, policy):
    clients = []

    def seller(catalog):
        clients.append(TestClient(create_app(catalog, Quoter(None, policy(), policy()), tmp_path, OPEN)))
        return clients[-1].__enter__()

    array = simulate(PARAMS, policy())
    try:
        api = simulate(PARAMS, ApiChannel(seller))
    finally:
        for client in clients:
            client.__exit__(None, None, None)
    a, b = array.metrics, api.metrics
    assert 0 < a["win_rate"] < 1
    for key in ("win_rate", "retained", "share", "rounds", "fill_rate", "service_requests"):
        assert b[key] == a[key], key
    for key in ("margin", "revenue"):
        assert b[key] == pytest.approx(a[key], rel=1e-5), key
    # the seller heard every quote, counter, order and cancellation through the protocol's events
    events = [json.loads(x)["event"] for f in (tmp_path / "commerce" / "acp").glob("*.jsonl")
              for x in f.read_text().splitlines()]
    orders = sum(1 for f in (tmp_path / "commerce" / "ucp").glob("*.jsonl") for _ in f.read_text().splitlines())
    wins = round(a["win_rate"] * sum(1 for e in events if e == "checkout_session.created"))
    assert orders == events.count("checkout_session.completed") == wins > 0
    assert events.count("checkout_session.canceled") > 0
    if policy is AcceptAboveCost:
        assert a["rounds"] > 0 and events.count("checkout_session.updated") > 0
