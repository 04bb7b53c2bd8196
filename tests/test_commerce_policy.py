"""Issue 22 item 3: the twin policy probes upward only the buyers its twin classes as bound (machines that took a
price, never countered, never left), accepting their counter at once, and earns more from bound machines for it."""

import numpy as np

from twins.commerce.policies import COL, FEATURES, TwinPolicy
from twins.sim.agent_market import MarketParams, simulate


def _X(n: int) -> np.ndarray:
    X = np.full((n, len(FEATURES)), np.nan)
    X[:, COL["list_price"]], X[:, COL["unit_cost"]], X[:, COL["quantity"]] = 10.0, 7.0, 2.0
    X[:, COL["agent_declared"]], X[:, COL["counter_ratio"]] = 1.0, 0.0
    X[:, COL["accepted_price"]], X[:, COL["lost_share"]], X[:, COL["machine_likeness"]] = 9.5, 0.0, 0.95
    return X


def test_only_bound_looking_buyers_are_probed():
    X = _X(4)
    X[1, COL["lost_share"]] = 0.2                      # left us once: retention guard
    X[2, COL["reservation_price"]] = 9.8               # countered before: its reservation is known
    X[3, COL["agent_declared"]], X[3, COL["machine_likeness"]] = 0.0, 0.6   # a person
    offer = TwinPolicy().predict(X)
    price, floor, rounds = offer[:, 0], offer[:, 1], offer[:, 2]
    assert price[0] > 9.5 and floor[0] == 9.5 and rounds[0] == 1
    assert price[1] == 9.5 and rounds[1] == 2
    assert price[2] == 9.5 and rounds[2] == 2          # min(accepted, reservation): never above what it revealed
    assert price[3] == 9.5 and rounds[3] == 2
    assert np.all(TwinPolicy(bound_probe=0).predict(X)[:, 0] == 9.5)


def test_probing_earns_more_from_bound_machines_at_equal_retention():
    params = MarketParams(n_customers=2000, days=200, seed=5)
    probed, plain = simulate(params, TwinPolicy()), simulate(params, TwinPolicy(bound_probe=0))
    assert probed.by_kind["bound"]["margin"] > 1.1 * plain.by_kind["bound"]["margin"]
    assert probed.metrics["margin"] > plain.metrics["margin"]
    assert probed.metrics["retained"] >= plain.metrics["retained"] - 0.02
