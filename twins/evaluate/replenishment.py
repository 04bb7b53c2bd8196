"""Next-order evaluation with censoring (DESIGN §4): a machine whose next order is not seen within the horizon ``H``
has a true time ``T > H``, not 0 and not missing.

- time MAE: ``|pred - T|`` where observed; where censored the error is at least ``max(H - pred, 0)`` and that
  lower bound is counted (a forecast beyond ``H`` is not penalised, one before it is, by the part that is surely
  wrong). ``time_mae_observed`` is the plain MAE over observed orders.
- quantity MAE: over observed orders only (a censored order has no quantity).
- interval coverage: observed: ``low <= T <= high``; censored: covered when ``high >= H`` (the truth lies beyond
  ``H``, so an interval ending before it surely misses; one reaching past it is counted as covering).
"""

from __future__ import annotations

import numpy as np


def time_errors(pred: np.ndarray, T: np.ndarray, censored: np.ndarray, horizon: float) -> np.ndarray:
    """Per-row absolute error of the time to the next order, censored rows by their lower bound."""
    return np.where(censored, np.maximum(horizon - pred, 0.0), np.abs(pred - np.where(censored, 0.0, T)))


def coverage(low: np.ndarray, high: np.ndarray, T: np.ndarray, censored: np.ndarray, horizon: float) -> float:
    """Share of rows whose interval holds the truth (censored rows: the interval reaches the horizon)."""
    observed = (low <= T) & (T <= high)
    return float(np.mean(np.where(censored, high >= horizon, observed)))


def replenishment_metrics(time_pred: np.ndarray, qty_pred: np.ndarray, T: np.ndarray, Q: np.ndarray,
                          censored: np.ndarray, horizon: float) -> dict[str, float]:
    """``time_mae`` (censoring-aware), ``time_mae_observed``, ``quantity_mae``, ``censored_share``, ``n``."""
    seen = ~censored
    return {"time_mae": float(time_errors(time_pred, T, censored, horizon).mean()),
            "time_mae_observed": float(np.abs(time_pred[seen] - T[seen]).mean()),
            "quantity_mae": float(np.abs(qty_pred[seen] - Q[seen]).mean()),
            "censored_share": float(censored.mean()), "n": float(len(T))}
