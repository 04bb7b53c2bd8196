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
  vector (``basket_weights``) is compared with every indexed training user's (all, or a seeded sample of at most
  ``max_users``: ``twins.models.nbr_net``) by Euclidean distance; the ``k`` nearest
  give two float32 vectors over the items, concatenated ``[B, 2 * n_items]``: the mean of their vectors and the
  share of them whose target (last) basket held the item. A history without a known item gets zeros; one longer
  than any training history is read as its last ``max_history`` baskets (the within-basket decay runs over the
  whole history and the groups grow with it, so the vector of a far longer history would shrink towards zero and
  its nearest users would be those with the smallest vectors, not the most alike).

The runtime feeds the exported graph the same numbers at its candidates only (``candidate_inputs``,
``NeighbourIndex.signal``; ``twins.runtime.next_basket_candidates``).
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np

from twins.runtime.next_basket_candidates import others

Histories = list[list[list[int]]]
INPUTS = ("baskets", "items", "context")  # RepeatExploreNet.forward's inputs, in its argument order
CANDIDATE_INPUTS = ("positions", "items", "own_signal", "others", "other_signal")  # the exported graph's (candidate_scores)


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


def candidate_inputs(histories: Histories, signals: list[np.ndarray], chosen: list[np.ndarray],
                     prefixes: list[np.ndarray], n_items: int, max_baskets: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The candidate graph's inputs by name (``CANDIDATE_INPUTS``; ``RepeatExploreNet.candidate_scores``) and the
    candidates ``[B, U + S]`` int64 they score: each history's items (``encode_items``; its baskets as
    ``encode_positions``), then its ``chosen`` items and the items of its ``prefixes`` entry
    (``twins.runtime.next_basket_candidates.others``), padded with ``n_items``; with each candidate's neighbour
    context from its ``signals`` entry (``NeighbourIndex.signal``; zeros at the padding)."""
    baskets, items = encode_baskets(histories, n_items, max_baskets), encode_items(histories, n_items, max_baskets)
    rest = [others(own[own < n_items], some, prefix, n_items) for own, some, prefix in zip(items, chosen, prefixes)]
    other = np.full((len(histories), max([1, *map(len, rest)])), n_items, dtype=np.int64)
    own_signal = np.zeros((*items.shape, 2), dtype=np.float32)
    other_signal = np.zeros((*other.shape, 2), dtype=np.float32)
    for r, (signal, extra) in enumerate(zip(signals, rest)):
        other[r, :len(extra)] = extra
        own = items[r][items[r] < n_items]
        own_signal[r, :len(own)] = signal.take(own, 1).T  # take: 10x faster than signal[:, own] here
        other_signal[r, :len(extra)] = signal.take(extra, 1).T
    feeds = {"positions": encode_positions(baskets, items, n_items), "items": items, "own_signal": own_signal,
             "others": other, "other_signal": other_signal}
    return feeds, np.concatenate([items, other], 1)


def encode_positions(baskets: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """``baskets`` (``encode_baskets``) with each item replaced by its position in its row of ``items``
    (``encode_items`` of the same histories, which holds every item of its baskets); padding becomes ``U``."""
    out = np.full(baskets.shape, items.shape[1], dtype=np.int64)
    for r, (row, own) in enumerate(zip(baskets, items)):
        sorter = np.argsort(own, kind="stable")
        known = row < n_items
        out[r][known] = sorter[np.searchsorted(own, row[known], sorter=sorter)]
    return out


def by_shape(histories: Histories, max_baskets: int, batch_size: int) -> list[list[int]]:
    """Positions of ``histories`` in batches of similar shape (baskets read, widest basket), so that
    ``encode_baskets`` pads each batch little."""
    recent = [h[-max_baskets:] for h in histories]
    order = sorted(range(len(histories)), key=lambda i: (len(recent[i]), max(map(len, recent[i]), default=0)))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


#: ``_ranges`` adds a shared, read-only ``arange`` of this many to its offsets (no fresh one per call) up to it
COUNTING = 1 << 17
_COUNTING = np.arange(COUNTING)
_COUNTING.flags.writeable = False


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, e) for s, e in zip(starts, ends)])`` without the Python loop."""
    lengths = ends - starts
    out = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    out += _COUNTING[:len(out)] if len(out) <= COUNTING else np.arange(len(out))
    return out


#: ``_nearest`` partitions a threshold's distances once there are more than ``SAMPLE * k``
SAMPLE = 8


def _nearest(distance: np.ndarray, k: int) -> np.ndarray:
    """``argsort(distance, kind="stable")[:k]`` by partition: the ``k`` smallest, ties to the lower index. Over
    more than ``SAMPLE * k`` distances, those up to a threshold first: twice the ``k``-th smallest's expected rank
    in a strided sample of about ``SAMPLE * k``; when at least ``k`` distances are within it, so are the ``k``
    smallest and all their ties, and only those are partitioned (4x faster on 20,000 users); else all are."""
    if k >= len(distance):
        return np.argsort(distance, kind="stable")
    if k == 0:
        return np.zeros(0, np.int64)
    within = None
    stride = len(distance) // (SAMPLE * k)
    if stride > 1:
        rank = 2 * k // stride
        within = np.flatnonzero(distance <= np.partition(distance[::stride], rank)[rank])  # ascending: ties kept in order
        within, distance = (within, distance[within]) if len(within) >= k else (None, distance)
    kth = np.partition(distance, k - 1)[k - 1]
    below = np.flatnonzero(distance < kth)
    chosen = np.concatenate([below, np.flatnonzero(distance == kth)[: k - len(below)]])
    chosen = chosen[np.argsort(distance[chosen], kind="stable")]
    return chosen if within is None else within[chosen]


def _blocks(cells: np.ndarray, touched: np.ndarray, max_cells: int, max_touched: int) -> list[slice]:
    """Consecutive query rows cut into blocks of at most ``max_cells`` distance cells and ``max_touched`` index
    entries each (a single row may exceed them)."""
    out, start, c, t = [], 0, 0, 0
    for row in range(len(cells)):
        if row > start and (c + cells[row] > max_cells or t + touched[row] > max_touched):
            out.append(slice(start, row))
            start, c, t = row, 0, 0
        c, t = c + int(cells[row]), t + int(touched[row])
    return [*out, slice(start, len(cells))] if len(cells) else out


Csr = tuple[np.ndarray, np.ndarray, np.ndarray]  # (indptr, indices, data): scipy.sparse.csr_matrix's arrays


def _widened(csr: Csr) -> Csr:
    """``csr`` with int64 pointers and indices and float64 data, as the search and the sums use them (``np.bincount``
    casts narrower keys to int64 on every call); saved narrower (``NeighbourIndex.save``)."""
    indptr, indices, data = csr
    return (np.asarray(indptr).astype(np.int64, copy=False), np.asarray(indices).astype(np.int64, copy=False),
            np.asarray(data).astype(np.float64, copy=False))


def _narrowed(array: np.ndarray) -> np.ndarray:
    """An index array as int32 when its values fit (half the bytes on disk), else as it is."""
    return array.astype(np.int32) if not len(array) or array.max() <= np.iinfo(np.int32).max else array


#: bounds of one block of the neighbour search: query rows x indexed users (float64 distances, 512 KiB: a block
#: kept in cache is 2-3x faster than one of 16 MiB) and the index entries the block's query items reach (the
#: sparse product's terms); memory never depends on the batch size
BLOCK_CELLS = 1 << 16
BLOCK_TOUCHED = 1 << 22
CONTEXT_CELLS = 1 << 20  # sums per block of the neighbour context (8 MiB of float64)
SPARSE_SUMS = 8  # NeighbourIndex._means sums a half per distinct key when it has 1/8 as many entries as sums


class NeighbourIndex:
    """The indexed training users' TIFU-KNN vectors and target baskets (both CSR, users x ``n_items``).

    Memory is linear in the non-zeros: the vectors and targets as CSR, the vectors again by item (CSC) for the
    search, and one norm per user. A batch of queries is searched in blocks (``BLOCK_CELLS``, ``BLOCK_TOUCHED``):
    the block's CSR vectors times the index's (the product summed per (query, user) in item order, as a dense
    ``[rows, users]`` block), then the ``k`` nearest per row. numpy only: the torch-free runtime
    (``twins-runtime``: numpy, onnxruntime, tokenizers) runs the same code, so the arrays are scipy.sparse's
    layout without scipy."""

    def __init__(self, vectors: Csr, targets: Csr, n_items: int, k: int, within_decay: float, group_decay: float,
                 group_size: int, max_history: int | None = None) -> None:
        self.max_history = max_history  # the longest training history; None: no cap (bundles exported before it)
        self.n_items, self.k = int(n_items), int(k)
        self.vectors, self.targets = _widened(vectors), _widened(targets)
        self.within_decay, self.group_decay, self.group_size = float(within_decay), float(group_decay), int(group_size)
        indptr, indices, data = self.vectors
        self.n_users = len(indptr) - 1
        rows = np.repeat(np.arange(self.n_users), np.diff(indptr))
        order = np.argsort(indices, kind="stable")  # CSC view: the users holding each item
        self._col_ptr = np.concatenate([[0], np.cumsum(np.bincount(indices, minlength=self.n_items))])
        self._col_rows, self._col_data = rows[order], data[order]
        self._sq_norms = np.bincount(rows, weights=data * data, minlength=self.n_users)
        self._weights: dict[int, np.ndarray] = {}

    @classmethod
    def build(cls, histories: Histories, targets: list[list[int]], n_items: int, k: int, within_decay: float,
              group_decay: float, group_size: int) -> "NeighbourIndex":
        """Index the training users' histories (item indices) and target baskets."""
        empty = (np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0))
        probe = cls(empty, empty, n_items, k, within_decay, group_decay, group_size)
        tgts = [np.array(sorted(set(t)), dtype=np.int64) for t in targets]
        indptr = np.concatenate([[0], np.cumsum([len(t) for t in tgts])]).astype(np.int64)
        indices = np.concatenate(tgts).astype(np.int64) if tgts else np.zeros(0, np.int64)
        return cls(probe.vectors_of(histories), (indptr, indices, np.ones(len(indices))), n_items, k, within_decay,
                   group_decay, group_size, max(map(len, histories), default=0))

    def _basket_weights(self, n: int) -> np.ndarray:
        if n not in self._weights:
            self._weights[n] = basket_weights(n, self.within_decay, self.group_decay, self.group_size)
        return self._weights[n]

    def vectors_of(self, histories: Histories) -> Csr:
        """The TIFU-KNN vectors of ``histories`` (each its last ``max_history`` baskets) as CSR, columns ascending:
        per item the weights of the baskets holding it (once per basket), summed oldest basket first."""
        if self.max_history:
            histories = [h[-self.max_history:] if len(h) > self.max_history else h for h in histories]
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        sizes = np.fromiter((len(b) for h in histories for b in h), np.int64, int(lengths.sum()))
        flat = np.fromiter(chain.from_iterable(chain.from_iterable(histories)), np.int64, int(sizes.sum()))
        weights = np.concatenate([np.zeros(0), *(self._basket_weights(int(n)) for n in lengths)])
        # one entry per (basket, item), deduplicated, in row, basket, then item order
        entries = np.unique(np.repeat(np.arange(len(sizes), dtype=np.int64), sizes) * self.n_items + flat)
        basket = entries // self.n_items
        keys, inverse = np.unique(np.repeat(np.arange(len(histories), dtype=np.int64), lengths)[basket] * self.n_items
                                  + entries % self.n_items, return_inverse=True)
        data = np.bincount(inverse, weights=weights[basket], minlength=len(keys))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(keys // self.n_items, minlength=len(histories)))])
        return indptr.astype(np.int64), keys % self.n_items, data

    def neighbour_rows(self, histories: Histories, exclude: list[int | None] | None = None) -> list[np.ndarray]:
        """Row indices of the ``k`` indexed users nearest to each history by Euclidean distance (ties: index
        order), never ``exclude[b]`` (history ``b``'s own row, if indexed); an empty array for a history with no
        known item. ``k`` int64 row indices per history: cheap to hold for many histories."""
        q_ptr, q_cols, q_vals = self.vectors_of(histories)
        reach = self._col_ptr[q_cols + 1] - self._col_ptr[q_cols]
        touched = np.add.reduceat(np.append(reach, 0), q_ptr[:-1]) * (np.diff(q_ptr) > 0)
        out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(histories)
        for block in _blocks(np.full(len(histories), self.n_users), touched, BLOCK_CELLS, BLOCK_TOUCHED):
            lo, hi = q_ptr[block.start], q_ptr[block.stop]
            cols, lengths = q_cols[lo:hi], reach[lo:hi]
            starts = self._col_ptr[cols]
            take = _ranges(starts, starts + lengths)
            users = self._col_rows.take(take)
            if block.stop - block.start > 1:  # one query: no row offsets
                users = np.repeat(np.repeat(np.arange(block.stop - block.start),
                                            np.diff(q_ptr[block.start:block.stop + 1])), lengths) * self.n_users + users
            dots = np.bincount(users, weights=self._col_data.take(take) * np.repeat(q_vals[lo:hi], lengths),
                               minlength=(block.stop - block.start) * self.n_users).reshape(-1, self.n_users)
            distance = np.multiply(dots, -2.0)  # float64 (dots of no entries are bincount's int64 zeros)
            distance += self._sq_norms  # minus the query's own norm: constant along the row
            for r, b in enumerate(range(block.start, block.stop)):
                if q_ptr[b + 1] == q_ptr[b]:
                    continue
                own = None if exclude is None else exclude[b]
                if own is not None:
                    distance[r, own] = np.inf
                out[b] = _nearest(distance[r], min(self.k, self.n_users - (own is not None)))
        return out

    def mean_context(self, neighbour_rows: list[np.ndarray]) -> np.ndarray:
        """``[B, 2 * n_items]`` float32 from each history's neighbour rows: their mean vector, then the share of
        them whose target held each item (see the module docstring); zeros where there are none. Summed in blocks
        of histories (``BLOCK_TOUCHED`` entries, ``CONTEXT_CELLS`` sums), so the memory beyond the answer is bounded."""
        counts = np.array([len(rows) for rows in neighbour_rows], dtype=np.int64)
        out = np.zeros((len(neighbour_rows), 2 * self.n_items), dtype=np.float32)
        reach = [np.diff(indptr)[np.concatenate([np.zeros(0, np.int64), *neighbour_rows]).astype(np.int64)]
                 for indptr, _, _ in (self.vectors, self.targets)]
        per_row = np.add.reduceat(np.append(reach[0] + reach[1], 0), np.cumsum(counts) - counts) * (counts > 0)
        for block in _blocks(np.full(len(neighbour_rows), self.n_items), per_row, CONTEXT_CELLS, BLOCK_TOUCHED):
            self._means(neighbour_rows[block], counts[block], out[block])
        return out

    def signal(self, rows: np.ndarray) -> np.ndarray:
        """``mean_context`` of one history from its neighbour ``rows``, as ``[2, n_items]`` float32 (mean vector,
        neighbours' targets): the same numbers, summed by the same code, for the runtime's candidate graph."""
        out = np.empty((1, 2 * self.n_items), dtype=np.float32)
        self._means([np.asarray(rows)], np.array([len(rows)]), out)
        return out.reshape(2, self.n_items)

    def _means(self, neighbour_rows: list[np.ndarray], counts: np.ndarray, out: np.ndarray) -> None:
        """``mean_context``'s rows for ``neighbour_rows`` (``counts`` of them each) into ``out`` ``[B, 2 * n_items]``
        float32: per half the rows' entries summed per (history, item) in float64 (neighbour order, then item order),
        divided by the count (at least 1) and rounded to float32. The sums are dense (``np.bincount`` over every
        (history, item)), or, for a half with fewer than ``1 / SPARSE_SUMS`` as many entries (the targets), per
        distinct key alike and the rest zeros."""
        chosen = np.concatenate([np.zeros(0, np.int64), *neighbour_rows]).astype(np.int64)
        n_rows, n = len(neighbour_rows), self.n_items
        scale = np.maximum(counts, 1)
        for half, (indptr, indices, data) in enumerate((self.vectors, self.targets)):
            starts, ends = indptr.take(chosen), indptr.take(chosen + 1)
            take = _ranges(starts, ends)
            keys, weights = indices.take(take), data.take(take)
            if n_rows > 1:  # one history: no offsets
                keys += np.repeat(np.repeat(np.arange(n_rows) * n, counts), ends - starts)
            part = out[:, half * n:(half + 1) * n]
            if len(keys) * SPARSE_SUMS < n_rows * n:
                keys, inverse = np.unique(keys, return_inverse=True)
                part[...] = 0.0
                part[keys // n, keys % n] = np.bincount(inverse, weights=weights) / scale[keys // n]
            else:
                np.divide(np.bincount(keys, weights=weights, minlength=n_rows * n).reshape(n_rows, n), scale[:, None],
                          out=part)

    def context(self, histories: Histories, exclude: list[int | None] | None = None) -> np.ndarray:
        """``mean_context`` of ``neighbour_rows``: the network's ``context`` input."""
        return self.mean_context(self.neighbour_rows(histories, exclude))

    def save(self, path: str | Path) -> None:
        """Into an ``.npz``: pointers and indices as int32 where they fit (``load`` widens them again, and reads the
        int64 arrays of bundles exported before alike)."""
        (vec_indptr, vec_indices, vec_data), (tgt_indptr, tgt_indices, tgt_data) = self.vectors, self.targets
        np.savez(path, vec_indptr=_narrowed(vec_indptr), vec_indices=_narrowed(vec_indices), vec_data=vec_data,
                 tgt_indptr=_narrowed(tgt_indptr), tgt_indices=_narrowed(tgt_indices), tgt_data=tgt_data,
                 params=np.array([self.n_items, self.k, self.within_decay, self.group_decay, self.group_size,
                                  self.max_history or 0]))

    @classmethod
    def load(cls, path: str | Path) -> "NeighbourIndex":
        with np.load(path) as f:
            n_items, k, within, group, size, *longest = f["params"].tolist()  # no longest: exported before it
            return cls((f["vec_indptr"], f["vec_indices"], f["vec_data"]), (f["tgt_indptr"], f["tgt_indices"], f["tgt_data"]),
                       int(n_items), int(k), within, group, int(size), int(longest[0]) if longest else None)
