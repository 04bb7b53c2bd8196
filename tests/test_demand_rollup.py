"""Demand roll-up: quantile CDFs, expected orders per day, product sums, aggregate forecasts and errors, all
checked against hand-computed values; and the simulator's shocks (price step, late fleet)."""

import numpy as np
import pytest

from twins.models.demand_rollup import (
    demand_errors,
    expected_orders,
    exponential_smoothing,
    moving_average,
    piecewise_cdf,
    quantile_knots,
    roll_up,
    seasonal_naive,
    weekday_average,
)
from twins.sim import load_config, simulate


def a(*v):
    return np.array(v, dtype=float)


def test_knots_and_cdf():
    knots = quantile_knots(a(2), a(4), a(8))
    np.testing.assert_allclose(knots[0], [1.5, 2, 4, 8, 9], atol=1e-6)  # tails: 0.1 mass at the adjacent density
    cdf = piecewise_cdf(a(0, 2, 4, 6, 10, 12)[None, :], knots)
    np.testing.assert_allclose(cdf[0], [0, 0.1, 0.5, 0.7, 1, 1], atol=1e-6)


def test_expected_orders_spreads_the_first_order_over_days():
    got = expected_orders(a(1), a(2), a(3), a(np.nan), days=5)  # knots 0.75, 1, 2, 3, 3.25
    np.testing.assert_allclose(got[0], [0.1, 0.4, 0.4, 0.1, 0], atol=1e-6)


def test_expected_orders_clips_at_the_origin_and_renews():
    overdue = expected_orders(a(0.1), a(0.9), a(1.7), a(np.inf), days=3)  # lower tail clipped to [0, 0.1]
    np.testing.assert_allclose(overdue[0], [0.55, 0.45, 0], atol=1e-6)
    point = expected_orders(a(2.5, 2.5), a(2.5, 2.5), a(2.5, 2.5), a(2, np.nan), days=7)
    np.testing.assert_allclose(point, [[0, 0, 1, 0, 1, 0, 1], [0, 0, 1, 0, 0, 0, 0]], atol=1e-6)


def test_roll_up_sums_expected_units_by_product():
    orders = np.array([[1, 0], [0.5, 0.5], [0, 1]])
    got = roll_up(np.array([0, 0, 1]), orders, a(10, 4, 3), n_products=3)
    np.testing.assert_allclose(got, [[12, 2], [0, 3], [0, 0]])


def test_aggregate_forecasts():
    y = np.arange(14, dtype=float)[None, :]
    np.testing.assert_allclose(seasonal_naive(y, 9)[0], [7, 8, 9, 10, 11, 12, 13, 7, 8])
    np.testing.assert_allclose(moving_average(y, 2, window=4)[0], [11.5, 11.5])
    np.testing.assert_allclose(weekday_average(y, 8, weeks=2)[0], [3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5, 3.5])
    np.testing.assert_allclose(exponential_smoothing(a(0, 2, 4)[None, :], 2, alpha=0.5)[0], [2.5, 2.5])


def test_demand_errors():
    got = demand_errors(np.array([[1.0, 2.0], [3.0, 4.0]]), np.full((2, 2), 2.0))
    assert got == pytest.approx({"mae": 1.0, "wape": 0.5, "total_wape": 0.5, "bias": 0.25})


def test_sim_shocks_price_step_and_late_fleet():
    cfg = load_config("configs/sim/market.yaml", ["n_machines=300", "humans.n=0", "days=40", "horizon_days=0",
                                                 "shocks.fleet_machines=50", "shocks.fleet_day=20",
                                                 "shocks.price_day=30", "shocks.price_factor=0.5"])
    market = simulate(cfg)
    lp, promo = market.list_price, 1 - cfg.products.promo_discount
    assert (market.offers[30:, 1] <= lp * 0.95 * 0.5 + 0.01).all() and (market.offers[:30, 1] >= lp * 0.95 * promo - 0.01).all()
    o, tl = market.log.orders, market.log.telemetry
    fleet = o["machine"] >= 250
    assert fleet.any() and o["day"][fleet].min() == 20 and not ((tl["machine"] >= 250) & (tl["day"] < 20)).any()
    first = {m: d for m, d in zip(o["machine"][fleet][::-1], o["day"][fleet][::-1])}
    assert np.mean([d == 20 for d in first.values()]) > 0.5  # empty on arrival: most order at once
