"""The neural outlook's training windows, sampled without building them all: the same rows as building every
window and sampling after (the implementation before the streamed one, kept here as the reference), and only the
sampled customers' features computed."""

from __future__ import annotations

import numpy as np
import pytest

from twins.models import outlook_net
from twins.models.outlook_net import Windows, count_windows, training_windows
from twins.runtime.outlook_features import features

FIELDS = ("x", "count", "spend", "h", "customer", "weeks_back")


def all_windows(code, age, spend, horizon_weeks, max_windows=52, min_history_weeks=4, sub_horizons=(4, 13)) -> Windows:
    """Every window, built as before the streamed version: one block per moved cut-off and window length."""
    before = age > 0
    code, age, spend = code[before], age[before], spend[before]
    rows, n_codes = [], int(code.max()) + 1
    for k in range(1, max_windows + 1):
        shift = 7.0 * k
        if age.max() - shift < 7.0 * min_history_weeks:
            break
        hist = age > shift
        seen = np.unique(code[hist])
        index = np.full(n_codes, -1)
        index[seen] = np.arange(len(seen))
        x = features(index[code[hist]], age[hist] - shift, spend[hist], len(seen))
        longest = min(horizon_weeks, k)
        for h in sorted({longest, *(v for v in sub_horizons if v < longest)}):
            future = ~hist & (age > shift - 7.0 * h) & (index[code] >= 0)
            count = np.bincount(index[code[future]], None, len(seen))
            total = np.bincount(index[code[future]], spend[future], len(seen))
            rows.append(Windows(x, count, total, np.full(len(seen), float(h)), seen, np.full(len(seen), float(k))))
    return Windows(*(np.concatenate([getattr(w, f) for w in rows]) for f in FIELDS))


def sampled(w: Windows, max_rows: int, seed: int) -> Windows:
    keep = np.sort(np.random.default_rng(seed).choice(len(w.count), max_rows, replace=False))
    return Windows(*(getattr(w, f)[keep] for f in FIELDS))


def assert_same(a: Windows, b: Windows) -> None:
    for f in FIELDS:
        assert getattr(a, f).dtype == getattr(b, f).dtype, f
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


@pytest.fixture(scope="module")
def log():
    """400 customers with 1 to 40 purchase days each over 300 days, in no particular order, a few after the
    cut-off (age <= 0), some customer codes without any day, ties in age within a customer."""
    rng = np.random.default_rng(3)
    n = 6000
    code = rng.choice(np.r_[0:150, 170:420], n)
    age = np.round(rng.uniform(-20, 300, n), 1)
    return code, age, rng.gamma(2.0, 10.0, n) - 2.0


def test_all_windows_when_max_rows_covers_them(log):
    code, age, spend = log
    want = all_windows(code, age, spend, 13)
    n = len(want.count)
    assert n > 5000 and count_windows(code, age, 13) == n
    for max_rows in (None, n, n + 1):
        assert_same(training_windows(code, age, spend, 13, max_rows=max_rows, seed=4), want)


def test_a_sample_is_the_rows_sampling_all_windows_would_keep(log):
    code, age, spend = log
    for horizon, kw in ((13, {}), (4, {"max_windows": 20, "min_history_weeks": 2, "sub_horizons": (2,)})):
        full = all_windows(code, age, spend, horizon, **kw)
        for max_rows, seed in ((1, 0), (500, 0), (500, 1), (len(full.count) - 1, 2)):
            got = training_windows(code, age, spend, horizon, max_rows=max_rows, seed=seed, **kw)
            assert len(got.count) == max_rows
            assert_same(got, sampled(full, max_rows, seed))


def test_a_sample_computes_the_sampled_customers_features_only(log, monkeypatch):
    code, age, spend = log
    built = []

    def counting(row, age_days, spend_, n_rows, *args):
        built.append(n_rows)
        return features(row, age_days, spend_, n_rows, *args)

    monkeypatch.setattr(outlook_net, "features", counting)
    training_windows(code, age, spend, 13, max_rows=50, seed=0)
    assert sum(built) <= 50                             # feature rows for the sampled (customer, moved cut-off) only
    built.clear()
    training_windows(code, age, spend, 13)
    assert sum(built) > 40 * 350                        # all: every seen customer at each of the ~40 moved cut-offs


def test_hand_counted_layout():
    # customer 0's oldest day is 60 days back, customer 1's 55: with min_history_weeks 1 the cut-off moves back
    # 1..7 weeks; both are seen until 7 weeks (49 days) back; weeks 1..4 give one window each (k weeks), 5..7 two (4 and k weeks)
    code, age = np.array([0, 0, 1, 2]), np.array([60.0, 3.0, 55.0, -4.0])
    assert count_windows(code, age, 13, min_history_weeks=1) == 2 * (4 + 2 * 3)
    assert count_windows(code, -age, 13) == 0
