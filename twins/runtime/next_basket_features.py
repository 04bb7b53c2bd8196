"""Raw next-basket histories -> the inputs of the repeat-explore network (``twins.models.nbr_net``), in numpy.

The same code runs when the model is trained and in the torch-free runtime, so the ONNX bundle sees exactly the
inputs the network was trained on. Histories here are lists of baskets (oldest first) of item *indices*
(``0 .. n_items - 1``); mapping ids to indices is the caller's job.

Three inputs:

* ``encode_baskets``: the last ``max_baskets`` baskets, newest first, each deduplicated, as an int64 array
  ``[B, T, L]`` padded with ``n_items``.
* ``encode_items``: the distinct items of those baskets, int64 ``[B, U]`` padded with ``n_items`` (the network
  scores a user's own items once each, not once per purchase).
* ``NeighbourIndex.context``: TIFU-KNN's neighbour signal (Hu et al., SIGIR 2020). The user's decayed-frequency
  vector (``basket_weights``) is compared with every training user's by Euclidean distance; the ``k`` nearest
  give two float32 vectors over the items, concatenated ``[B, 2 * n_items]``: the mean of their vectors and the
  share of them whose target (last) basket held the item. A history without a known item gets zeros; one longer
  than any training history is read as its last ``max_history`` baskets (the within-basket decay runs over the
  whole history and the groups grow with it, so the vector of a far longer history would shrink towards zero and
  its nearest users would be those with the smallest vectors, not the most alike).
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np

Histories = list[list[list[int]]]
INPUTS = ("baskets", "items", "context")  # the graph's inputs, in the network's argument order


def basket_weights(n: int, within_decay: float, group_decay: float, group_size: int) -> np.ndarray:
    """Weight of each of ``n`` baskets (oldest first) in a TIFU-KNN user vector, as in the authors' code: baskets
    cut oldest first into ``group_size`` groups (one per basket when fewer), basket ``j`` weighted
    ``within_decay ** (n - 1 - j)``, group ``g`` ``group_decay ** (group_size - 1 - g)``, each group averaged
    and the sum divided by the number of groups formed. The vector is ``sum_j weight[j] * onehot(basket j)``."""
    if n == 0:
        return np.zeros(0)
    j = np.arange(n)
    within = within_decay ** (n - 1 - j).astype(float)
    if n < group_size:
        group, size, n_groups = j, np.ones(n), n
    else:
        base, extra = divmod(n, group_size)
        n_small = group_size - extra  # the oldest groups hold `base` baskets, the newest `extra` groups base + 1
        cut = n_small * base
        group = np.where(j < cut, j // base, n_small + (j - cut) // (base + 1))
        size = np.where(j < cut, base, base + 1).astype(float)
        n_groups = group_size
    return within * group_decay ** (group_size - 1 - group).astype(float) / size / n_groups


def encode_baskets(histories: Histories, n_items: int, max_baskets: int) -> np.ndarray:
    """``[B, T, L]`` int64: the last ``max_baskets`` baskets of each history, newest first, items deduplicated
    within a basket, padded with ``n_items``. ``T`` and ``L`` are the batch's longest (at least 1)."""
    recent = [[list(dict.fromkeys(basket)) for basket in reversed(history[-max_baskets:])] for history in histories]
    t = max([1, *(len(h) for h in recent)])
    width = max([1, *(len(b) for h in recent for b in h)])
    out = np.full((len(histories), t, width), n_items, dtype=np.int64)
    for r, history in enumerate(recent):
        for s, basket in enumerate(history):
            out[r, s, : len(basket)] = basket
    return out


def encode_items(histories: Histories, n_items: int, max_baskets: int) -> np.ndarray:
    """``[B, U]`` int64: the distinct items of each history's last ``max_baskets`` baskets (newest first, in
    first-seen order), padded with ``n_items``. ``U`` is the batch's most (at least 1)."""
    distinct = [list(dict.fromkeys(chain.from_iterable(reversed(history[-max_baskets:])))) for history in histories]
    out = np.full((len(histories), max([1, *map(len, distinct)])), n_items, dtype=np.int64)
    for r, items in enumerate(distinct):
        out[r, : len(items)] = items
    return out


def network_inputs(histories: Histories, n_items: int, max_baskets: int) -> dict[str, np.ndarray]:
    """The network's history inputs by name: ``baskets`` and ``items``."""
    return {"baskets": encode_baskets(histories, n_items, max_baskets),
            "items": encode_items(histories, n_items, max_baskets)}


def by_shape(histories: Histories, max_baskets: int, batch_size: int) -> list[list[int]]:
    """Positions of ``histories`` in batches of similar shape (baskets read, widest basket), so that
    ``encode_baskets`` pads each batch little."""
    recent = [h[-max_baskets:] for h in histories]
    order = sorted(range(len(histories)), key=lambda i: (len(recent[i]), max(map(len, recent[i]), default=0)))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, e) for s, e in zip(starts, ends)])`` without the Python loop."""
    lengths = ends - starts
    return np.arange(int(lengths.sum())) + np.repeat(starts - np.cumsum(lengths) + lengths, lengths)


def _nearest(distance: np.ndarray, k: int) -> np.ndarray:
    """``argsort(distance, kind="stable")[:k]`` by partition: the ``k`` smallest, ties to the lower index."""
    if k >= len(distance):
        return np.argsort(distance, kind="stable")
    if k == 0:
        return np.zeros(0, np.int64)
    kth = np.partition(distance, k - 1)[k - 1]
    below = np.flatnonzero(distance < kth)
    chosen = np.concatenate([below, np.flatnonzero(distance == kth)[: k - len(below)]])
    return chosen[np.argsort(distance[chosen], kind="stable")]


class NeighbourIndex:
    """The training users' TIFU-KNN vectors and target baskets (both CSR over ``n_items`` columns)."""

    def __init__(self, vectors: tuple[np.ndarray, np.ndarray, np.ndarray], targets: tuple[np.ndarray, np.ndarray, np.ndarray],
                 n_items: int, k: int, within_decay: float, group_decay: float, group_size: int,
                 max_history: int | None = None) -> None:
        self.max_history = max_history  # the longest training history; None: no cap (bundles exported before it)
        self.vectors = tuple(np.asarray(a) for a in vectors)
        self.targets = tuple(np.asarray(a) for a in targets)
        self.n_items, self.k = int(n_items), int(k)
        self.within_decay, self.group_decay, self.group_size = float(within_decay), float(group_decay), int(group_size)
        indptr, indices, data = self.vectors
        self.n_users = len(indptr) - 1
        rows = np.repeat(np.arange(self.n_users), np.diff(indptr))
        order = np.argsort(indices, kind="stable")  # CSC view: the users holding each item
        self._col_ptr = np.concatenate([[0], np.cumsum(np.bincount(indices, minlength=self.n_items))])
        self._col_rows, self._col_data = rows[order], data[order]
        self._sq_norms = np.bincount(rows, weights=data * data, minlength=self.n_users)

    @classmethod
    def build(cls, histories: Histories, targets: list[list[int]], n_items: int, k: int, within_decay: float,
              group_decay: float, group_size: int) -> "NeighbourIndex":
        """Index the training users' histories (item indices) and target baskets."""
        probe = cls((np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0)), (np.zeros(1, np.int64), np.zeros(0, np.int64),
                    np.zeros(0)), n_items, k, within_decay, group_decay, group_size)
        vecs = [probe.vector(h) for h in histories]
        tgts = [(np.array(sorted(set(t)), dtype=np.int64), np.ones(len(set(t)))) for t in targets]
        return cls(_stack(vecs), _stack(tgts), n_items, k, within_decay, group_decay, group_size,
                   max(map(len, histories), default=0))

    def vector(self, history: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """The sparse TIFU-KNN vector ``(item indices ascending, values)`` of one history (its last
        ``max_history`` baskets)."""
        if self.max_history and len(history) > self.max_history:
            history = history[-self.max_history:]
        sizes = [len(basket) for basket in history]
        weights = basket_weights(len(history), self.within_decay, self.group_decay, self.group_size)
        flat = np.fromiter(chain.from_iterable(history), np.int64, sum(sizes))
        # one entry per (basket, item), deduplicated, in basket then item order
        entries = np.unique(np.repeat(np.arange(len(history), dtype=np.int64), sizes) * self.n_items + flat)
        cols, inverse = np.unique(entries % self.n_items, return_inverse=True)
        return cols, np.bincount(inverse, weights=weights[entries // self.n_items], minlength=len(cols))

    def neighbours(self, history: list[list[int]], exclude: int | None = None) -> np.ndarray:
        """Row indices of the ``k`` training users nearest to ``history`` (ties: training order), never
        ``exclude`` (a training user's own row)."""
        cols, values = self.vector(history)
        starts, ends = self._col_ptr[cols], self._col_ptr[cols + 1]
        take = _ranges(starts, ends)
        dots = np.bincount(self._col_rows[take], weights=self._col_data[take] * np.repeat(values, ends - starts),
                           minlength=self.n_users)
        distance = self._sq_norms - 2.0 * dots  # minus the query's own norm: constant along the row
        if exclude is not None:
            distance[exclude] = np.inf
        return _nearest(distance, min(self.k, self.n_users - (exclude is not None)))

    def neighbour_rows(self, histories: Histories, exclude: list[int | None] | None = None) -> list[np.ndarray]:
        """``neighbours`` of each history (an empty array for one with no known item); ``exclude[b]`` is history
        ``b``'s own training row, if any. ``k`` int64 row indices per history: cheap to hold for many histories."""
        return [self.neighbours(h, None if exclude is None else exclude[b]) if any(len(basket) for basket in h)
                else np.zeros(0, np.int64) for b, h in enumerate(histories)]

    def mean_context(self, neighbour_rows: list[np.ndarray]) -> np.ndarray:
        """``[B, 2 * n_items]`` float32 from each history's neighbour rows: their mean vector, then the share of
        them whose target held each item (see the module docstring); zeros where there are none."""
        out = np.zeros((len(neighbour_rows), 2 * self.n_items), dtype=np.float32)
        for b, rows in enumerate(neighbour_rows):
            if not len(rows):
                continue
            for half, (indptr, indices, data) in enumerate((self.vectors, self.targets)):
                take = _ranges(indptr[rows], indptr[rows + 1])
                out[b, half * self.n_items:(half + 1) * self.n_items] = np.bincount(
                    indices[take], weights=data[take], minlength=self.n_items) / len(rows)
        return out

    def context(self, histories: Histories, exclude: list[int | None] | None = None) -> np.ndarray:
        """``mean_context`` of ``neighbour_rows``: the network's ``context`` input."""
        return self.mean_context(self.neighbour_rows(histories, exclude))

    def save(self, path: str | Path) -> None:
        np.savez(path, vec_indptr=self.vectors[0], vec_indices=self.vectors[1], vec_data=self.vectors[2],
                 tgt_indptr=self.targets[0], tgt_indices=self.targets[1], tgt_data=self.targets[2],
                 params=np.array([self.n_items, self.k, self.within_decay, self.group_decay, self.group_size,
                                  self.max_history or 0]))

    @classmethod
    def load(cls, path: str | Path) -> "NeighbourIndex":
        with np.load(path) as f:
            n_items, k, within, group, size, *longest = f["params"].tolist()  # no longest: exported before it
            return cls((f["vec_indptr"], f["vec_indices"], f["vec_data"]), (f["tgt_indptr"], f["tgt_indices"], f["tgt_data"]),
                       int(n_items), int(k), within, group, int(size), int(longest[0]) if longest else None)


def _stack(rows: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR arrays from per-row (indices, values)."""
    indptr = np.concatenate([[0], np.cumsum([len(i) for i, _ in rows])]).astype(np.int64)
    indices = np.concatenate([i for i, _ in rows]).astype(np.int64) if rows else np.zeros(0, np.int64)
    data = np.concatenate([v for _, v in rows]).astype(np.float64) if rows else np.zeros(0)
    return indptr, indices, data
