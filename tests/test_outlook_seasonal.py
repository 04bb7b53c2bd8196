"""The seasonal outlook: a calendar learnt from the log's own history (week-of-year terms and holiday spans shared
by every customer) recovers a known seasonal profile from a generated log, and falls back, saying so, when the
history is shorter than a year."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pytest

from twins.evaluate.outlook import purchase_days
from twins.models.btyd import SeasonalBetaGeoModel
from twins.runtime.outlook_features import Calendar, calendar_design, holiday_spans
from twins.sim.seasonal import SeasonalLog, simulate_seasonal_log, true_multipliers

CUTOFF = float((date(2023, 7, 2) - date(1970, 1, 1)).days)


def _days(events: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = purchase_days(events.lazy()).collect()
    code = d["customer_id"].cast(pl.Enum(d["customer_id"].unique().sort())).to_physical().to_numpy().astype(np.int64)
    return code, d["day"].dt.epoch("d").to_numpy(), d["spend"].to_numpy()


@pytest.fixture(scope="module")
def log():
    cfg = SeasonalLog(n_customers=3000, seed=1)
    events, truth = simulate_seasonal_log(cfg)
    return cfg, truth, _days(events)


def _weekly(v: np.ndarray) -> np.ndarray:
    return v[: len(v) // 7 * 7].reshape(-1, 7).mean(1)


def test_seasonal_bgnbd_recovers_the_generated_profile(log):
    """Tolerances: every weekly purchase-rate multiplier of the two years before the cut-off within 10 % of the
    truth (median within 3 %), each holiday's log lift within 0.15, weekly spend multipliers within 15 %, and
    BG/NBD's r, alpha, a, b within 25 % of the generating values."""
    cfg, truth, (code, day, spend) = log
    model = SeasonalBetaGeoModel(order=2, holidays=truth["holidays"]).fit(code, day, spend, CUTOFF)
    days = np.arange(int(CUTOFF) - 728, int(CUTOFF))
    cal = Calendar(model.calendar_)
    rate, spend_mult = true_multipliers(cfg, days)
    err = np.abs(_weekly(cal.daily(days)) / _weekly(rate) - 1)
    assert err.max() < 0.10 and np.median(err) < 0.03
    assert np.abs(_weekly(cal.daily(days, "spend")) / _weekly(spend_mult) - 1).max() < 0.15
    lifts = np.asarray(model.calendar_["count"][4:])
    np.testing.assert_allclose(lifts, np.log([h["lift"] for h in cfg.holidays]), atol=0.15)
    for name, want in (("r", cfg.r), ("alpha", cfg.alpha), ("a", cfg.a), ("b", cfg.b)):
        assert model.counts_.params_[name] == pytest.approx(want, rel=0.25), name
    assert model.calendar_["status"].startswith("fitted on 104")


def test_a_flat_season_is_learnt_flat():
    cfg = SeasonalLog(n_customers=2000, seed=2, amplitude=0.0, holidays=({"date": "12-24", "before": 13, "after": 0, "lift": 1.0},))
    events, truth = simulate_seasonal_log(cfg)
    model = SeasonalBetaGeoModel(order=2, holidays=truth["holidays"]).fit(*_days(events), CUTOFF)
    days = np.arange(int(CUTOFF) - 364, int(CUTOFF))
    assert np.abs(Calendar(model.calendar_).daily(days) - 1).max() < 0.12


def test_less_than_a_year_falls_back_and_says_so(log):
    _, truth, (code, day, spend) = log
    recent = day >= CUTOFF - 39 * 7
    with pytest.warns(RuntimeWarning, match="spans 39.0 weeks, under the 52"):
        model = SeasonalBetaGeoModel(holidays=truth["holidays"]).fit(code[recent], day[recent], spend[recent], CUTOFF)
    assert model.calendar_["status"].startswith("flat") and "count" not in model.calendar_
    assert (Calendar(model.calendar_).daily(np.arange(19_000, 19_400)) == 1).all()


def test_holiday_spans_recur_every_year_and_cross_new_year():
    spans = holiday_spans([{"date": "12-30", "before": 1, "after": 3}, "2023-06-01"])
    d = np.array([(date(y, m, dd) - date(1970, 1, 1)).days for y, m, dd in
                  ((2022, 12, 29), (2023, 1, 2), (2023, 1, 3), (2023, 12, 28), (2023, 6, 1), (2024, 6, 1))])
    cols = calendar_design(d, 0, spans)
    assert cols[:, 0].tolist() == [1, 1, 0, 0, 0, 0] and cols[:, 1].tolist() == [0, 0, 0, 0, 1, 0]
    with pytest.raises(ValueError, match=r"holidays\[0\]: date '25-12'"):
        holiday_spans(["25-12"])


def test_neural_outlook_on_the_calendar_and_its_bundle_from_raw_histories(tmp_path):
    """The neural outlook learns a calendar from two years of history; its bundle computes the calendar's inputs
    from raw lines and as_of and gives the model's answers (rtol 1e-6); the season shows in the forecasts (a
    horizon over the Christmas rush gets more purchase days per week than one in spring)."""
    from datetime import datetime, timezone

    from twins.evaluate.outlook import purchase_lines
    from twins.models.outlook_export import export_neural_outlook
    from twins.models.outlook_net import NeuralOutlook, day_table
    from twins.runtime import OutlookNetBundle, load

    cfg = SeasonalLog(n_customers=300, seed=3)
    events, truth = simulate_seasonal_log(cfg)
    as_of = datetime(2023, 7, 2, tzinfo=timezone.utc)
    ids, code, age, spend = day_table(purchase_days(events.lazy()).collect(), as_of)
    model = NeuralOutlook(n_members=1, max_epochs=2, hidden=16, max_windows=20, calendar_order=2,
                          holidays=tuple(truth["holidays"])).fit(code, age, spend, 8, CUTOFF)
    assert model.calendar_["status"].startswith("fitted")
    rows = np.arange(len(ids))
    x, cal, spend_cal = model.inputs_at(code, age, spend, rows, CUTOFF)
    assert x.shape[1] == model.members_[0].mean.shape[0] and cal.shape == spend_cal.shape == (len(ids), 261)
    want = model.predict(x, 8, cal, spend_cal)
    bundle = load(export_neural_outlook(model, tmp_path / "net", horizon_days=56.0))
    assert isinstance(bundle, OutlookNetBundle) and bundle.calendar.fitted
    lines = purchase_lines(events.lazy().filter(pl.col("event_time") < as_of))
    got = bundle.score([lines.get(c, []) for c in ids], as_of)
    for key in ("expected_purchases", "expected_spend", "p_any_purchase", "p_alive"):
        np.testing.assert_allclose([g[key] for g in got], want[key], rtol=1e-6)
    # the calendar's rush: 8 weeks from 2023-11-26 against 8 weeks from 2023-04-02 (same customers' features)
    christmas, spring = CUTOFF + 147, CUTOFF - 91
    c_rush = model.inputs_at(code, age, spend, rows, christmas)[1]
    c_spring = model.inputs_at(code, age, spend, rows, spring)[1]
    assert model.predict(x, 4, c_rush, spend_cal)["expected_purchases"].sum() > 1.3 * model.predict(x, 4, c_spring, spend_cal)["expected_purchases"].sum()
    with pytest.raises(ValueError, match="horizon_days=183: the neural outlook answers whole weeks"):
        bundle.score([[]], as_of, horizon_days=183)


def test_spend_gross_or_net_of_returns_in_the_table_and_the_runtime():
    from datetime import datetime, timezone

    from twins.runtime.outlook import net_purchase_days

    cfg = SeasonalLog(n_customers=200, seed=4, return_share=0.3)
    events, _ = simulate_seasonal_log(cfg)
    net = purchase_days(events.lazy()).collect()
    gross = purchase_days(events.lazy(), "gross").collect()
    bought = events.filter(pl.col("event_type") == "purchase")["amount"].sum()
    # net: returns made on a purchase day are subtracted (a return-only day is no purchase day, as before)
    assert gross["spend"].sum() == pytest.approx(bought) and net["spend"].sum() < bought - 100
    assert net.height == gross.height  # the same purchase days: only their spend differs
    day = datetime(2023, 1, 10, 12, tzinfo=timezone.utc)
    lines = [(day, 50.0), (day.replace(day=12), 20.0), (day.replace(day=12, hour=15), -30.0), (day.replace(day=14), -5.0)]
    as_of = int(datetime(2023, 2, 1, tzinfo=timezone.utc).timestamp() * 1e6)
    assert list(net_purchase_days(lines, as_of).values()) == [50.0, -10.0]
    assert list(net_purchase_days(lines, as_of, gross=True).values()) == [50.0, 20.0]
    with pytest.raises(ValueError, match="spend must be one of"):
        purchase_days(events.lazy(), "refunds")


def test_seasonal_bgnbd_bundle_from_raw_histories(tmp_path):
    """The seasonal BG/NBD + Gamma-Gamma bundle: the runtime puts each raw history on the calendar from the
    manifest and gives the model's answers (rtol 1e-9, atol 1e-12); waiting times come back in real time, later than the
    model's calendar weeks where the calendar runs fast (the Christmas rush), earlier in the quiet spring."""
    from datetime import datetime, timezone

    from twins.evaluate.outlook import purchase_lines
    from twins.models.outlook_export import export_outlook
    from twins.runtime import OutlookBundle, load

    cfg = SeasonalLog(n_customers=800, seed=5)
    events, truth = simulate_seasonal_log(cfg)
    code, day, spend = _days(events)
    model = SeasonalBetaGeoModel(order=2, holidays=truth["holidays"]).fit(code, day, spend, CUTOFF)
    ids = purchase_days(events.lazy()).collect()["customer_id"].unique().sort().to_list()  # code order
    keep = day < CUTOFF
    n = int(code.max()) + 1
    want = model.predict(code[keep], day[keep], spend[keep], n, CUTOFF, 91.0)
    bundle = load(export_outlook(model.counts_, model.spend_, tmp_path / "seasonal", horizon_days=91.0, calendar=model.calendar_))
    assert isinstance(bundle, OutlookBundle) and bundle.calendar.fitted
    as_of = datetime(2023, 7, 2, tzinfo=timezone.utc)
    lines = purchase_lines(events.lazy().filter(pl.col("event_time") < as_of))
    got = bundle.score([lines.get(c, []) for c in ids[:n]], as_of)
    for key in ("expected_purchases", "expected_spend", "p_any_purchase", "p_alive"):
        np.testing.assert_allclose([g[key] for g in got], want[key], rtol=1e-9, atol=1e-12)
    cal = Calendar(model.calendar_)
    rush, spring = float((date(2023, 12, 10) - date(1970, 1, 1)).days), float((date(2023, 3, 5) - date(1970, 1, 1)).days)
    assert cal.unwarp(rush, np.array([1.0]))[0] < 7.0 < cal.unwarp(spring, np.array([1.0]))[0]
    assert cal.unwarp(rush, np.array([np.inf, 1e9]))[0] == np.inf


def test_training_windows_can_be_sampled_for_speed():
    from twins.models.outlook_net import NeuralOutlook

    rng = np.random.default_rng(0)
    code, age, spend = rng.integers(0, 300, 4000), rng.uniform(0.5, 300, 4000), rng.gamma(2.0, 10.0, 4000)
    full = NeuralOutlook(n_members=1, max_epochs=1, hidden=8, max_windows=10).fit(code, age, spend, 4)
    sampled = NeuralOutlook(n_members=1, max_epochs=1, hidden=8, max_windows=10, max_rows=1000).fit(code, age, spend, 4)
    assert full.n_windows_ > 1000 and sampled.n_windows_ == 1000


def test_counting_orders_instead_of_purchase_days(tmp_path):
    """count_by="order": each order (basket id) with a purchase is one unit, at its day; the BG/NBD bundle counts
    the orders of raw (time, amount, order id) lines as the table does (rtol 1e-9; atol 1e-8 for near-zero counts)."""
    from datetime import datetime, timezone

    from twins.evaluate.outlook import purchase_lines, summarise
    from twins.models.outlook_export import export_outlook
    from twins.runtime import load
    from twins.runtime.outlook import purchase_units
    from twins.twin.outlook import fit_outlook, predict_outlook

    events, _ = simulate_seasonal_log(SeasonalLog(n_customers=400, seed=6, extra_orders=1.0))
    days, orders = purchase_days(events.lazy()).collect(), purchase_days(events.lazy(), count_by="order").collect()
    gross = [purchase_days(events.lazy(), "gross", by).collect()["spend"].sum() for by in ("day", "order")]
    assert orders.height > 1.5 * days.height and gross[0] == pytest.approx(gross[1])  # a return is its own order
    as_of = datetime(2023, 7, 2, tzinfo=timezone.utc)
    s = summarise(orders.lazy(), as_of, 91.0)
    counts, gg = fit_outlook(s)
    want = predict_outlook(s, counts, gg, 13.0)
    bundle = load(export_outlook(counts, gg, tmp_path / "orders", horizon_days=91.0, count_by="order"))
    lines = purchase_lines(events.lazy().filter(pl.col("event_time") < as_of))
    got = bundle.score([lines[c] for c in s["customer_id"]], as_of)
    np.testing.assert_allclose([g["expected_purchases"] for g in got], want[0], rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose([g["expected_spend"] for g in got], want[1], rtol=1e-9, atol=1e-6)
    day = datetime(2023, 1, 10, 9, tzinfo=timezone.utc)
    two = [(day, 10.0, "a"), (day.replace(hour=15), 5.0, "b"), (day.replace(hour=16), -2.0, "b")]
    cut = int(as_of.timestamp() * 1e6)
    assert sorted(a for _, a in purchase_units(two, cut, by_order=True)) == [3.0, 10.0]
    assert [a for _, a in purchase_units(two, cut)] == [13.0]
