"""experiments.family_forecasts: the interval factor and the coverage the per-fold blend choice reads."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.family_forecasts import _covered, _factor


def test_factor_and_coverage_of_pooled_rows_match_counting_by_hand():
    # log1p intervals 1 +- 1; truths 0.1, 0.3, .., 1.9 log1p-days away from the median (one each): a factor k holds
    # the rows within k of it
    away = np.arange(0.1, 2.0, 0.2)
    y = 1.0 + np.where(np.arange(10) % 2 == 0, away, -away)
    mid = np.ones(10)
    out = {"time": np.expm1(mid), "time_low": np.expm1(mid - 1), "time_high": np.expm1(mid + 1)}
    parts = [(out, np.expm1(y), np.zeros(10, bool))]
    assert _covered(parts, 1.0) == pytest.approx(0.5)  # 0.1 .. 0.9
    assert _covered(parts, 0.55) == pytest.approx(0.3)  # 0.1, 0.3, 0.5
    assert _factor(parts) == pytest.approx(1.7)  # the 9th of 10 ((n + 1) * 0.8 = 8.8, rounded up)
    # pooled rows: a second market whose rows are all at the median counts by its rows, not as one market
    still = ({k: v[:5] for k, v in out.items()}, np.expm1(mid[:5]), np.zeros(5, bool))
    assert _covered(parts + [still], 1.0) == pytest.approx(10 / 15)
    # a censored row (no order within the horizon) is held once the upper end reaches it
    far = ({k: v[:1] for k, v in out.items()}, np.array([np.nan]), np.array([True]))
    assert _covered([far], 1.0) == 0.0


def test_against_oracle_hand_computed():
    from experiments.family_forecasts import against_oracle

    # one observed next order at day 10, one censored (none within the horizon of 120 days)
    m = {"T": np.array([10.0, np.nan]), "Q": np.array([1.0, np.nan]), "censored": np.array([False, True])}
    o = np.array([9.0, 120.0])  # the oracle misses the first by 1 day, holds the censored one at the horizon
    got = against_oracle({"naive_mae": 4.0, "forecaster_mae": 2.0}, o, m)
    assert got["oracle_mae"] == pytest.approx(0.5)
    assert got["way_to_oracle"] == pytest.approx((4 - 2) / (4 - 0.5))
