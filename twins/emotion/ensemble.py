"""Combine views (fine-tuned encoder, lexical model) and choose thresholds per level, on dev only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twins.emotion.labels import LabelSpace, roll_up
from twins.evaluate.emotion import f1_per_label, macro_f1, predict_labels, tune_thresholds

LEVELS = ("labels", "ekman", "sentiment")


def blend_weight(dev_y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, grid: np.ndarray | None = None) -> float:
    """Weight w of ``w * p_a + (1 - w) * p_b`` maximising dev macro-F1 (thresholds re-tuned on dev for each w)."""
    grid = np.round(np.arange(0.0, 1.01, 0.1), 2) if grid is None else grid
    scores = []
    for w in grid:
        p = w * p_a + (1 - w) * p_b
        scores.append(macro_f1(dev_y, predict_labels(p, tune_thresholds(dev_y, p))))
    return float(grid[int(np.argmax(scores))])


@dataclass
class LevelThresholds:
    """Thresholds per level (fine labels, Ekman groups, sentiment groups), all tuned on dev."""

    thresholds: dict[str, np.ndarray]

    @classmethod
    def tune(cls, space: LabelSpace, dev_y: np.ndarray, dev_p: np.ndarray) -> "LevelThresholds":
        out = {}
        for level in LEVELS:
            m = space.group_matrix(level)
            out[level] = tune_thresholds(roll_up(dev_y, m), roll_up(dev_p, m))
        return cls(out)

    def evaluate(self, space: LabelSpace, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        """``macro_f1/<level>`` for each level, and ``f1/<label>`` per fine label."""
        metrics = {}
        for level in LEVELS:
            m = space.group_matrix(level)
            metrics[f"macro_f1/{level}"] = macro_f1(roll_up(y, m), predict_labels(roll_up(p, m), self.thresholds[level]))
        per_label = f1_per_label(y, predict_labels(p, self.thresholds["labels"]))
        metrics.update({f"f1/{label}": float(f) for label, f in zip(space.labels, per_label)})
        return metrics
