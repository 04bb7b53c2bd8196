"""Demand roll-up: product x day demand as the sum of per-machine next-order forecasts, and the direct aggregate
forecasts it is compared with (seasonal naive, moving and weekday averages, simple exponential smoothing).

A machine's forecast at an origin is the time to its next order as three quantiles (the central ``interval``
and the median) and a quantity. The first order's time ``T`` gets a piecewise-linear CDF through the quantiles
(tails at the adjacent segment's density, clipped at 0: an overdue machine orders on day 0); later orders follow
at ``T + k x gap`` (a renewal, ``gap`` = quantity / consumption rate: an order-up-to machine orders what it used).
Expected units on day ``d`` (``[d, d + 1)`` days after the origin) = quantity x P(an order falls on day d).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-9


def quantile_knots(low: np.ndarray, mid: np.ndarray, high: np.ndarray, interval: float = 0.8) -> np.ndarray:
    """``[n, 5]`` increasing times where the CDF is 0, a, 0.5, 1 - a, 1 (``a = (1 - interval) / 2``), >= 0."""
    a = (1 - interval) / 2
    k = np.stack([low - (mid - low) * a / (0.5 - a), low, mid, high, high + (high - mid) * a / (0.5 - a)], axis=1)
    k = np.maximum.accumulate(np.maximum(k, 0.0), axis=1)
    return k + EPS * np.arange(5)  # a zero-width segment is a step


def piecewise_cdf(x: np.ndarray, knots: np.ndarray, interval: float = 0.8) -> np.ndarray:
    """CDF at ``x [n, m]`` of the piecewise-linear distributions with ``knots [n, 5]``."""
    a = (1 - interval) / 2
    probs = np.array([0.0, a, 0.5, 1 - a, 1.0])
    lo, width = knots[:, None, :-1], np.diff(knots, axis=1)[:, None, :]
    return (np.clip((x[..., None] - lo) / width, 0.0, 1.0) * np.diff(probs)).sum(-1)


def expected_orders(low: np.ndarray, mid: np.ndarray, high: np.ndarray, gap: np.ndarray, days: int,
                    interval: float = 0.8) -> np.ndarray:
    """``[n, days]`` expected number of orders per day after the origin: the first at the quantile CDF, then one
    every ``gap`` days (nan or inf: no renewal)."""
    knots = quantile_knots(low, mid, high, interval)
    edges = np.arange(days + 1, dtype=float)
    renews = np.isfinite(gap) & (gap > 0)
    step = np.where(renews, np.maximum(np.where(renews, gap, 1.0), 1.0), 0.0)
    repeats = int(np.ceil(days / step[renews].min())) + 1 if renews.any() else 1
    out = np.zeros((len(low), days))
    for k in range(repeats):
        shift = np.where(renews | (k == 0), k * step, np.inf)
        out += np.diff(piecewise_cdf(edges[None, :] - shift[:, None], knots, interval), axis=1)
    return out


def roll_up(product: np.ndarray, orders: np.ndarray, quantity: np.ndarray, n_products: int) -> np.ndarray:
    """``[n_products, days]`` expected units: per-machine expected orders x quantity, summed by product."""
    out = np.zeros((n_products, orders.shape[1]))
    np.add.at(out, product, orders * quantity[:, None])
    return out


# --- direct aggregate forecasts: history ``y [products, days]`` -> ``[products, horizon]`` ------------------------

def seasonal_naive(y: np.ndarray, horizon: int, season: int = 7) -> np.ndarray:
    """The last ``season`` days repeated."""
    return np.resize(y[:, -season:], (y.shape[0], horizon)) if horizon else np.zeros((y.shape[0], 0))


def moving_average(y: np.ndarray, horizon: int, window: int = 28) -> np.ndarray:
    """The mean of the last ``window`` days, flat."""
    return np.repeat(y[:, -window:].mean(1, keepdims=True), horizon, axis=1)


def weekday_average(y: np.ndarray, horizon: int, weeks: int = 4) -> np.ndarray:
    """Each weekday's mean over the last ``weeks`` weeks (a seasonal moving average)."""
    profile = y[:, -7 * weeks:].reshape(y.shape[0], weeks, 7).mean(1)
    return np.resize(profile, (y.shape[0], horizon))


def exponential_smoothing(y: np.ndarray, horizon: int, alpha: float = 0.1) -> np.ndarray:
    """Simple exponential smoothing (level started at the first day), flat."""
    level = y[:, 0].astype(float)
    for t in range(1, y.shape[1]):
        level = level + alpha * (y[:, t] - level)
    return np.repeat(level[:, None], horizon, axis=1)


AGGREGATES = {"seasonal naive (7 d)": seasonal_naive, "moving average (28 d)": moving_average,
              "weekday average (4 wk)": weekday_average, "exp. smoothing (0.1)": exponential_smoothing}


def demand_errors(pred: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Errors of ``pred`` against ``actual`` (``[..., days]``; the last axis is one forecast's horizon):
    ``mae`` and ``wape`` per product-day, ``total_wape`` of each forecast's horizon total
    (``sum |sum pred - sum actual| / sum actual``) and ``bias`` (``sum pred / sum actual - 1``)."""
    total = actual.sum()
    return {"mae": float(np.abs(pred - actual).mean()), "wape": float(np.abs(pred - actual).sum() / total),
            "total_wape": float(np.abs(pred.sum(-1) - actual.sum(-1)).sum() / total),
            "bias": float(pred.sum() / total - 1)}
