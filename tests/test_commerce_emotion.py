"""Issue 22 item 3: the twin seller reads the emotion of a buyer's messages. A buyer whose recent messages are
strongly negative (or getting more negative) is not probed upward and is opened one step down its concession
schedule; without emotion data every offer is the one the policy made before; `twins sell` reads the buyer's
emotion profile (twin kind `emotion`) from the store of its machine twins' source."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from twins.commerce.app import create_app
from twins.commerce.catalog import load_catalog
from twins.commerce.policies import COL, FEATURES, TwinPolicy
from twins.commerce.quote import MachineTwins, Quoter
from twins.sim.agent_market import MarketParams, simulate
from twins.twin.emotion import emotion_profiles
from twins.twin.store import TwinStore

DATA = Path(__file__).parent / "data" / "commerce"
AGENT = {"UCP-Agent": 'profile="https://agents.example/replenisher/profile.json"'}


def _bound_machines(n: int) -> np.ndarray:
    """Declared machines that took 9.5 of a list price 10 (cost 7), never countered nor left: probed upward."""
    X = np.full((n, len(FEATURES)), np.nan)
    X[:, COL["list_price"]], X[:, COL["unit_cost"]], X[:, COL["quantity"]] = 10.0, 7.0, 2.0
    X[:, COL["agent_declared"]], X[:, COL["counter_ratio"]] = 1.0, 0.0
    X[:, COL["accepted_price"]], X[:, COL["lost_share"]], X[:, COL["machine_likeness"]] = 9.5, 0.0, 0.95
    return X


def test_a_negative_buyer_is_not_probed_and_gets_the_next_concession_step():
    X = _bound_machines(5)
    X[1, COL["negative_share"]], X[1, COL["negative_trend"]] = 0.1, -0.2   # calm messages
    X[2, COL["negative_share"]] = 0.8                                      # strongly negative
    X[3, COL["negative_share"]], X[3, COL["negative_trend"]] = 0.3, 0.4    # getting worse
    X[4, COL["accepted_price"]], X[4, COL["negative_share"]] = np.nan, 0.9  # a first buyer, strongly negative
    price, floor, rounds, _ = TwinPolicy().predict(X).T
    # no emotion data and calm messages: probed 1.5 % over what it took, that price as the floor, one round
    for i in (0, 1):
        assert (price[i], floor[i], rounds[i]) == (pytest.approx(9.5 * 1.015), 9.5, 1)
    # upset: not probed; opened where its schedule (9.5 -> floor 7 + 0.7 * 3 = 9.1, 2 rounds) stands after one
    # counter, one round left to the floor
    for i in (2, 3, 4):
        assert (price[i], floor[i], rounds[i]) == (pytest.approx(9.3), pytest.approx(9.1), 1)
    off = TwinPolicy(upset_steps=0).predict(X)
    assert off[2, 0] == 9.5 and off[2, 2] == 2   # the step off: still not probed


def test_without_emotion_data_every_offer_is_unchanged():
    rng = np.random.default_rng(0)
    X = np.full((400, len(FEATURES)), np.nan)
    X[:, COL["list_price"]] = rng.uniform(5, 20, 400)
    X[:, COL["unit_cost"]] = X[:, COL["list_price"]] * rng.uniform(0.5, 0.9, 400)
    X[:, COL["quantity"]], X[:, COL["agent_declared"]], X[:, COL["counter_ratio"]] = 3.0, rng.random(400) < 0.5, 0.0
    for name, share in (("accepted_price", 0.6), ("reservation_price", 0.3), ("lost_share", 0.5),
                        ("machine_likeness", 0.8), ("days_to_next_order", 0.5)):
        known = rng.random(400) < share
        X[known, COL[name]] = (X[known, COL["list_price"]] * rng.uniform(0.8, 1.1, known.sum())
                               if name.endswith("price") else rng.uniform(0, 1 if name != "days_to_next_order" else 5,
                                                                          known.sum()))
    no_rule = TwinPolicy(upset_share=np.inf, upset_trend=np.inf, upset_steps=0)
    np.testing.assert_array_equal(TwinPolicy().predict(X), no_rule.predict(X))
    # the market has no messages: its results (BENCHMARKS.md) do not move
    params = MarketParams(n_customers=500, days=60, seed=3)
    assert simulate(params, TwinPolicy()).metrics == simulate(params, no_rule).metrics


def test_the_seller_reads_the_buyers_emotion_profile(tmp_path):
    start = datetime(2024, 3, 1, tzinfo=timezone.utc)
    scored = pl.DataFrame({
        "customer_id": ["m-upset", "m-upset", "m-calm"],
        "event_time": [start, start + timedelta(days=1), start],
        "text": ["late again!", "useless", "thanks"], "ekman_anger": [0.9, 0.8, 0.0], "ekman_joy": [0.0, 0.1, 0.9],
        "sentiment_negative": [0.9, 0.8, 0.1]}).with_columns(pl.col("event_time").dt.cast_time_unit("us"))
    profiles = emotion_profiles(scored, start + timedelta(days=2))
    assert profiles["recent_negative"].to_list() == [pytest.approx(0.1), pytest.approx(0.85)]
    TwinStore(tmp_path / "store").write(profiles, "ucp_orders", "emotion", start + timedelta(days=2))
    quoter = Quoter(MachineTwins(tmp_path / "store", "ucp_orders"))
    with TestClient(create_app(load_catalog(DATA / "catalog.yaml"), quoter, tmp_path)) as c:
        def quote(customer: str) -> dict:
            made = c.post("/checkout_sessions", json={"buyer": {"customer_id": customer},
                                                      "items": [{"id": "toner-k", "quantity": 3}]}, headers=AGENT)
            return made.json()["negotiation"][0]

        upset, calm, unknown = quote("m-upset"), quote("m-calm"), quote("m-999")
    # a first buyer's offer: list 2350 less 5 % (2232.5); the upset one opens a step down to the floor
    # (1650 + 0.7 * 700 = 2140): 2186.25, with one round left
    assert (calm["unit_price"], calm["rounds_left"]) == (unknown["unit_price"], unknown["rounds_left"]) == (2232, 2)
    assert (upset["unit_price"], upset["rounds_left"]) == (2186, 1)
