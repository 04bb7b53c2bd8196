"""Machine twins: estimators against hand-computed cases and against the simulator's ground truth."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from twins.sim import MarketConfig, simulate
from twins.twin.machine import (
    MachineTwinParams,
    arrival_lags,
    build_machine_twins,
    delay_cost_bounds,
    order_rate,
    periodic_review,
    stock_rate,
    usage_rate,
)

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def test_order_rate_is_the_ratio_of_quantities_after_the_first_to_the_elapsed_time():
    assert order_rate(np.array([0.0, 10, 20, 30]), np.array([5.0, 10, 10, 10])) == (1.0, 0.0)
    rate, se = order_rate(np.array([0.0, 10, 30]), np.array([1.0, 10, 30]))
    assert rate == pytest.approx(40 / 30)
    resid = np.array([10 - 40 / 3, 30 - 40 / 30 * 20])
    assert se == pytest.approx(np.sqrt(2 * np.sum(resid**2)) / 30)
    assert np.isnan(order_rate(np.array([3.0]), np.array([4.0]))[0])


def test_usage_and_stock_rates():
    t = np.arange(0, 29.0)
    rate, se = usage_rate(t, 2.5 * t + 7, block_days=7)
    assert rate == pytest.approx(2.5) and se == pytest.approx(0.0, abs=1e-12)
    # 10 on hand, 4 left after 6 days, an order of 12 placed on day 1 delivered on day 3 (lead 2)
    assert stock_rate(np.array([0.0, 6.0]), np.array([10.0, 4.0]), np.array([1.0]), np.array([12.0]), 2.0) == pytest.approx(3.0)


def test_arrival_lags_find_the_first_jump_of_half_the_order():
    t = np.arange(0, 10) + 0.95                         # end-of-day readings
    stock = np.array([9, 8, 7, 6, 26, 25, 24, 23, 22, 21.0])
    assert arrival_lags(np.array([1.2]), np.array([20.0]), t, stock).tolist() == [3.0]
    assert arrival_lags(np.array([5.2]), np.array([20.0]), t, stock).tolist() == []


def test_periodic_review_needs_gaps_on_one_grid():
    assert periodic_review(np.array([7.0, 7, 14, 7]), 0.9) == 7
    assert np.isnan(periodic_review(np.array([5.0, 9, 6, 11]), 0.9))


def test_delay_cost_bounds_intersect_every_choice():
    # chose 10 in 1 day over 8 in 5 days: lambda >= 0.5; chose 9 in 6 days over 11 in 1 day: lambda <= 0.4 -> empty
    assert np.isnan(delay_cost_bounds(np.array([10.0, 9]), np.array([1.0, 6]), np.array([8.0, 11]), np.array([5.0, 1]))[0])
    # chose 10 in 1 day over 8 in 5: lambda >= 0.5; chose 9 in 6 days over 13 in 1: lambda <= 0.8
    assert delay_cost_bounds(np.array([10.0, 9]), np.array([1.0, 6]), np.array([8.0, 13]), np.array([5.0, 1])) == (0.5, 0.8)


def _log(orders: list[tuple[float, float]], usage: list[tuple[float, float]] = ()) -> pl.DataFrame:
    rows = [{"customer_id": "m1", "event_time": T0 + timedelta(days=d), "item_id": "ink", "quantity": q,
             "event_type": "purchase", "actor": "machine", "text": None, "unit_price": 3.0} for d, q in orders]
    rows += [{"customer_id": "m1", "event_time": T0 + timedelta(days=d), "item_id": "ink", "quantity": u,
              "event_type": "telemetry", "actor": "machine", "text": "usage", "unit_price": None} for d, u in usage]
    return pl.DataFrame(rows, schema_overrides={"event_time": pl.Datetime("us", "UTC")})


def test_a_periodic_machine_from_orders_then_from_its_usage_counter():
    orders = [(d, 20.0) for d in range(0, 100, 10)]
    as_of = T0 + timedelta(days=100)
    twin = build_machine_twins(_log(orders), as_of).row(0, named=True)
    assert twin["rate"] == pytest.approx(2.0) and twin["review_days"] == 10 and twin["source"] == "orders"
    assert twin["n_orders"] == 10 and twin["order_quantity"] == 20 and twin["reorder_point"] is None
    usage = [(d + 0.9, 1.5 * d) for d in range(100)]
    twin = build_machine_twins(_log(orders, usage), as_of).row(0, named=True)
    assert twin["rate"] == pytest.approx(1.5) and twin["source"] == "telemetry"
    assert twin["rate_low"] <= 1.5 <= twin["rate_high"]


def test_events_at_or_after_as_of_change_nothing():
    orders = [(d, 20.0 + d % 3) for d in range(0, 100, 9)]
    as_of = T0 + timedelta(days=60)
    before = build_machine_twins(_log(orders), as_of)
    after = build_machine_twins(_log([(d, q) for d, q in orders if d < 60]), as_of)
    assert before.equals(after)


@pytest.fixture(scope="module")
def market():
    return simulate(MarketConfig(seed=11, n_machines=600, days=240, horizon_days=20, humans={"n": 0}))


def _mape(twins: pl.DataFrame, truth: pl.DataFrame) -> float:
    j = twins.join(truth, left_on="customer_id", right_on="machine_id", suffix="_true")
    return float(((j["rate"] - j["rate_true"]).abs() / j["rate_true"]).mean())


def test_consumption_rate_meets_the_acceptance_errors_on_simulated_machines(market):
    events, truth = market.events(), market.truth()
    orders_only = build_machine_twins(events, market.as_of, MachineTwinParams(use_telemetry=False))
    with_telemetry = build_machine_twins(events, market.as_of).filter(pl.col("source") == "telemetry")
    assert orders_only.height >= 590 and with_telemetry.height >= 250
    assert _mape(orders_only, truth) <= 0.15
    assert _mape(with_telemetry, truth) <= 0.05


def test_price_sensitivity_and_reservation_price_bracket_the_truth(market):
    twins = build_machine_twins(market.events(), market.as_of, offers=market.offer_feed())
    j = twins.join(market.truth(), left_on="customer_id", right_on="machine_id", suffix="_true")
    adaptable = j.filter(pl.col("kind") == "adaptable")
    assert adaptable["delay_cost_low"].null_count() == 0
    assert ((adaptable["delay_cost_low"] <= adaptable["delay_cost"] + 1e-6)
            & (adaptable["delay_cost"] <= adaptable["delay_cost_high"] + 1e-6)).all()
    negotiators = j.filter(pl.col("reservation_price").is_not_null())
    assert negotiators.height > 20 and set(negotiators["kind"]) == {"autonomous"}
    assert (negotiators["reservation_price"] - negotiators["reservation_price_true"]).abs().max() <= 0.006
