"""The calibration-holdout protocol: summaries, baselines and metrics against hand-computed cases."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from twins.data.schema import CANONICAL
from twins.evaluate.outlook import auc, blend_weight, interval_coverage, outlook_metrics, persistence, purchase_days, rate_extrapolation, regression_metrics, summarise

UTC = timezone.utc
D0 = datetime(2024, 1, 1, tzinfo=UTC)


def ev(rows):
    full = [{c: None for c in CANONICAL} | {"customer_id": c, "event_time": D0 + timedelta(days=d, hours=h), "amount": a,
                                              "event_type": t, "basket_id": f"{c}{d}{h}"} for c, d, h, a, t in rows]
    return pl.DataFrame(full, schema=CANONICAL).lazy()


def test_summary_by_hand():
    events = ev([
        ("a", 0, 9, 10.0, "purchase"), ("a", 0, 17, 5.0, "purchase"),      # one purchase day, spend 15
        ("a", 14, 9, 20.0, "purchase"), ("a", 14, 10, 4.0, "return"),      # day 14: 20 - 4 = 16
        ("a", 28, 9, 30.0, "purchase"),                                    # day 28
        ("a", 40, 9, 7.0, "purchase"), ("a", 60, 9, 9.0, "purchase"),      # holdout (cut-off day 35, 4 weeks)
        ("b", 30, 9, 3.0, "purchase"),                                     # one-time buyer, in the last window
        ("c", 36, 9, 3.0, "purchase"),                                     # first seen after the cut-off: not scored
        ("d", 2, 9, 1.0, "return"),                                        # returns only: no purchase day
    ])
    s = summarise(purchase_days(events), D0 + timedelta(days=35), horizon_days=28)
    assert s["customer_id"].to_list() == ["a", "b"]
    a, b = s.row(0, named=True), s.row(1, named=True)
    assert (a["n_days"], a["x"], a["t_x"], a["T"]) == (3, 2.0, 4.0, 5.0)               # weeks
    assert a["spend_cal"] == pytest.approx(61.0) and a["m"] == pytest.approx((16 + 30) / 2)
    assert (a["last_window_count"], a["last_window_spend"]) == (2, pytest.approx(46.0))  # days 14, 28 in [7, 35)
    assert (a["actual_count"], a["actual_spend"]) == (2, pytest.approx(16.0))           # days 40, 60 in [35, 63)
    assert a["actual_first_day"] == 5 and b["actual_first_day"] is None
    assert (b["x"], b["t_x"], b["T"], b["m"]) == (0.0, 0.0, pytest.approx(5 / 7), None)
    count, spend = persistence(s)
    assert count.tolist() == [2.0, 1.0] and spend.tolist() == pytest.approx([46.0, 3.0])
    count, spend = rate_extrapolation(s, horizon_days=28)
    assert count.tolist() == pytest.approx([2 / 5 * 4, 0.0]) and spend.tolist() == pytest.approx([1.6 * 61 / 3, 0.0])


def test_regression_metrics_by_hand():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 5.0]))
    assert m["mae"] == pytest.approx(1.0) and m["rmse"] == pytest.approx(np.sqrt(5 / 3))
    assert m["pearson"] == pytest.approx(1.0) and m["spearman"] == pytest.approx(1.0)
    assert m["sum_ratio"] == pytest.approx(6 / 9)
    with pytest.raises(ValueError, match="finite"):
        regression_metrics(np.array([np.nan]), np.array([1.0]))


def test_auc_by_hand():
    # positives 0.8, 0.4; negatives 0.5, 0.1: pairs (0.8>0.5, 0.8>0.1, 0.4<0.5, 0.4>0.1) -> 3/4
    assert auc(np.array([0.8, 0.5, 0.4, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(0.75)
    assert auc(np.array([1.0, 1.0]), np.array([1, 0])) == pytest.approx(0.5)          # a tie counts one half
    assert np.isnan(auc(np.array([1.0]), np.array([1])))


def test_outlook_metrics_keys():
    s = pl.DataFrame({"actual_count": [0, 2], "actual_spend": [0.0, 10.0]})
    m = outlook_metrics(np.array([0.5, 1.5]), np.array([1.0, 9.0]), s)
    assert m["count/mae"] == pytest.approx(0.5) and m["spend/mae"] == pytest.approx(1.0) and m["any/auc"] == 1.0


def test_blend_weight_by_hand():
    actual = np.array([2.0, 4.0])
    a, b = np.array([4.0, 4.0]), np.array([0.0, 4.0])
    # w a + (1-w) b = [4w, 4]: MAE = |4w - 2| / 2, lowest at w = 0.5
    assert blend_weight(a, b, actual) == pytest.approx(0.5)
    assert blend_weight(b, b, actual) == 0.0                 # all weights tie: the smallest


def test_interval_coverage_by_hand():
    # weeks; horizon 4 weeks = 28 days. Rows: bought on day 6 (within 1 week): [0.5, 2] hit; day 20 (3 weeks):
    # [0.5, 2] miss; none: [1, 3] ends inside the horizon, miss; none: [1, 9] reaches past it, undecided
    got = interval_coverage(low=[0.5, 0.5, 1.0, 1.0], high=[2.0, 2.0, 3.0, 9.0], first_day=[6, 20, np.nan, np.nan],
                            horizon_days=28)
    assert got == {"coverage": pytest.approx(1 / 3), "decided": 3, "undecided_share": pytest.approx(0.25)}


def test_gamma_gamma_falls_back_to_the_penalty_when_spend_is_alike_between_customers():
    from twins.models.btyd import GammaGammaModel
    from twins.twin.outlook import FALLBACK_PENALIZER, fit_outlook

    rng = np.random.default_rng(3)
    n = 300
    x = rng.integers(1, 30, n).astype(float)
    T = rng.uniform(20, 52, n)
    summary = pl.DataFrame({"x": x, "t_x": T * rng.uniform(0.2, 1.0, n), "T": T,
                            "m": 25.0 + rng.normal(0, 0.05, n)})  # every customer's mean spend about 25
    with pytest.raises(Exception, match="not identified"):
        GammaGammaModel().fit(x, summary["m"].to_numpy())
    _, gg = fit_outlook(summary)
    assert gg is not None and gg.penalizer == FALLBACK_PENALIZER
    assert gg.expected_spend_per_transaction(np.array([5.0]), np.array([25.0]))[0] == pytest.approx(25.0, rel=0.02)
