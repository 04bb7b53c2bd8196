"""The GoEmotions label space and its official groupings (Ekman 6 + neutral, sentiment 3 + neutral)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NEUTRAL = "neutral"


@dataclass(frozen=True)
class LabelSpace:
    """Fine labels and the groupings that roll them up; every group list ends with ``neutral``."""

    labels: tuple[str, ...]
    ekman: dict[str, tuple[str, ...]]
    sentiment: dict[str, tuple[str, ...]]

    def groups(self, level: str) -> dict[str, tuple[str, ...]]:
        """``{group: member labels}`` for level ``labels`` (identity), ``ekman`` or ``sentiment``."""
        if level == "labels":
            return {label: (label,) for label in self.labels}
        if level in ("ekman", "sentiment"):
            return getattr(self, level)
        raise ValueError(f"unknown label level {level!r}; use 'labels', 'ekman' or 'sentiment'")

    def group_matrix(self, level: str) -> np.ndarray:
        """0/1 matrix (n_labels, n_groups): column g marks the fine labels of group g."""
        groups = self.groups(level)
        matrix = np.zeros((len(self.labels), len(groups)), dtype=np.float32)
        index = {label: i for i, label in enumerate(self.labels)}
        for g, members in enumerate(groups.values()):
            matrix[[index[m] for m in members], g] = 1.0
        return matrix

    def to_dict(self) -> dict:
        return {"labels": list(self.labels), "ekman": {k: list(v) for k, v in self.ekman.items()},
                "sentiment": {k: list(v) for k, v in self.sentiment.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSpace":
        return cls(tuple(d["labels"]), {k: tuple(v) for k, v in d["ekman"].items()},
                   {k: tuple(v) for k, v in d["sentiment"].items()})


def load_label_space(data_dir: str | Path) -> LabelSpace:
    """Read ``emotions.txt``, ``ekman_mapping.json`` and ``sentiment_dict.json`` from a GoEmotions folder.

    The mappings must cover every non-neutral label exactly once; ``neutral`` becomes its own group.
    """
    data_dir = Path(data_dir)
    labels = tuple((data_dir / "emotions.txt").read_text(encoding="utf-8").splitlines())
    levels = {}
    for name, file in (("ekman", "ekman_mapping.json"), ("sentiment", "sentiment_dict.json")):
        mapping = json.loads((data_dir / file).read_text(encoding="utf-8"))
        covered = sorted(m for members in mapping.values() for m in members)
        expected = sorted(label for label in labels if label != NEUTRAL)
        if covered != expected:
            raise ValueError(f"{data_dir / file}: must map each non-neutral label of emotions.txt exactly once; "
                             f"missing {sorted(set(expected) - set(covered))}, extra/duplicated "
                             f"{sorted(set(covered) - set(expected)) or [m for m in covered if covered.count(m) > 1]}")
        levels[name] = {group: tuple(members) for group, members in mapping.items()} | {NEUTRAL: (NEUTRAL,)}
    return LabelSpace(labels, levels["ekman"], levels["sentiment"])


def roll_up(y_or_p: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Group scores from fine ones: a group's value is the max over its members (truth: any member present)."""
    return (y_or_p[:, :, None] * matrix[None]).max(axis=1)
