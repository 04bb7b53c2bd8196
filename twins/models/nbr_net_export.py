"""Export a fitted ``NeuralNextBasket`` as a ``next_basket_net`` bundle: raw history in, top-k items out.

The graph (``TopK`` over ``RepeatExploreNet``) takes the encoded baskets, the user's distinct items and the
neighbour context; the runtime (``twins.runtime.next_basket_net``) computes all three from a raw history with the same numpy code the model was
trained with, reading the indexed training users' vectors and targets from ``neighbours.npz`` (sha256 in the
manifest): at most the estimator's ``max_users`` users, so the bundle's size does not grow with the customer base.
"""

import copy
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from twins.export import check_parity, export_bundle
from twins.models.nbr_net import NeuralNextBasket, TopK
from twins.runtime.next_basket_features import INPUTS, network_inputs

TASK = "next_basket_net"
NEIGHBOURS_FILE = "neighbours.npz"


def export_nbr_net(estimator: NeuralNextBasket, out_dir: str | Path, *, k: int = 100, name: str = "nbr-net",
                   version: str = "1", metrics: Mapping[str, float] | None = None, run_id: str | None = None,
                   overwrite: bool = False, provenance: Mapping[str, Any] | None = None) -> Path:
    """Export, check parity on real training histories (batch sizes 1, 3 and 17) and return the bundle folder.
    Item ids are stored as strings; ``k`` is capped at the number of items."""
    if not hasattr(estimator, "net_"):
        raise ValueError("the estimator is not fitted; call fit(histories, targets) first")
    vocabulary = [str(item) for item in estimator.items_]
    if len(set(vocabulary)) != len(vocabulary):
        raise ValueError("item ids collide once converted to str; use ids with distinct string forms")
    n = len(vocabulary)
    graph = TopK(copy.deepcopy(estimator.net_).float().cpu().eval(), min(k, n))
    index = estimator.neighbours_
    manifest = {"name": name, "version": version, "task": TASK, "model": "RepeatExploreNet", "vocabulary": vocabulary,
                "preprocessing": {"max_baskets": estimator.max_baskets, "neighbours": NEIGHBOURS_FILE,
                                  "unknown_items": "dropped", "basket_order": "newest_first", "pad_index": n},
                "params": {k_: v for k_, v in estimator.get_params().items() if k_ not in ("checkpoint_dir", "device")},
                "metrics": dict(metrics or {}), "training_run_id": run_id,
                **(provenance or {})}  # data_source, data_until: twins.provenance
    # probe inputs: the first training users' own histories, rebuilt from the index (item indices)
    histories = [_history_of(index, r) for r in range(min(17, index.n_users))]

    def inputs(rows: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feeds = network_inputs(rows, n, estimator.max_baskets) | {"context": index.context(rows)}
        return tuple(torch.from_numpy(feeds[name]) for name in INPUTS)

    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / NEIGHBOURS_FILE
        index.save(npz)
        path = export_bundle(graph, inputs([[[0, 1], [2]], [[3], [1, 4], [5]]]), out_dir, manifest,
                             input_names=list(INPUTS), output_names=["scores", "indices"],
                             dynamic_axes={"baskets": {0: "batch", 1: "baskets", 2: "width"},
                                           "items": {0: "batch", 1: "distinct"}, "context": {0: "batch"}},
                             overwrite=overwrite, extra_files={NEIGHBOURS_FILE: npz})
    check_parity(graph, path, [inputs(histories[:size]) for size in (1, 3, 17) if size <= len(histories)])
    return path


def _history_of(index, row: int) -> list[list[int]]:
    """A one-basket history holding training user ``row``'s items (enough to probe the graph)."""
    lo, hi = index.vectors[0][row], index.vectors[0][row + 1]
    items = index.vectors[1][lo:hi].tolist()
    return [items[: len(items) // 2] or items, items[len(items) // 2:]]
