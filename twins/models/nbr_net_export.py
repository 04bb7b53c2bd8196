"""Export a fitted ``NeuralNextBasket`` as a ``next_basket_net`` bundle: raw history in, top-k items out.

The graph (``CandidateScores``: ``RepeatExploreNet.candidate_scores``) scores the candidates it is given (the
user's items, a prefix of the items by their best signal-free score, the items the neighbour signal lifts) and returns
the user embedding; the runtime (``twins.runtime.next_basket_net``) builds them from a raw history with the same
numpy code the model was trained with, reading the indexed training users' vectors and targets from
``neighbours.npz`` (at most the estimator's ``max_users`` users, so the bundle's size does not grow with the
customer base) and, from ``explore.npz``, what bounds every other item's score (``static``: the score of an empty
history; ``norms``: the output embeddings' lengths; ``rho``: the probe histories' median ``|u|``; ``signal``: how
much the neighbour signal can raise the prior), so that its top-k is the top-k over all items
(``twins.runtime.next_basket_candidates``). Both files' sha256 are in the manifest.
"""

import copy
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twins.export import check_parity, export_bundle
from twins.models.nbr_net import CandidateScores, NeuralNextBasket
from twins.runtime.next_basket_candidates import ExploreBound, signal_slopes
from twins.runtime.next_basket_features import CANDIDATE_INPUTS, candidate_inputs

TASK = "next_basket_net"
NEIGHBOURS_FILE = "neighbours.npz"
EXPLORE_FILE = "explore.npz"
#: items of the fixed order every history's candidates hold, and the most the neighbour signal adds at first
#: (``twins.runtime.next_basket_candidates``); at least the export's k
PREFIX = 256


def _example(n_items: int) -> list[list[list[int]]]:
    """Two histories of item indices to trace the graph with (any vocabulary of one item or more)."""
    return [[[i % n_items for i in basket] for basket in history] for history in ([[0, 1], [2]], [[3], [1, 4], [5]])]


def export_nbr_net(estimator: NeuralNextBasket, out_dir: str | Path, *, k: int = 100, name: str = "nbr-net",
                   version: str = "1", metrics: Mapping[str, float] | None = None, run_id: str | None = None,
                   overwrite: bool = False, provenance: Mapping[str, Any] | None = None) -> Path:
    """Export, check parity on real training histories (batch sizes 1, 3 and 17) and return the bundle folder.
    Item ids are stored as strings; ``k`` (the most items a request may ask for) is capped at the number of items."""
    if not hasattr(estimator, "net_"):
        raise ValueError("the estimator is not fitted; call fit(histories, targets) first")
    vocabulary = [str(item) for item in estimator.items_]
    if len(set(vocabulary)) != len(vocabulary):
        raise ValueError("item ids collide once converted to str; use ids with distinct string forms")
    n = len(vocabulary)
    graph = CandidateScores(copy.deepcopy(estimator.net_).float().cpu().eval())
    index = estimator.neighbours_
    top_k = min(k, n)
    prefix = min(max(PREFIX, top_k), n)
    manifest = {"name": name, "version": version, "task": TASK, "model": "RepeatExploreNet", "vocabulary": vocabulary,
                "preprocessing": {"max_baskets": estimator.max_baskets, "neighbours": NEIGHBOURS_FILE,
                                  "explore": EXPLORE_FILE, "top_k": top_k, "prefix": prefix,
                                  "unknown_items": "dropped", "basket_order": "newest_first", "pad_index": n},
                "params": {k_: v for k_, v in estimator.get_params().items() if k_ not in ("checkpoint_dir", "device")},
                "metrics": dict(metrics or {}), "training_run_id": run_id,
                **(provenance or {})}  # data_source, data_until: twins.provenance
    # probe inputs: the first training users' own histories, rebuilt from the index (item indices)
    histories = [_history_of(index, r) for r in range(min(1000, index.n_users))]
    static, norms = _signal_free(graph.net)
    layers = graph.net.prior
    signal = signal_slopes(layers[0].weight.detach().double().numpy(), layers[2].weight.detach().double().numpy()[0],
                           10.0)  # the network feeds the neighbour signal times 10
    order = ExploreBound(static, norms, 0.0, signal).order[:prefix]

    def inputs(rows: list) -> tuple[torch.Tensor, ...]:
        signals = [index.signal(r) for r in index.neighbour_rows(rows)]
        chosen = [np.flatnonzero(signal.any(0))[:prefix] for signal in signals]  # some signalled items
        feeds, _ = candidate_inputs(rows, signals, chosen, [order] * len(rows), n, estimator.max_baskets)
        return tuple(torch.from_numpy(feeds[name]) for name in CANDIDATE_INPUTS)

    with torch.no_grad():
        users = torch.cat([graph(*inputs(histories[s:s + 100]))[1] for s in range(0, len(histories), 100)])
    rho = float(users.double().norm(dim=1).median()) if len(users) else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        npz, explore = Path(tmp) / NEIGHBOURS_FILE, Path(tmp) / EXPLORE_FILE
        index.save(npz)
        np.savez(explore, static=static, norms=norms, rho=np.array(rho), signal=signal)
        path = export_bundle(graph, inputs(_example(n)), out_dir, manifest,
                             input_names=list(CANDIDATE_INPUTS), output_names=["scores", "user"],
                             dynamic_axes={"positions": {0: "batch", 1: "baskets", 2: "width"},
                                           "items": {0: "batch", 1: "distinct"}, "own_signal": {0: "batch", 1: "distinct"},
                                           "others": {0: "batch", 1: "others"}, "other_signal": {0: "batch", 1: "others"}},
                             overwrite=overwrite, extra_files={NEIGHBOURS_FILE: npz, EXPLORE_FILE: explore})
    check_parity(graph, path, [inputs(histories[:size]) for size in (1, 3, 17) if size <= len(histories)])
    return path


def _signal_free(net) -> tuple[np.ndarray, np.ndarray]:
    """Per item, the score of an empty history (the signal-free prior plus the bias: ``u`` is zero) and the length
    of its output embedding."""
    n = net.n_items
    empty = torch.full((1, 1, 1), n), torch.full((1, 1), n), torch.zeros(1, 2 * n)
    with torch.no_grad():
        static = net(*empty)[0].double().numpy()
        norms = net.embed_out.weight.double().norm(dim=1).numpy()
    return static, norms


def _history_of(index, row: int) -> list[list[int]]:
    """A one-basket history holding training user ``row``'s items (enough to probe the graph)."""
    lo, hi = index.vectors[0][row], index.vectors[0][row + 1]
    items = index.vectors[1][lo:hi].tolist()
    return [items[: len(items) // 2] or items, items[len(items) // 2:]]
