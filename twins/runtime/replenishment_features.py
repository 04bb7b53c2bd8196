"""The features a replenishment forecaster sees at a cut-off, from one machine's raw order history and readings
(numpy only: the training code in ``twins.models.replenishment`` and the torch-free runtime share this code).

Times are in days (float) since the Unix epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RECENT_DAYS = 14  # the recent usage rate (readings) is over this many days
FEATURES = ("log_orders", "since_last", "last_gap", "mean_gap", "median_gap", "gap_cv", "log_last_q", "log_median_q",
            "q_cv", "log_rate", "mean_gap_left", "period_left", "has_telemetry", "cover_days", "above_s_days",
            "up_to_gap_q", "usage_over_order_rate", "hour_std", "log_usage_rate", "recent_over_rate",
            "last_q_over_rate_gap")


@dataclass
class History:
    """One machine's orders (time, quantity, quoted lead days), sorted by time, and readings (time, stock, usage)."""

    t: np.ndarray
    q: np.ndarray
    promised: np.ndarray
    tel_t: np.ndarray = field(default_factory=lambda: np.empty(0))
    stock: np.ndarray = field(default_factory=lambda: np.empty(0))
    usage: np.ndarray = field(default_factory=lambda: np.empty(0))


def _safe_log(x: float) -> float:
    return float(np.log(max(x, 1e-3)))


def features(h: History, cutoff: float) -> np.ndarray | None:
    """``FEATURES`` of a machine at ``cutoff`` from what happened strictly before it; None with < 3 orders."""
    k = np.searchsorted(h.t, cutoff)
    if k < 3:
        return None
    t, q = h.t[:k], h.q[:k]
    gaps = np.diff(t)
    since = cutoff - t[-1]
    mean_gap, median_gap = gaps.mean(), float(np.median(gaps))
    rate = q[1:].sum() / max(t[-1] - t[0], 1e-6)
    day_gaps = np.round(gaps)
    period = float(np.median(day_gaps))
    periodic = period >= 1 and np.mean((day_gaps % period == 0) & (np.abs(gaps - day_gaps) < 0.1)) >= 0.9
    period_left = (period - since % period) if periodic else mean_gap - since
    hours = (t % 1) * 24
    out = [np.log1p(k), since, gaps[-1], mean_gap, median_gap, gaps.std() / max(mean_gap, 1e-6), _safe_log(q[-1]),
           _safe_log(float(np.median(q))), q.std() / max(q.mean(), 1e-6), _safe_log(rate), mean_gap - since,
           period_left]
    j = np.searchsorted(h.tel_t, cutoff)
    if j >= 2:
        tel_t, stock, usage = h.tel_t[:j], h.stock[:j], h.usage[:j]
        usage_rate = max((usage[-1] - usage[0]) / max(tel_t[-1] - tel_t[0], 1e-6), 1e-6)
        lead = float(np.nanmedian(h.promised[:k])) + 0.5 if np.isfinite(h.promised[:k]).any() else 4.0
        open_q = q[t + lead > cutoff].sum()
        before = np.searchsorted(tel_t, t) - 1
        ok = before >= 0
        tk = t[ok][:, None]
        positions = stock[before[ok]] + ((t[None, :] < tk) & (t[None, :] + lead >= tk)) @ q  # stock + open orders
        s_hat = float(np.median(positions)) if ok.any() else 0.0
        up_to = float(np.median(positions + q[ok])) if ok.any() else s_hat + float(np.median(q))
        position = stock[-1] - usage_rate * (cutoff - tel_t[-1]) + open_q
        recent = np.searchsorted(tel_t, tel_t[-1] - RECENT_DAYS)
        recent_rate = (usage[-1] - usage[recent]) / max(tel_t[-1] - tel_t[recent], 1e-6)
        out += [1.0, stock[-1] / usage_rate, (position - s_hat) / usage_rate, (up_to - position) / max(np.median(q), 1e-6),
                usage_rate / max(rate, 1e-6), float(hours.std()), _safe_log(usage_rate), recent_rate / usage_rate]
    else:
        out += [0.0, 0.0, mean_gap - since, 1.0, 1.0, float(hours.std()), _safe_log(rate), 1.0]
    out.append(q[-1] / max(rate * gaps[-1], 1e-6))
    return np.asarray(out, dtype=np.float64)
