"""Which items the next-basket graph scores for a history, and the bound that makes its top-k the top-k over
all items (``twins.models.nbr_net.RepeatExploreNet.candidate_scores``). numpy only.

An item that is not the user's and has no neighbour signal scores ``static[i] + <u, out[i]>``: ``static`` the
network's signal-free prior plus the item bias (the same for every user: the score of an empty history), ``u`` the
user's embedding, ``out[i]`` the item's output embedding. By Cauchy-Schwarz that is at most
``static[i] + |u| norms[i]`` (``norms[i] = |out[i]|``). An item with a neighbour signal ``(a, b)`` (both >= 0) adds
at most ``signal . (a, b)`` to it: the prior MLP's change from ``(a, b) = 0``, bounded per hidden unit by the
largest slope of GELU (``GELU_SLOPE``) times the first layer's weights on the two inputs times the second's
(``signal_slopes``). With 300 neighbours most of the catalogue has a signal (56 % on the 100k-customer generated
log), so the signalled items are bounded too instead of all scored.

The runtime scores the user's items, the first ``prefix`` items of a fixed order (``static + rho * norms``
descending, ``rho`` a typical ``|u|``) and the items the neighbour signal lifts to that prefix's bound
(``ExploreBound.choose``, at most ``prefix`` of them). Every other item scores at most
``ExploreBound.outside(prefix, |u|, largest signal)``; when the k-th best candidate beats that by ``margin``
(float32 rounding), the candidates' top-k is the top-k over all items. Else each item's own bound
(``ExploreBound.scores``) names the items that could still beat it, and the history is scored again with them
added: its k-th best can only rise, so the second run's answer is exact.
"""

from __future__ import annotations

import numpy as np

#: float32 rounding allowance of the scores, relative to the size of the terms summed (``ExploreBound.margin``)
TOLERANCE = 1e-4
#: the largest |d/dx GELU(x)| (exact GELU, at x = sqrt(2): 1.12890...), rounded up
GELU_SLOPE = 1.129
#: ``ExploreBound.choose`` looks at the items of a run of the order instead of all when the run holds at most
#: ``1 / WINDOW`` of them
WINDOW = 8


def signal_slopes(first: np.ndarray, second: np.ndarray, scale: float) -> np.ndarray:
    """How much the prior MLP ``second @ GELU(first @ x + c) + d`` can rise per unit of each of its last two inputs
    (the neighbour signal, fed times ``scale``): ``scale * GELU_SLOPE * sum_h |second[h]| |first[h, j]|``.
    ``first`` ``[H, 4]``, ``second`` ``[H]``."""
    return scale * GELU_SLOPE * (np.abs(second)[:, None] * np.abs(first[:, 2:4])).sum(0)


class ExploreBound:
    """Items in the fixed order and bounds on the score of the items outside a history's candidates (module
    docstring). A history's neighbour ``signal`` is ``NeighbourIndex.signal``'s ``[2, n_items]``."""

    def __init__(self, static: np.ndarray, norms: np.ndarray, rho: float, signal: np.ndarray) -> None:
        static, norms = np.asarray(static, dtype=np.float64), np.asarray(norms, dtype=np.float64)
        self.signal = np.asarray(signal, dtype=np.float64)
        if static.shape != norms.shape or static.ndim != 1 or self.signal.shape != (2,) or not (
                np.isfinite(static).all() and np.isfinite(norms).all() and (norms >= 0).all() and np.isfinite(rho)
                and rho >= 0 and np.isfinite(self.signal).all() and (self.signal >= 0).all()):
            raise ValueError("static and norms must be finite vectors of one length, signal two numbers; norms, rho "
                             "and signal >= 0")
        self.static, self.norms, self.rho = static, norms, float(rho)
        key = static + self.rho * norms
        self.order = np.argsort(-key, kind="stable")
        sorted_norms = norms[self.order]
        # after position p: the largest key, and the largest and smallest norm (suffix maxima / minima); -inf / 0 at n
        self._key = np.append(key[self.order], -np.inf)
        self._max_norm = np.append(np.maximum.accumulate(sorted_norms[::-1])[::-1], 0.0)
        self._min_norm = np.append(np.minimum.accumulate(sorted_norms[::-1])[::-1], 0.0)
        self._rho_key = key
        self._rising_key = -self._key  # ascending: searchsorted finds where the keys fall below a value
        self._scale = float(np.abs(static).max(initial=0.0)), float(norms.max(initial=0.0))

    def after(self, position: int, user_norm: float) -> float:
        """An upper bound of ``static[i] + user_norm * norms[i]`` over the items at ``order[position:]``:
        ``key + (|u| - rho) norm`` with the norm the suffix's largest (``|u| > rho``) or smallest."""
        norm = self._max_norm[position] if user_norm > self.rho else self._min_norm[position]
        return float(self._key[position] + (user_norm - self.rho) * norm)

    def outside(self, position: int, user_norm: float, signal_peak: np.ndarray) -> float:
        """An upper bound of the score of every item at ``order[position:]`` that is not the user's, whatever its
        neighbour signal, for a signal whose largest values are ``signal_peak`` ``[2]``."""
        return self.after(position, user_norm) + float(signal_peak @ self.signal)

    def scores(self, signal: np.ndarray, user_norm: float) -> np.ndarray:
        """An upper bound of the score of each item that is not the user's ``[n_items]``."""
        return self.static + user_norm * self.norms + self.signal @ signal

    def choose(self, signal: np.ndarray, position: int, count: int, peak: np.ndarray | None = None) -> np.ndarray:
        """The items outside ``order[:position]`` whose bound at ``|u| = rho`` reaches that prefix's (the signal
        lifts them), ascending, or the ``count`` highest when more: scored at first besides the user's items and
        the prefix. Only the run of the order whose signal-free key lies within the largest lift of that bound
        (from ``peak``, the signal's largest values ``[2]``; ``signal.max(1)`` unless given) can reach it: when
        that run is short (at most ``n_items / WINDOW``), only its items are looked at."""
        if position >= len(self.order):  # no item outside the prefix
            return np.zeros(0, np.int64)
        threshold = self.after(position, self.rho)
        peak = signal.max(1) if peak is None else peak
        lift = float(peak @ self.signal) * (1 + TOLERANCE) + TOLERANCE  # any item's signal term, rounding included
        stop = max(position, int(np.searchsorted(self._rising_key, lift - threshold, side="right")))
        if stop - position <= len(self.order) // WINDOW:
            items = self.order[position:stop]
            key = self._rho_key.take(items) + self.signal @ signal.take(items, 1)
            keep = np.flatnonzero(key >= threshold)
            chosen = items.take(keep)
            ascending = np.argsort(chosen)
            chosen, key = chosen.take(ascending), key.take(keep.take(ascending))
        else:
            key = self._rho_key + self.signal @ signal
            key[self.order[:position]] = -np.inf
            chosen = np.flatnonzero(key >= threshold)
            key = key.take(chosen)
        return chosen if len(chosen) <= count else chosen[np.argpartition(-key, count - 1)[:count]]

    def margin(self, threshold: float, user_norm: float) -> float:
        """How far below ``threshold`` a bound must lie to survive the float32 rounding of the scores."""
        return TOLERANCE * (1.0 + abs(threshold) + self._scale[0] + user_norm * self._scale[1] + float(self.signal.sum()))


def others(own: np.ndarray, signalled: np.ndarray, prefix: np.ndarray, n_items: int) -> np.ndarray:
    """The candidates besides the user's items ``own``: the chosen ``signalled`` items, then the ``prefix`` items,
    each once and none of ``own``."""
    taken = np.zeros(n_items + 1, dtype=bool)
    taken[own] = True
    first = signalled[~taken[signalled]]
    taken[first] = True
    return np.concatenate([first, prefix[~taken[prefix]]])


def best(scores: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` best ``scores`` (``k <= len(scores)``), best first, ties to the lower item index
    (as ``argsort(-scores, kind="stable")`` over all items)."""
    if len(scores) > k:
        pick = np.flatnonzero(scores >= np.partition(scores, len(scores) - k)[len(scores) - k])
    else:
        pick = np.arange(len(scores))
    return pick[np.lexsort((items[pick], -scores[pick]))][:k]
