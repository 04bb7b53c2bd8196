"""GoEmotions texts and label matrices per split, from ingested message events (``configs/sources/goemotions.yaml``:
columns ``text``, ``labels`` as comma-separated ids into emotions.txt, ``split``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class TextSplit:
    texts: list[str]
    y: np.ndarray  # (n, n_labels) 0/1 float32
    ids: list[str]

    def head(self, n: int) -> "TextSplit":
        return TextSplit(self.texts[:n], self.y[:n], self.ids[:n])


def label_matrix(labels: list[str], n_labels: int, where: str = "labels") -> np.ndarray:
    """0/1 matrix from comma-separated label ids; a bad id raises naming the row and the fix."""
    y = np.zeros((len(labels), n_labels), dtype=np.float32)
    for row, value in enumerate(labels):
        try:
            ids = [int(x) for x in str(value).split(",")]
        except ValueError:
            raise ValueError(f"{where}, row {row}: label ids must be comma-separated integers, got {value!r}") from None
        if min(ids) < 0 or max(ids) >= n_labels:
            raise ValueError(f"{where}, row {row}: label ids must be in 0..{n_labels - 1}, got {value!r}")
        y[row, ids] = 1.0
    return y


def splits_from_events(events: pl.DataFrame, n_labels: int) -> dict[str, TextSplit]:
    """``{"train", "dev", "test"}`` splits of message events, in event order."""
    missing = {"text", "labels", "split", "basket_id"} - set(events.columns)
    if missing:
        raise ValueError(f"message events lack columns {sorted(missing)}; ingest with configs/sources/goemotions.yaml "
                         "(extra_columns: [labels], per-file constant split)")
    out = {}
    for split in SPLITS:
        part = events.filter(pl.col("split") == split)
        if part.is_empty():
            raise ValueError(f"no message events with split == {split!r}; the source needs train, dev and test files")
        out[split] = TextSplit(part["text"].fill_null("").to_list(), label_matrix(part["labels"].to_list(), n_labels,
                               f"split {split}, column labels"), part["basket_id"].to_list())
    return out
