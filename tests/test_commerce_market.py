"""Issue 22 items 3-4: seller policies (scikit-learn contract), the shared negotiation and the agent market."""

import numpy as np
from sklearn.base import clone

from twins.commerce import negotiation
from twins.commerce.policies import COL, FEATURES, POLICIES, BanditPolicy, TwinPolicy
from twins.sim.agent_market import KINDS, MarketParams, simulate


def _X(n=4):
    X = np.full((n, len(FEATURES)), np.nan)
    X[:, COL["list_price"]], X[:, COL["unit_cost"]], X[:, COL["quantity"]] = 10.0, 7.0, 2.0
    X[:, COL["agent_declared"]], X[:, COL["counter_ratio"]] = 1.0, 0.0
    return X


def test_policies_follow_the_sklearn_contract():
    for name, cls in POLICIES.items():
        est = clone(cls())
        y = np.column_stack([np.zeros(4), np.ones(4)]) if name == "bandit" else None
        offer = est.fit(_X(), y).predict(_X())
        assert offer.shape == (4, 4) and np.all(offer[:, 1] <= offer[:, 0]), name


def test_twin_policy_prices_under_a_revealed_reservation():
    X = _X(2)
    X[0, COL["reservation_price"]] = 11.5
    X[0, COL["accepted_price"]] = 11.0
    price = TwinPolicy().predict(X)[:, 0]
    assert 11.0 <= price[0] <= 11.5 and price[1] == 9.5


def test_negotiation_concedes_then_declines():
    p, f, r = np.array([10.0, 10.0]), np.array([8.0, 8.0]), np.array([2.0, 2.0])
    decision, price = negotiation.respond(p, f, r, 1, np.array([9.5, 7.0]))
    assert decision.tolist() == [negotiation.ACCEPT, negotiation.COUNTER] and price.tolist() == [9.5, 9.0]
    decision, _ = negotiation.respond(p, f, r, 2, np.array([7.0, 8.0]))
    assert decision.tolist() == [negotiation.DECLINE, negotiation.ACCEPT]


def test_market_is_seeded_and_reports_every_kind():
    params = MarketParams(n_customers=800, days=120, seed=3)
    a, b = simulate(params, TwinPolicy()), simulate(params, TwinPolicy())
    assert a.metrics == b.metrics and set(a.by_kind) == set(KINDS)
    assert 0 < a.metrics["win_rate"] <= 1 and 0 < a.metrics["fill_rate"] <= 1


def test_twin_policy_beats_fixed_price_and_bandit_learns():
    params = MarketParams(n_customers=1500, days=150, seed=5)
    twin, fixed = simulate(params, TwinPolicy()).metrics, simulate(params, POLICIES["fixed_price"]()).metrics
    assert twin["margin"] > fixed["margin"]
    bandit = BanditPolicy()
    simulate(params, bandit)
    assert bandit.coef_.shape == (len(bandit.arms), 4)
