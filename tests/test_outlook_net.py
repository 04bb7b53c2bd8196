"""The neural purchase outlook: features by hand, the process' closed forms against its own pmf and a
simulation, training windows without leakage, the estimator, the ONNX bundle from raw histories, the twin."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
import torch

from twins.data.schema import CANONICAL
from twins.evaluate.outlook import purchase_days
from twins.models.outlook_export import export_neural_outlook
from twins.models.outlook_net import (NeuralOutlook, count_nll, day_table, expected_weeks_alive, features_at, p_none,
                                      training_windows, wait_survival)
from twins.runtime import OutlookNetBundle, load
from twins.runtime.outlook_features import NAMES, features
from twins.twin.customer import TwinParams, build_customer_twins

UTC = timezone.utc
AS_OF = datetime(2024, 7, 1, tzinfo=UTC)


def test_features_by_hand():
    # customer 0: purchase days 3, 10 and 24 days before the cut-off, spending 10, 0 (a refund day's net) and 30
    x = features(np.array([0, 0, 0]), np.array([3.0, 10.0, 24.0]), np.array([10.0, -5.0, 30.0]), 2, new_day_spend=7.0)
    f = dict(zip(NAMES, x[0].astype(float)))
    T, rec = 24 / 7, 3 / 7
    assert f["log_T"] == pytest.approx(np.log1p(T), rel=1e-6) and f["log_x"] == pytest.approx(np.log(3), rel=1e-6)
    assert f["log_t_x"] == pytest.approx(np.log1p(T - rec), rel=1e-6) and f["recency_share"] == pytest.approx(rec / T, rel=1e-6)
    gaps = np.array([7.0, 14.0]) / 7
    assert f["log_gap_sd"] == pytest.approx(np.log1p(gaps.std()), rel=1e-5)
    assert f["rate_1w"] == pytest.approx(1.0) and f["rate_2w"] == pytest.approx(1.0)           # 1 day in 1 / 2 weeks
    assert f["rate_4w"] == pytest.approx(3 / T, rel=1e-6)                                        # 3 days in T < 4 weeks
    assert f["active_week_share"] == pytest.approx(3 / 4)                                        # weeks 0, 1, 3 of 4
    assert f["log_day_spend"] == pytest.approx(np.log1p(40 / 3), rel=1e-6)                       # negatives count as 0
    assert f["log_first_spend"] == pytest.approx(np.log1p(30), rel=1e-6)
    # row 1 has no purchase day: a customer whose one day is the cut-off day, spending new_day_spend
    assert f["log_T"] != x[1, 0] and dict(zip(NAMES, x[1]))["log_day_spend"] == pytest.approx(np.log1p(7.0))
    with pytest.raises(ValueError, match="> 0"):
        features(np.array([0]), np.array([0.0]), np.array([1.0]), 1)


def params(n: int = 4) -> tuple[torch.Tensor, ...]:
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return t(0.9, 0.5, 1.0, 0.7)[:n], t(0.8, 2.5, 0.05, 1.3)[:n], t(0.02, 0.3, 1e-6, 0.1)[:n], t(2.0, 0.7, 5.0, 30.0)[:n]


def test_closed_forms_agree_with_the_pmf():
    p = params()
    h = torch.tensor([13.0, 26.0, 39.0, 5.0], dtype=torch.float64)
    n = torch.arange(0, 4000, dtype=torch.float64)
    pmf = torch.stack([torch.exp(-count_nll(tuple(v.expand(len(n)) for v in (p[0][i:i + 1], p[1][i:i + 1], p[2][i:i + 1],
                                                                                  p[3][i:i + 1])), n, h[i].expand(len(n))))
                       for i in range(4)])
    np.testing.assert_allclose(pmf.sum(1), 1.0, atol=1e-6)
    mean = p[0] * p[1] * expected_weeks_alive(p[2], h)
    np.testing.assert_allclose((pmf * n).sum(1), mean, rtol=1e-6)
    np.testing.assert_allclose(pmf[:, 0], p_none(p, h, 39), rtol=1e-9)


def test_waiting_time_agrees_with_a_simulation():
    _, lam, hazard, kappa = params()
    rng = np.random.default_rng(0)
    for i in range(4):
        n = 200_000
        life = rng.geometric(1 - np.exp(-hazard[i].item()), n) - 1                 # whole weeks alive, P(L = l) = s^l (1-s)
        rate = rng.gamma(kappa[i].item(), lam[i].item() / kappa[i].item(), n)
        first = rng.exponential(1 / rate)                                            # first purchase time if forever alive
        # no purchase in the first w weeks: none before min(w, L) (purchases happen only in alive weeks)
        surv = wait_survival(tuple(v[i:i + 1] for v in params()), weeks=30)[0].numpy()
        for w in (1, 4, 12, 30):
            assert np.mean(first >= np.minimum(w, life)) == pytest.approx(surv[w], abs=4e-3)


def history_table(histories: dict[str, list[tuple[datetime, float]]]) -> pl.DataFrame:
    rows = [{k: None for k in CANONICAL} | {"customer_id": c, "event_time": t, "amount": a,
                                            "event_type": "purchase" if a >= 0 else "return"}
            for c, h in histories.items() for t, a in h]
    return pl.DataFrame(rows, schema=CANONICAL)


def test_training_windows_count_what_followed_and_never_see_past_the_cutoff():
    # customer 0 buys 60, 50, 20 and 3 days before the cut-off; customer 1 only 55 days before; 2 after it
    code = np.array([0, 0, 0, 0, 1, 2])
    age = np.array([60.0, 50.0, 20.0, 3.0, 55.0, -4.0])
    spend = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    w = training_windows(code, age, spend, horizon_weeks=13, min_history_weeks=1)
    first = w.weeks_back == 1                         # cut-off a week back: both customers, the next 1 week
    assert list(w.customer[first]) == [0, 1] and list(w.count[first]) == [1, 0] and list(w.spend[first]) == [8.0, 0.0]
    four = w.weeks_back == 4                          # 28 days back: the days at 20 and 3 days follow within 4 weeks
    assert list(w.count[four]) == [2, 0] and list(w.spend[four]) == [12.0, 0.0] and set(w.h[four]) == {4.0}
    assert 2 not in w.customer and w.weeks_back.max() == 7  # 7 weeks back leaves >= 1 week of history (60 days)
    seven = w.weeks_back == 7                         # a 4-week window too (sub_horizons): days 20, 3 come after it
    assert sorted(zip(w.h[seven], w.customer[seven], w.count[seven])) == [(4.0, 0, 0), (4.0, 1, 0), (7.0, 0, 2), (7.0, 1, 0)]
    moved = training_windows(code, np.where(code == 2, -100.0, age), spend, 13, min_history_weeks=1)
    np.testing.assert_array_equal(moved.x, w.x)


def test_bad_training_input_is_refused_clearly():
    code, age, spend = np.array([0, 0, 1]), np.array([30.0, 3.0, 20.0]), np.array([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="one entry per purchase day"):
        NeuralOutlook().fit(code, age[:2], spend, 4)
    with pytest.raises(ValueError, match="non-finite age or spend .first at row 1"):
        NeuralOutlook().fit(code, age, np.array([1.0, np.nan, 3.0]), 4)
    with pytest.raises(ValueError, match="horizons of 1 to 104 whole weeks, got 0"):
        NeuralOutlook().fit(code, age, spend, 0)
    with pytest.raises(ValueError, match="weeks of purchase days before the cut-off"):
        NeuralOutlook().fit(code, age, spend, 4)                      # 30 days of data: no window with 4 weeks before it
    with pytest.raises(ValueError, match="no purchase day before the cut-off"):
        NeuralOutlook().fit(code, -age, spend, 4)


@pytest.fixture(scope="module")
def market():
    """Histories of 300 customers with individual rates, some dropping out; the model fitted on them."""
    rng = np.random.default_rng(11)
    start = AS_OF - timedelta(days=300)
    histories = {}
    for c in range(300):
        rate, life = rng.gamma(1.0, 1 / 8), rng.exponential(400)
        days = rng.uniform(0, min(life, 300), rng.poisson(rate * min(life, 300)) + 1)
        histories[f"c{c:03d}"] = [(start + timedelta(days=float(d)), float(np.round(rng.gamma(3.0, 8.0), 2))) for d in days]
    ids, code, age, spend = day_table(purchase_days(history_table(histories).lazy()), AS_OF)
    model = NeuralOutlook(n_members=2, max_epochs=4, seed=1).fit(code, age, spend, horizon_weeks=4)
    return histories, ids, code, age, spend, model


def test_estimator_contract_reproducibility_and_sense(market):
    histories, ids, code, age, spend, model = market
    assert model.get_params()["n_members"] == 2 and len(model.members_) == 2 and model.spend_factor_ > 0
    again = NeuralOutlook(n_members=2, max_epochs=4, seed=1).fit(code, age, spend, horizon_weeks=4)
    x = features_at(code, age, spend, np.arange(len(ids)))
    a, b = model.predict(x, 4), again.predict(x, 4)
    np.testing.assert_array_equal(a["expected_purchases"], b["expected_purchases"])
    days = np.bincount(code, minlength=len(ids))
    busy, quiet = np.argsort(days)[-30:], np.argsort(days)[:30]
    assert a["expected_purchases"][busy].mean() > 3 * a["expected_purchases"][quiet].mean()
    longer = model.predict(x, 26)
    assert (longer["expected_purchases"] >= a["expected_purchases"] - 1e-12).all()
    assert (longer["p_any_purchase"] >= a["p_any_purchase"] - 1e-12).all()
    assert ((a["next_low"] <= a["next_median"]) & (a["next_median"] <= a["next_high"])).all()


@pytest.fixture(scope="module")
def bundle(market, tmp_path_factory) -> OutlookNetBundle:
    return load(export_neural_outlook(market[-1], tmp_path_factory.mktemp("b") / "net", horizon_days=28.0))


def test_bundle_from_raw_histories_equals_the_model(market, bundle):
    histories, ids, code, age, spend, model = market
    assert isinstance(bundle, OutlookNetBundle)
    got = bundle.score([histories[c] for c in ids], AS_OF)
    want = model.predict(features_at(code, age, spend, np.arange(len(ids))), 4)
    for key in ("expected_purchases", "expected_spend", "p_alive", "p_any_purchase"):
        np.testing.assert_allclose([g[key] for g in got], want[key], rtol=1e-6)
    np.testing.assert_allclose([g["churn_risk"] for g in got], 1 - want["p_alive_end"], rtol=1e-6)
    assert (want["p_alive_end"] <= want["p_alive"]).all()
    median = [np.inf if g["next_purchase"] is None else (g["next_purchase"] - AS_OF).total_seconds() / 86_400 / 7 for g in got]
    np.testing.assert_allclose(median, want["next_median"], atol=1e-5)  # inf: half never buy again (5-year grid)
    assert all(g["known"] and g["horizon_days"] == 28.0 for g in got)
    with pytest.raises(ValueError, match="horizon_days=30: the neural outlook answers whole weeks, 7 to 728 days"):
        bundle.score([histories[ids[0]]], AS_OF, horizon_days=30)  # refused, not answered for 28


def test_bundle_defined_answers_for_edge_cases(bundle):
    heavy = [(AS_OF - timedelta(days=d), 12.0) for d in range(1, 301)]
    same_day = [(AS_OF - timedelta(days=10) + timedelta(hours=h), 5.0) for h in range(5)]
    returns = [(AS_OF - timedelta(days=30), 40.0), (AS_OF - timedelta(days=5), -10.0)]
    zero = [(AS_OF - timedelta(days=20), 0.0), (AS_OF - timedelta(days=2), 0.0)]
    future_only = [(AS_OF + timedelta(days=3), 9.0)]
    new, heavy_a, one_day, ret, zer, fut = bundle.score([[], heavy, same_day, returns, zero, future_only], AS_OF)
    for answer in (new, heavy_a, one_day, ret, zer, fut):
        assert all(np.isfinite(v) for k, v in answer.items() if isinstance(v, float))
        assert 0 <= answer["p_alive"] <= 1 and 0 <= answer["p_any_purchase"] <= 1 and answer["expected_spend"] >= 0
    assert not new["known"] and not fut["known"] and new == fut
    # a batch with no purchase day at all (this raised an IndexError in the features): the same answer (to
    # rounding: onnxruntime's reductions may differ in the last bits between batch sizes)
    for got in (*bundle.score([[]], AS_OF), *bundle.score([future_only, []], AS_OF)):
        assert got.keys() == new.keys()
        for key, value in got.items():
            assert value == (pytest.approx(new[key], rel=1e-12) if isinstance(value, float) else new[key]) or (
                abs((value - new[key]).total_seconds()) < 1e-3), key
    assert heavy_a["expected_purchases"] > 2 * one_day["expected_purchases"]
    assert ret["known"] and ret["expected_purchases"] == pytest.approx(bundle.score([returns[:1]], AS_OF)[0]["expected_purchases"])
    assert zer["known"] and one_day["known"] and heavy_a["p_alive"] > 0.5
    with pytest.raises(ValueError, match="horizon_days must be > 0"):
        bundle.score([[]], AS_OF, horizon_days=0)
    with pytest.raises(ValueError, match="horizon_days=770: .* 7 to 728 days"):
        bundle.score([[]], AS_OF, horizon_days=770)


def test_neural_outlook_in_the_twin(market):
    histories = dict(list(market[0].items())[:60])
    events = history_table(histories)
    tw = build_customer_twins(events.lazy(), AS_OF, TwinParams(outlook_horizon_days=28, outlook_model="neural"))
    cols = ["expected_purchases", "expected_spend", "p_alive", "churn_risk", "p_any_purchase"]
    assert tw.height == len(histories) and tw.select(pl.all_horizontal(pl.col(cols).is_finite()).all()).item()
    assert tw.select((pl.col("next_purchase_low") <= pl.col("next_purchase")).all()
                     & (pl.col("next_purchase_low") >= AS_OF).all()).item()
    later = events.with_columns(pl.col("event_time") + timedelta(days=400))  # only events before as_of count
    with pytest.raises(ValueError, match="outlook model must be one of"):
        build_customer_twins(later.lazy(), AS_OF, TwinParams(outlook_model="lstm"))
