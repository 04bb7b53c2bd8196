"""The replenishment features of a block of machines (``features_many``: their seasonal fits solved as stacks) are
the one-machine features, bit for bit, and the stacked seasonal fit is the one-problem fit's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

import twins.runtime.replenishment_features as rf
from twins.models.replenishment import histories
from twins.runtime.replenishment_features import (
    History,
    features,
    features_many,
    seasonal_fits,
)


def one_problem_fit(mid: np.ndarray, rates: np.ndarray, weights: np.ndarray, at: float) -> np.ndarray:
    """The seasonal fit as it was written for one problem before the stacked solver (the reference)."""
    w = 2 * np.pi * mid / rf.YEAR_DAYS
    X = np.column_stack([np.ones(len(mid)), np.sin(w), np.cos(w)])
    y = np.log(np.maximum(rates, 1e-9))
    ridge = np.diag([0.0, rf.SEASON_RIDGE, rf.SEASON_RIDGE]) * weights.mean() + 1e-9 * np.eye(3)
    ww = np.broadcast_to(weights, y.shape).copy()
    for _ in range(6):
        A = np.einsum("kn,ni,nj->kij", ww, X, X) + ridge
        beta = np.linalg.solve(A, np.einsum("kn,ni,kn->ki", ww, X, y)[..., None])[..., 0]
        resid = np.abs(y - beta @ X.T)
        scale = 1.4826 * np.median(resid, axis=-1, keepdims=True) + 1e-9
        before, ww = ww, weights * np.minimum(1.0, rf.HUBER_K * scale / np.maximum(resid, 1e-12))
        if np.array_equal(ww, before):
            break
    wa = 2 * np.pi * at / rf.YEAR_DAYS
    return np.exp(np.column_stack([beta @ np.array([1.0, np.sin(wa), np.cos(wa)]), beta[:, 0]]))


@pytest.fixture(scope="module")
def fleet() -> dict[str, History]:
    from twins.sim import MarketConfig, simulate

    market = simulate(MarketConfig(name="block", seed=7, n_machines=150, days=365, horizon_days=0, humans={"n": 5}))
    return histories(market.events())


def _pairs(fleet: dict[str, History]) -> tuple[list[History], list[float]]:
    last = max(float(h.t[-1]) for h in fleet.values())
    cuts = [last - d for d in (0.5, 40.0, 150.0, 290.0)]
    return [h for h in fleet.values() for _ in cuts], [c for _ in fleet for c in cuts]


def test_stacked_seasonal_fits_are_the_one_problem_fits_bit_for_bit():
    rng = np.random.default_rng(0)
    problems = []
    for _ in range(400):
        k, n = int(rng.integers(1, 3)), int(rng.choice([4, 5, 9, 23]))  # few shapes: many problems per stack
        mid = np.sort(rng.uniform(0, 700, n))
        rates = np.exp(0.3 * np.sin(2 * np.pi * mid / 365.25) + rng.normal(0, 0.2, (k, n)))
        rates[:, rng.integers(n)] *= rng.choice([1.0, 8.0, 1e-12])  # a burst or a breakdown now and then
        problems.append((mid, rates, rng.uniform(0.2, 2.0, n), float(mid[-1] + rng.uniform(1, 30))))
    got = seasonal_fits(problems)
    for p, g in zip(problems, got):
        assert g.shape == (p[1].shape[0], 2) and np.array_equal(g, one_problem_fit(*p))


def test_block_features_are_each_machines_own_bit_for_bit(fleet, monkeypatch):
    hs, cuts = _pairs(fleet)
    block = features_many(hs, cuts)
    assert len(block) == len(hs)
    rows = [x for x in block if x is not None]
    assert len(rows) > len(hs) // 2 and any(x is None for x in block)
    telemetry, weekdays = rf.FEATURES.index("has_telemetry"), rf.FEATURES.index("weekday_clock")
    assert {x[telemetry] for x in rows} == {0.0, 1.0} and {x[weekdays] for x in rows} == {0.0, 1.0}
    monkeypatch.setattr(rf, "BLOCK", 7)  # blocks that split the pairs anywhere
    assert all(_same(a, b) for a, b in zip(features_many(hs, cuts), block))
    # one machine at a time with the one-problem seasonal fit: the features as computed before the block path
    monkeypatch.setattr(rf, "seasonal_fits", lambda problems: [one_problem_fit(*p) for p in problems])
    assert all(_same(features(h, c), b) for h, c, b in zip(hs, cuts, block))


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
