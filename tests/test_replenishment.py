"""Replenishment: baselines and features on hand-made histories, the censoring-aware metrics, the forecaster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twins.evaluate.replenishment import coverage, replenishment_metrics, time_errors
from twins.models.replenishment import (
    FEATURES,
    History,
    croston,
    features,
    last_interval,
    mean_interval,
    next_order,
    samples,
    tsb,
)
from twins.models.replenishment_torch import ReplenishmentForecaster, exact_period_rows, interval_scale, pinball
from twins.runtime.replenishment_features import active_days, day_reached, seasonal_rates, weekday_clock

H = History(t=np.array([0.0, 10, 30, 40]), q=np.array([5.0, 10, 20, 10]), promised=np.full(4, np.nan))


def test_naive_baselines_by_hand():
    assert last_interval(H, 45.0) == (5.0, 10.0)            # 40 + 10 - 45
    assert mean_interval(H, 45.0) == (pytest.approx(40 / 3 - 5), 11.25)
    # Croston, alpha 0.5: gaps 10 -> 10 + 0.5 (20 - 10) = 15 -> 15 + 0.5 (10 - 15) = 12.5; sizes 5 -> 7.5 -> 13.75 -> 11.875
    assert croston(H, 45.0, alpha=0.5) == (pytest.approx(7.5), pytest.approx(11.875))
    assert last_interval(H, 60.0)[0] == 0.0                 # overdue: now


def test_tsb_waits_longer_when_orders_are_rarer():
    sparse = History(np.arange(0, 200.0, 20), np.ones(10), np.full(10, np.nan))
    dense = History(np.arange(0, 200.0, 5), np.ones(40), np.full(40, np.nan))
    assert tsb(sparse, 200.0)[0] > tsb(dense, 200.0)[0] > 0


def test_features_need_three_orders_and_see_only_the_past():
    assert features(H, 20.0) is None
    x = features(H, 45.0)
    assert x.shape == (len(FEATURES),)
    f = dict(zip(FEATURES, x))
    assert f["since_last"] == 5 and f["last_gap"] == 10 and f["has_telemetry"] == 0
    future = History(np.append(H.t, 50.0), np.append(H.q, 99.0), np.full(5, np.nan))
    np.testing.assert_array_equal(features(future, 45.0), x)
    assert next_order(future, 45.0, 30.0) == (5.0, 99.0, False)
    assert next_order(H, 45.0, 30.0)[2]


def test_training_targets_never_see_past_until():
    rows = samples({"m": H}, ["m"], [15.0, 35.0, 42.0, 50.0], 30.0, until=45.0)
    assert rows.cutoff.tolist() == [35.0, 42.0]  # 15: fewer than 3 orders before it; 50: after until
    assert rows.bound.tolist() == [10.0, 3.0]
    assert rows.T[0] == 5.0 and not rows.censored[0]  # the order on day 40 is before until
    assert rows.censored[1] and np.isnan(rows.T[1])
    future = History(np.append(H.t, 46.0), np.append(H.q, 7.0), np.full(5, np.nan))
    np.testing.assert_array_equal(samples({"m": future}, ["m"], [42.0], 30.0, until=45.0).censored, [True])
    assert samples({"m": future}, ["m"], [42.0], 30.0).T.tolist() == [4.0]


def test_readings_of_a_stuck_meter_are_ignored():
    stuck = History(H.t, H.q, H.promised, np.arange(0.0, 44), np.full(44, 5.0), np.full(44, 80.0))
    np.testing.assert_array_equal(features(stuck, 45.0), features(H, 45.0))


def test_periodic_histories_count_down_to_the_next_review():
    h = History(np.arange(0, 70.0, 7) + 0.1, np.full(10, 3.0), np.full(10, np.nan))
    f = dict(zip(FEATURES, features(h, 66.0)))
    assert f["period_left"] == pytest.approx(7 - (66 - 63.1))


def test_censored_errors_are_lower_bounds_not_zero():
    pred = np.array([10.0, 50.0, 150.0])
    T = np.array([12.0, np.nan, np.nan])
    cens = np.array([False, True, True])
    np.testing.assert_allclose(time_errors(pred, T, cens, 120.0), [2.0, 70.0, 0.0])
    m = replenishment_metrics(pred, np.array([3.0, 1, 1]), T, np.array([5.0, np.nan, np.nan]), cens, 120.0)
    assert m["time_mae"] == pytest.approx(24.0) and m["time_mae_observed"] == 2.0 and m["quantity_mae"] == 2.0
    assert coverage(np.array([11.0, 0, 0]), np.array([13.0, 100, 130]), T, cens, 120.0) == pytest.approx(2 / 3)


def test_censored_pinball_only_penalises_quantiles_below_the_bound():
    taus = torch.tensor([0.1, 0.5, 0.9])
    bound = torch.tensor([True])
    assert pinball(torch.tensor([[5.0, 6.0, 7.0]]), torch.tensor([4.0]), taus, bound) == 0
    assert pinball(torch.tensor([[3.0, 6.0, 7.0]]), torch.tensor([4.0]), taus, bound) == pytest.approx(0.1 / 3)


@pytest.fixture
def one_thread():
    """Tiny batches: one torch thread is much faster than several on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_forecaster_learns_a_regular_machine_and_orders_its_quantiles(one_thread):
    rng = np.random.default_rng(0)
    hist = {}
    for i in range(120):
        gap, qty = rng.uniform(5, 30), rng.uniform(5, 50)
        t = np.cumsum(np.full(30, gap) + rng.normal(0, 0.3, 30))
        hist[f"m{i}"] = History(t, np.full(30, qty), np.full(30, np.nan))
    rows = samples(hist, list(hist), [100.0, 150.0, 200.0, 250.0], 60.0)
    model = ReplenishmentForecaster(epochs=30, hidden=32, batch_size=32, device="cpu").fit(rows.X, rows.T, rows.Q, rows.censored, 60.0)
    out = model.predict(rows.X)
    assert np.all(out["time_low"] <= out["time"]) and np.all(out["time"] <= out["time_high"])
    assert np.all(out["quantity_low"] <= out["quantity"]) and np.all(out["quantity"] <= out["quantity_high"])
    seen = ~rows.censored
    assert np.mean(np.abs(out["quantity"][seen] - rows.Q[seen]) / rows.Q[seen]) < 0.1
    assert np.mean(np.abs(out["time"][seen] - rows.T[seen])) < 2.0
    again = ReplenishmentForecaster(epochs=30, hidden=32, batch_size=32, device="cpu").fit(rows.X, rows.T, rows.Q, rows.censored, 60.0)
    np.testing.assert_array_equal(again.predict(rows.X)["time"], out["time"])
    # three members: the first is the single net above; the answer is the mean of their log-space quantiles
    trio = ReplenishmentForecaster(epochs=30, hidden=32, batch_size=32, members=3, device="cpu").fit(
        rows.X, rows.T, rows.Q, rows.censored, 60.0)
    x = torch.as_tensor(rows.X, dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_array_equal(trio.net_.nets[0](x)[1].numpy(), out["time"].astype(np.float32))
        logs = [net.log_quantiles(x)[0] for net in trio.net_.nets]
        np.testing.assert_allclose(trio.net_.log_quantiles(x)[0].numpy(), torch.stack(logs).mean(0).numpy(), rtol=1e-6)
    both = trio.predict(rows.X)
    assert np.all(both["time_low"] <= both["time"]) and np.all(both["time"] <= both["time_high"])
    with pytest.raises(ValueError, match="members"):
        ReplenishmentForecaster(members=0).fit(rows.X, rows.T, rows.Q, rows.censored, 60.0)


def test_interval_scale_is_the_conformal_factor_and_scale_intervals_applies_it(one_thread):
    # log-space intervals mid +- 1 around a truth drawn at mid + N(0, 2): factor 1 covers 38 %, the factor makes 80 %
    rng = np.random.default_rng(0)
    mid = rng.uniform(0.5, 3.0, 2000)
    T = np.expm1(mid + rng.normal(0, 2, 2000).clip(-mid, 3.5))
    censored = T > 60.0
    out = {"time": np.expm1(mid), "time_low": np.expm1(mid - 1), "time_high": np.expm1(mid + 1)}
    assert coverage(out["time_low"], out["time_high"], T, censored, 60.0) < 0.5
    k = interval_scale(out, np.where(censored, np.nan, T), censored, 60.0, 0.8)
    wide = {"time_low": np.expm1(mid - k), "time_high": np.expm1(mid + k)}
    assert 0.8 <= coverage(wide["time_low"], wide["time_high"], T, censored, 60.0) <= 0.81
    assert interval_scale(out, np.expm1(mid), np.zeros(2000, bool), 60.0) == pytest.approx(0.0, abs=1e-6)
    # the factor multiplies every member's log-space gaps, the median stays
    times = [np.arange(0, 300.0, 7 + i % 5) for i in range(30)]
    hist = {f"m{i}": History(t, np.full(len(t), 5.0), np.full(len(t), np.nan)) for i, t in enumerate(times)}
    rows = samples(hist, list(hist), [100.0, 200.0], 60.0)
    model = ReplenishmentForecaster(epochs=2, hidden=8, members=2, device="cpu").fit(rows.X, rows.T, rows.Q, rows.censored, 60.0)
    before = model.predict(rows.X)
    after = model.scale_intervals(time=2.0, quantity=0.5).predict(rows.X)
    np.testing.assert_allclose(after["time"], before["time"])
    gap = lambda o, a, b: np.log1p(o[a]) - np.log1p(o[b])  # noqa: E731
    np.testing.assert_allclose(gap(after, "time_high", "time"), 2 * gap(before, "time_high", "time"), rtol=1e-4)
    np.testing.assert_allclose(np.log(after["quantity"] / after["quantity_low"]),
                               0.5 * np.log(before["quantity"] / before["quantity_low"]), rtol=1e-4)


def test_exact_periods_are_answered_by_their_period_only_when_asked(one_thread):
    weekly = History(np.arange(0, 140.0, 7) + 0.25, np.full(20, 9.0), np.full(20, np.nan))  # every 7 days, 6 am
    rough = History(np.cumsum(np.full(20, 7.0) + np.tile([0.0, 0.2], 10)), np.full(20, 9.0), np.full(20, np.nan))
    rows = samples({"w": weekly, "r": rough}, ["w", "r"], [60.0, 101.0, 130.0], 60.0)
    model = ReplenishmentForecaster(epochs=2, hidden=8, members=2, device="cpu").fit(rows.X, rows.T, rows.Q, rows.censored, 60.0)
    net = model.predict(rows.X)
    clock = model.exact_periods().predict(rows.X)
    w = rows.machine == "w"
    np.testing.assert_allclose(clock["time"][w], rows.T[w], atol=1e-5)  # the next 6 am order, 7 days on
    np.testing.assert_allclose(clock["time_high"][w] - clock["time"][w], 1 / 24, atol=1e-5)
    np.testing.assert_array_equal(clock["time"][~w], net["time"][~w])  # gaps that differ: the net answers
    np.testing.assert_array_equal(exact_period_rows(rows.X), w)
    wide = model.scale_intervals(time=3.0).interval_blend(1.0).predict(rows.X)  # the clock's hour stays
    np.testing.assert_array_equal(wide["time_high"][w], clock["time_high"][w])
    model.scale_intervals().interval_blend(0.0)
    np.testing.assert_array_equal(clock["quantity"], net["quantity"])
    np.testing.assert_array_equal(model.exact_periods(False).predict(rows.X)["time"], net["time"])


def test_interval_blend_follows_each_series_own_gap_spread(one_thread):
    # gaps alternating 6 and 8 days: their standard deviation is about 1 day; gaps of 5, 9: about 2 days
    hist = {f"m{i}": History(np.cumsum(np.tile([7.0 - w, 7.0 + w], 15)), np.full(30, 4.0), np.full(30, np.nan))
            for i, w in enumerate((1.0, 2.0))}
    rows = samples(hist, list(hist), [60.0, 90.0, 121.0], 60.0)
    model = ReplenishmentForecaster(epochs=2, hidden=8, device="cpu").fit(rows.X, rows.T, rows.Q, rows.censored, 60.0)
    net = model.predict(rows.X)
    own = model.interval_blend(1.0).predict(rows.X)  # the interval is the median +- the series' gap spread, in days
    sigma = np.array([np.diff(hist[m].t[hist[m].t < c]).std() for m, c in zip(rows.machine, rows.cutoff)])
    assert np.all(np.abs(sigma - np.where(rows.machine == "m0", 1.0, 2.0)) < 0.03)  # an odd count of gaps: a bit under
    np.testing.assert_allclose(own["time"], net["time"])
    np.testing.assert_allclose(own["time_high"] - own["time"], sigma, rtol=1e-4)
    np.testing.assert_allclose(own["time"] - own["time_low"], np.minimum(sigma, own["time"]), rtol=1e-4, atol=1e-5)
    half = model.interval_blend(0.5).predict(rows.X)  # the geometric mean of the net's log-space gaps and the series'
    with torch.no_grad():
        logs = {b: model.interval_blend(b).net_.log_quantiles(torch.as_tensor(rows.X, dtype=torch.float32))[0].numpy()
                for b in (0.0, 0.5, 1.0)}
    up = {b: logs[b][:, 2] - logs[b][:, 1] for b in logs}  # (this barely trained net's medians are below 0 days)
    np.testing.assert_allclose(up[0.5], np.sqrt(up[0.0] * up[1.0]), rtol=1e-4)
    np.testing.assert_array_equal(model.interval_blend(0.0).predict(rows.X)["time_high"], net["time_high"])
    np.testing.assert_array_equal(half["quantity_high"], net["quantity_high"])
    with pytest.raises(ValueError, match="blend"):
        model.interval_blend(1.5)
    # training reads the quantiles as trained: the same numbers as log_quantiles while blend and periods are off
    net0, x = model.interval_blend(0.0).net_, torch.as_tensor(rows.X, dtype=torch.float32)  # members: 1 here
    with torch.no_grad():
        for a, b in zip(net0.log_quantiles(x, trained=True), net0.log_quantiles(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_clock_days_and_the_day_a_need_is_reached_match_counting_by_hand():
    for weekdays in (False, True):
        for day0 in range(14):  # day 0 was a Thursday
            for need in (0.0, 0.3, 1.0, 4.9, 5.0, 12.2, 40.0):
                clock = [d for d in range(day0, day0 + 200) if not weekdays or (d + 3) % 7 < 5]
                by_hand = next(d for d in range(day0 + 1, day0 + 200) if sum(c < d for c in clock) >= need)
                assert day_reached(day0, need, weekdays) == by_hand
    assert active_days(np.array([4]), np.array([11]), True)[0] == 5  # Monday 4 .. Sunday 10: one working week
    assert active_days(np.array([4]), np.array([11]), False)[0] == 7


def test_weekday_machines_are_told_apart_by_their_order_days_or_their_readings():
    weekdays = np.array([d for d in range(0, 70) if (d + 3) % 7 in (1, 2, 3, 4, 5)][::3])  # Tuesday .. Saturday
    assert weekday_clock(weekdays, np.empty(0, np.int64), np.empty(0))
    assert not weekday_clock(np.arange(0, 70, 3), np.empty(0, np.int64), np.empty(0))  # every weekday in turn
    assert not weekday_clock(weekdays[:5], np.empty(0, np.int64), np.empty(0))  # too few orders to tell
    days = np.arange(28)
    usage = np.cumsum(np.where((days + 3) % 7 < 5, 2.0, 0.0))
    assert weekday_clock(np.arange(0, 70, 3), days, usage)  # readings overrule the order days
    assert not weekday_clock(weekdays, days, np.cumsum(np.full(28, 2.0)))


def test_seasonal_fit_recovers_a_yearly_rate_and_shrugs_off_a_burst():
    mid = np.arange(5.0, 365, 10)
    rate = 2.0 * (1 + 0.25 * np.sin(2 * np.pi * mid / 365.25))
    noisy = rate.copy()
    noisy[10] *= 3.0  # a burst
    at = 365.25 * 1.25  # the peak of the next year's cycle
    fitted = seasonal_rates(mid, np.stack([rate, noisy]), np.ones(len(mid)), at)
    # the ridge shrinks the season a little; the Huber weights keep the burst from moving the level
    assert fitted[:, 0] == pytest.approx(2.0 * 1.25, rel=0.06)
    assert fitted[:, 1] == pytest.approx(2.0, rel=0.03)


def test_projections_follow_an_s_S_machine_that_idles_at_weekends():
    # uses 10 units on each weekday, orders 50 (one working week) at 02:00 each Tuesday: day 5 was a Tuesday
    t = np.arange(5.0, 5 + 7 * 12, 7) + 2 / 24
    h = History(t, np.full(len(t), 50.0), np.full(len(t), np.nan))
    f = dict(zip(FEATURES, features(h, t[-1] + 1.5)))  # Wednesday noon
    assert f["weekday_clock"] == 1.0 and f["log_season_cycle"] == pytest.approx(0.0, abs=1e-6)
    assert f["proj_cycle_left"] == pytest.approx(5.5) and f["proj_cover_left"] == pytest.approx(5.5)


def _printer_log():
    """A printer (p1) ordering black toner every 10 days and cyan every 30, with stock readings per toner and one
    reading that names no toner; a fridge (f1) with one consumable and readings without an item."""
    from datetime import datetime, timedelta, timezone

    import polars as pl

    from twins.data.schema import CANONICAL

    start, rows = datetime(2025, 1, 1, tzinfo=timezone.utc), []

    def add(customer, item, day, kind, qty, text=None):
        rows.append({k: None for k in CANONICAL} | {"customer_id": customer, "item_id": item, "actor": "machine",
                                                    "event_time": start + timedelta(days=day), "event_type": kind,
                                                    "quantity": qty, "text": text})
    for d in range(0, 90, 10):
        add("p1", "toner-K", d, "purchase", 1.0)
    for d in range(0, 90, 30):
        add("p1", "toner-C", d + 3, "purchase", 2.0)
    for d in range(0, 90, 7):
        add("f1", "milk", d, "purchase", 6.0)
    for customer, item, stock in (("p1", "toner-K", 40.0), ("p1", "toner-C", 80.0), ("p1", None, 5.0), ("f1", None, 3.0)):
        add(customer, item, 85.0, "telemetry", stock, "stock")
        add(customer, item, 85.0, "telemetry", 1.0, "usage")
    return pl.DataFrame(rows, schema=CANONICAL)


def test_histories_are_per_machine_and_consumable():
    import polars as pl

    from twins.models.replenishment import histories, machine_keys

    hist = histories(_printer_log())
    assert set(hist) == {"p1/toner-K", "p1/toner-C", "f1"}  # a single-item machine keeps its customer id
    assert np.allclose(np.diff(hist["p1/toner-K"].t), 10) and np.allclose(np.diff(hist["p1/toner-C"].t), 30)
    assert list(hist["p1/toner-K"].stock) == [40.0] and list(hist["p1/toner-C"].stock) == [80.0]  # the unnamed one dropped
    assert list(hist["f1"].stock) == [3.0]  # a single-item machine takes readings that name no item
    keys = machine_keys(_printer_log()).sort("machine")
    assert keys.rows() == [("f1", "f1", "milk"), ("p1/toner-C", "p1", "toner-C"), ("p1/toner-K", "p1", "toner-K")]
    unnamed = _printer_log().with_columns(  # an order naming no item: both functions key it alike
        pl.when((pl.col("item_id") == "toner-C") & (pl.col("event_type") == "purchase")).then(None)
        .otherwise(pl.col("item_id")).alias("item_id"))
    assert "p1/" in histories(unnamed) and "p1/" in machine_keys(unnamed)["machine"].to_list()


def test_batch_scoring_answers_each_consumable_of_a_machine():
    from twins.score import SCORERS

    class Echo:  # stands in for a bundle: the number of orders it was given
        def forecast(self, orders, as_of, readings):
            return [{"known": len(o) >= 3, "days": float(len(o)), "quantity": None} for o in orders]

    from datetime import datetime, timezone

    out = SCORERS["replenishment"](Echo(), _printer_log().lazy(), ["p1", "f1", "nobody"],
                                   datetime(2025, 4, 1, tzinfo=timezone.utc))
    got = {r["machine"]: (r["customer_id"], r["item_id"], r["days"]) for r in out.iter_rows(named=True)}
    assert got == {"p1/toner-K": ("p1", "toner-K", 9.0), "p1/toner-C": ("p1", "toner-C", 3.0), "f1": ("f1", "milk", 13.0),
                   "nobody": ("nobody", None, 0.0)}
