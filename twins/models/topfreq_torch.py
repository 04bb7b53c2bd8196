"""GP-TopFreq as a PyTorch module, exported as an ONNX bundle for the torch-free runtime (``twins.runtime``)."""

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from twins.export import check_parity, export_bundle
from twins.models.topfreq import GPTopFreq

TASK = "next_basket"


class FrequencyScorer(nn.Module):
    """Scores all items for a batch of flattened histories and returns the top ``k``.

    Input ``history``: int64 ``[B, L]``, the model indices of the items of all history baskets (each basket
    deduplicated, so a count is a number of baskets), flattened and padded with 0. Index 0 is the pad/unknown
    slot; ``vocabulary[i]`` has index ``i + 1``. Outputs ``(scores [B, k] float64, indices [B, k] int64)``.

    score(item) = number of history entries equal to the item + ``prior[item]``. The prior lies in (0, 1) and
    falls with the item's global rank (popularity desc, item id asc): the user's items come first, ordered by count
    then popularity, and the rest is filled by popularity, as ``GPTopFreq(tie_break="popularity")`` does. Priors
    are distinct, so no two items tie and the order is the same in PyTorch and ONNX Runtime. A rank (not the raw
    popularity) is used so that equally popular items do not tie. Scores are float64: count + prior is exact while
    a count stays below 2**52 / (n_items + 1); in float32 that bound was 2**23 / (n_items + 1), only ~120 baskets for
    Complete Journey's 68k items, which heavy households exceed. ``prior[0]`` is -inf, masking the pad slot.
    """

    def __init__(self, prior: torch.Tensor, vocabulary: Sequence[Hashable], k: int) -> None:
        super().__init__()
        if prior.shape != (len(vocabulary) + 1,):
            raise ValueError(f"prior must have shape ({len(vocabulary) + 1},), got {tuple(prior.shape)}")
        if not 1 <= k <= len(vocabulary):
            raise ValueError(f"k must be in [1, {len(vocabulary)}], got {k}")
        self.register_buffer("prior", prior.to(torch.float64))
        self.vocabulary = list(vocabulary)
        self.k = k

    @classmethod
    def from_estimator(cls, estimator: GPTopFreq, k: int = 100) -> "FrequencyScorer":
        """Build from a fitted ``GPTopFreq``; ``k`` is capped at the vocabulary size."""
        if not isinstance(estimator, GPTopFreq) or not hasattr(estimator, "ranking_"):
            raise ValueError(f"need a fitted GPTopFreq, got {estimator!r}")
        if estimator.tie_break != "popularity":
            raise ValueError(f"only tie_break='popularity' can be exported, got {estimator.tie_break!r}")
        vocabulary = sorted(estimator.popularity_)
        n_items = len(vocabulary)
        rank = {item: r for r, item in enumerate(estimator.ranking_)}
        prior = [float("-inf")] + [(n_items - rank[item]) / (n_items + 1) for item in vocabulary]
        return cls(torch.tensor(prior, dtype=torch.float64), vocabulary, min(k, n_items))

    def forward(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = self.prior.new_zeros((history.shape[0], self.prior.shape[0]))
        counts = counts.scatter_add(1, history, torch.ones_like(history, dtype=counts.dtype))
        scores, indices = torch.topk(counts + self.prior, self.k, dim=1)
        return scores, indices


def export_gp_topfreq(
    estimator: GPTopFreq,
    out_dir: str | Path,
    *,
    k: int = 100,
    max_history_items: int = 1024,
    name: str = "gp-topfreq",
    version: str = "1",
    metrics: Mapping[str, float] | None = None,
    run_id: str | None = None,
    overwrite: bool = False,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Export a fitted ``GPTopFreq`` as a ``next_basket`` bundle, check parity, and return its folder.

    Item ids are stored as strings (``str(item)``); the runtime answers with those strings. The runtime keeps the
    ``max_history_items`` most recent history entries. Parity is checked at batch sizes 1, 3, 17 and sequence
    lengths 1, 7, 64; a ``ParityError`` leaves the bundle in place for inspection.
    """
    scorer = FrequencyScorer.from_estimator(estimator, k)
    vocabulary = [str(item) for item in scorer.vocabulary]
    if len(set(vocabulary)) != len(vocabulary):
        raise ValueError("item ids collide once converted to str; use ids with distinct string forms")
    manifest = {
        "name": name,
        "version": version,
        "task": TASK,
        "model": "GPTopFreq",
        "vocabulary": vocabulary,
        "preprocessing": {
            "pad_index": 0,
            "first_item_index": 1,
            "dedupe_within_basket": True,
            "max_history_items": max_history_items,
            "truncation": "keep_most_recent",
        },
        "metrics": dict(metrics or {}),
        "training_run_id": run_id,
        **(provenance or {}),  # data_source, data_until: twins.provenance
    }
    n_slots = len(vocabulary) + 1
    generator = torch.Generator().manual_seed(0)
    path = export_bundle(
        scorer,
        (torch.randint(0, n_slots, (2, 3), generator=generator),),
        out_dir,
        manifest,
        input_names=["history"],
        output_names=["scores", "indices"],
        dynamic_axes={"history": {0: "batch", 1: "sequence"}},
        overwrite=overwrite,
    )
    inputs = [
        (torch.randint(0, n_slots, (batch, length), generator=generator),)
        for batch in (1, 3, 17)
        for length in (1, 7, 64)
    ]
    check_parity(scorer, path, inputs)
    return path
