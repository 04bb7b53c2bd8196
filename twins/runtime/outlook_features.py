"""Features of a customer's purchase days as of a cut-off, for the neural purchase outlook (numpy only).

Training (``twins.models.outlook_net``) and the torch-free runtime (``twins.runtime.outlook_net``) both call
``features``, so a bundle sees exactly what the network was trained on. Input is flat: one entry per purchase day
before the cut-off, with the customer's row, the day's age (days from the day's start to the cut-off, > 0) and
its net spend. Time is in weeks.
"""

import numpy as np

WINDOWS = (1, 2, 4, 8, 13, 26, 52)  # weeks before the cut-off with a count feature each
NAMES = ("log_T", "log_x", "log_t_x", "log_recency", "x_per_week", "recency_share", "log_gap_sd",
         *[f"{kind}_{w}w" for w in WINDOWS for kind in ("log_count", "rate")],
         "active_week_share", "log_day_spend", "log_first_spend", "log_recent_day_spend")
N_FEATURES = len(NAMES)


def features(row: np.ndarray, age_days: np.ndarray, spend: np.ndarray, n_rows: int,
             new_day_spend: float | None = None) -> np.ndarray:
    """``[n_rows, N_FEATURES]`` float32 features (``NAMES``). Every input array has one entry per (customer,
    purchase day); ``age_days`` > 0. Rows without a purchase day get the features of a customer whose one
    purchase day is the cut-off day itself, spending ``new_day_spend`` (default: the mean spend per purchase day
    of the other rows)."""
    row = np.asarray(row, np.int64)
    age = np.asarray(age_days, np.float64) / 7.0
    spend = np.maximum(np.asarray(spend, np.float64), 0.0)
    if len(row) and (age.min() <= 0 or not np.isfinite(age).all()):
        raise ValueError("purchase day ages must be finite and > 0 (days strictly before the cut-off)")
    count = lambda mask=None: np.bincount(row, None if mask is None else mask.astype(np.float64), n_rows)  # noqa: E731
    total = lambda values: np.bincount(row, values, n_rows)  # noqa: E731
    n = count()
    known = n > 0
    T = np.zeros(n_rows)
    np.maximum.at(T, row, age)
    recency = np.full(n_rows, np.inf)
    np.minimum.at(recency, row, age)
    recency[~known] = 0.0
    x = np.maximum(n - 1, 0)
    t_x = T - recency
    gap = np.where(x > 0, t_x / np.maximum(x, 1), 0.0)
    # spread of the gaps between consecutive purchase days (sorted by customer, then age)
    order = np.lexsort((age, row))
    r, a = row[order], age[order]
    same = r[1:] == r[:-1]
    gaps = np.diff(a)[same]
    gap_sq = np.bincount(r[1:][same], gaps ** 2, n_rows)
    gap_sd = np.sqrt(np.maximum(np.where(x > 0, gap_sq / np.maximum(x, 1), 0.0) - gap ** 2, 0.0))
    span = np.maximum(T, 1.0 / 7.0)
    cols = [np.log1p(T), np.log1p(x), np.log1p(t_x), np.log1p(recency), x / span, recency / span, np.log1p(gap_sd)]
    for w in WINDOWS:
        c = count(age <= w)
        cols += [np.log1p(c), c / np.minimum(w, span)]
    weeks = np.unique(row * 10_000 + np.floor(age - 1e-9).astype(np.int64)) // 10_000
    cols.append(np.bincount(weeks, None, n_rows) / np.ceil(span))
    day_spend = total(spend) / np.maximum(n, 1)
    first = np.zeros(n_rows)
    oldest = np.r_[~same, True] if len(r) else np.zeros(0, bool)  # the oldest day of each customer
    first[r[oldest]] = spend[order][oldest]
    recent = age <= 13
    recent_spend = np.where(count(recent) > 0, total(spend * recent) / np.maximum(count(recent), 1), day_spend)
    cols += [np.log1p(day_spend), np.log1p(first), np.log1p(recent_spend)]
    out = np.stack(cols, 1)
    if not known.all():
        if new_day_spend is None:
            new_day_spend = float(total(spend).sum() / n.sum()) if known.any() else 0.0
        out[~known] = new_customer(new_day_spend)
    return out.astype(np.float32)


def new_customer(day_spend: float) -> np.ndarray:
    """Features of a customer whose one purchase day is the cut-off day, spending ``day_spend``."""
    return features(np.zeros(1, np.int64), np.ones(1), np.full(1, day_spend), 1)[0]
