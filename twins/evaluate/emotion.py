"""Multi-label emotion metrics: per-label F1, macro-F1 and thresholds tuned per label on dev only."""

from __future__ import annotations

import numpy as np

DEFAULT_GRID = np.round(np.arange(0.02, 0.96, 0.01), 2)


def f1_per_label(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """F1 of each column of 0/1 matrices; a label with no truth and no prediction scores 0 (sklearn's default)."""
    y, pred = y.astype(bool), pred.astype(bool)
    tp = (y & pred).sum(0)
    denom = y.sum(0) + pred.sum(0)
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    return float(f1_per_label(y, pred).mean())


def tune_thresholds(y: np.ndarray, p: np.ndarray, grid: np.ndarray = DEFAULT_GRID) -> np.ndarray:
    """Per label, the grid threshold maximising that label's F1 on (y, p); ties go to the lowest threshold."""
    y = y.astype(bool)
    hits = p[None, :, :] >= grid[:, None, None]  # (grid, n, labels)
    tp = (hits & y[None]).sum(1)
    denom = hits.sum(1) + y.sum(0)[None]
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return grid[f1.argmax(0)].astype(np.float32)


def predict_labels(p: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return (p >= thresholds[None]).astype(np.float32)
