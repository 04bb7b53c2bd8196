"""UP-CF@r (Faggioli, Polato, Aiolli, UMAP 2020, "Recency Aware Collaborative Filtering for Next Basket
Recommendation"): user-based collaborative filtering over recency-aware user popularity.

* ``pi_u(i)``: the share of user ``u``'s last ``recency`` baskets that contain item ``i`` (``recency=None``: all).
* ``w(u, v) = |I_u & I_v| / (|I_u| ** asymmetry * |I_v| ** (1 - asymmetry))``: asymmetric cosine between the sets
  of items the two users ever bought.
* ``score(u, i) = sum_v w(u, v) ** locality * pi_v(i)`` over the training users and ``u`` itself (``w(u, u) = 1``);
  a training user queried with its own id is counted once.

Items with equal scores are ordered by item id; only items with a positive score are returned. ``tune_upcf``
picks the three hyper-parameters on validation users' Recall@10 (the paper's grid, trimmed).
"""

from collections.abc import Hashable, Mapping, Sequence
from itertools import product
from typing import Any, Self

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator

Item = Hashable
Baskets = Sequence[Sequence[Item]]
DEFAULT_GRID: dict[str, list] = {"recency": [1, 5, 25, None], "asymmetry": [0.25, 0.5, 0.75], "locality": [1, 5, 50]}
_BLOCK = 1024


class UPCF(BaseEstimator):
    """UP-CF@r; see the module docstring."""

    def __init__(self, recency: int | None = 5, asymmetry: float = 0.5, locality: float = 5) -> None:
        self.recency = recency
        self.asymmetry = asymmetry
        self.locality = locality

    def _matrices(self, histories: Sequence[Baskets], index: Mapping[Item, int], n_cols: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(binary ever-bought matrix, recency popularity matrix) for the histories, columns ``index``."""
        rows, cols, vals, brow, bcol = [], [], [], [], []
        for r, baskets in enumerate(histories):
            recent = baskets[-self.recency:] if self.recency else baskets
            share: dict[int, float] = {}
            for basket in recent:
                for item in dict.fromkeys(basket):
                    if item in index:
                        share[index[item]] = share.get(index[item], 0.0) + 1.0 / len(recent)
            rows += [r] * len(share)
            cols += list(share)
            vals += list(share.values())
            ever = {index[item] for basket in baskets for item in basket if item in index}
            brow += [r] * len(ever)
            bcol += list(ever)
        shape = (len(histories), n_cols)
        popularity = sp.csr_matrix((vals, (rows, cols)), shape=shape)
        ever = sp.csr_matrix((np.ones(len(brow)), (brow, bcol)), shape=shape)
        return ever, popularity

    def fit(self, histories: Mapping[Hashable, Baskets]) -> Self:
        """Index the training users' histories. Sets ``items_``, ``item_index_``, ``users_``, ``ever_``,
        ``popularity_`` and ``sizes_`` (items each training user ever bought)."""
        if not (self.recency is None or (isinstance(self.recency, (int, np.integer)) and self.recency >= 1)):
            raise ValueError(f"recency must be None or an integer >= 1, got {self.recency!r}")
        if not 0.0 <= self.asymmetry <= 1.0:
            raise ValueError(f"asymmetry must be in [0, 1], got {self.asymmetry!r}")
        if not histories:
            raise ValueError("histories is empty; UP-CF@r needs training users")
        self.items_ = sorted({item for baskets in histories.values() for basket in baskets for item in basket})
        self.item_index_ = {item: j for j, item in enumerate(self.items_)}
        self.users_ = list(histories)
        self.ever_, self.popularity_ = self._matrices(list(histories.values()), self.item_index_, len(self.items_))
        self.sizes_ = np.asarray(self.ever_.sum(axis=1)).ravel()
        return self

    def scores(self, histories: Mapping[Hashable, Baskets]) -> sp.csr_matrix:
        """``[n_queries, n_items]`` scores over ``items_`` (sparse)."""
        if not hasattr(self, "ever_"):
            raise RuntimeError("UPCF is not fitted; call fit(histories) first")
        users = list(histories)
        ever, own = self._matrices(list(histories.values()), self.item_index_, len(self.items_))
        sizes = np.asarray(ever.sum(axis=1)).ravel()
        position = {u: r for r, u in enumerate(self.users_)}
        blocks = []
        for start in range(0, len(users), _BLOCK):
            stop = min(start + _BLOCK, len(users))
            overlap = (ever[start:stop] @ self.ever_.T).toarray()
            denominator = np.power(np.maximum(sizes[start:stop, None], 1.0), self.asymmetry) * np.power(
                np.maximum(self.sizes_[None, :], 1.0), 1.0 - self.asymmetry)
            weight = np.power(overlap / denominator, self.locality)
            for r in range(stop - start):
                if users[start + r] in position:
                    weight[r, position[users[start + r]]] = 0.0  # the user itself comes in through `own`
            blocks.append(sp.csr_matrix(weight) @ self.popularity_)
        neighbours = sp.vstack(blocks).tocsr() if blocks else sp.csr_matrix((0, len(self.items_)))
        return (neighbours + own).tocsr()

    def recommend(self, histories: Mapping[Hashable, Baskets], k: int) -> dict[Hashable, list[Item]]:
        """Top-``k`` positive-score items for each user of ``{user: [basket, ...]}`` (ties: item id)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores = self.scores(histories)
        out = {}
        for r, user in enumerate(histories):
            lo, hi = scores.indptr[r], scores.indptr[r + 1]
            cols, vals = scores.indices[lo:hi], scores.data[lo:hi]
            keep = vals > 0
            top = np.lexsort((cols[keep], -vals[keep]))[:k]
            out[user] = [self.items_[c] for c in cols[keep][top]]
        return out


def tune_upcf(train_histories: Mapping[Hashable, Baskets], valid_histories: Mapping[Hashable, Baskets],
              valid_targets: Mapping[Hashable, Sequence[Item]], grid: Mapping[str, list] | None = None,
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Grid search on the validation users' Recall@10. Returns ``(best params, one row per grid point)``; ties go
    to the first grid point."""
    from twins.evaluate.metrics import evaluate_rankings

    grid = {**DEFAULT_GRID, **(grid or {})}
    table, best, best_recall = [], None, -1.0
    for recency, asymmetry, locality in product(grid["recency"], grid["asymmetry"], grid["locality"]):
        params = {"recency": recency, "asymmetry": asymmetry, "locality": locality}
        model = UPCF(**params).fit(train_histories)
        recall = evaluate_rankings(model.recommend(valid_histories, 10), valid_targets, valid_histories, ks=[10])["recall@10"]
        table.append({**params, "recall@10": recall})
        if recall > best_recall:
            best, best_recall = params, recall
    return best, table
