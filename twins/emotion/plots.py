"""Plots logged with emotion runs (PNG via matplotlib's Agg backend)."""

from __future__ import annotations

import numpy as np

from twins.emotion.labels import LabelSpace


def cooccurrence_png(space: LabelSpace, y: np.ndarray, pred: np.ndarray):
    """Multi-label confusion: cell (i, j) = share of messages with true label i that were predicted label j.
    The diagonal is per-label recall; off-diagonal mass shows which emotions are mistaken for which."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = y.T @ pred / np.maximum(y.sum(0), 1)[:, None]
    fig, ax = plt.subplots(figsize=(10, 9))
    image = ax.imshow(counts, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(space.labels)), space.labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(space.labels)), space.labels, fontsize=7)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title("share of messages with the true label predicted as each label (test)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig
