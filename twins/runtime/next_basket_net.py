"""Runtime for ``next_basket_net`` bundles (``twins.models.nbr_net_export``): raw purchase histories in, top-k
items out. numpy and onnxruntime only."""

from pathlib import Path

import numpy as np

from twins.runtime.bundle import Bundle, BundleError, need, need_strings
from twins.runtime.next_basket_candidates import ExploreBound, best
from twins.runtime.next_basket_features import CANDIDATE_INPUTS, NeighbourIndex, by_shape, candidate_inputs

Answer = list[tuple[str, float]]


class NeighbourNextBasketBundle(Bundle):
    """Top-k next-basket items from the repeat-explore network. Unknown item ids are dropped (their basket still
    counts); a history without a known item gets the popular and trending items; only the last ``max_baskets``
    baskets enter the network, the neighbour search uses the whole history.

    The graph scores a history's candidates only (``twins.runtime.next_basket_candidates``: its items, the first
    ``prefix`` items of a fixed order, the items its neighbour signal lifts to them); their top-k is returned when
    it provably is the top-k over all items, else the history is scored again with every item that could still
    beat it, so the answer is always the network's top-k."""

    def __init__(self, path: Path, manifest: dict, session) -> None:
        super().__init__(path, manifest, session)
        where = self.manifest_path
        self.vocabulary = need_strings(manifest, "vocabulary", where, unique=True)
        self.max_baskets = need(manifest, "preprocessing.max_baskets", int, where)
        self.top_k = need(manifest, "preprocessing.top_k", int, where)
        self.prefix = need(manifest, "preprocessing.prefix", int, where)
        files = {key: need(manifest, f"preprocessing.{key}", str, where) for key in ("neighbours", "explore")}
        n = len(self.vocabulary)
        if self.max_baskets < 1 or not 1 <= self.top_k <= self.prefix <= n:
            raise BundleError(f"{where}: preprocessing needs max_baskets >= 1 and 1 <= top_k <= prefix <= {n} items "
                              f"(got {self.max_baskets}, {self.top_k}, {self.prefix}); re-export the bundle")
        for key, name in files.items():
            if name not in manifest.get("files", {}):  # listed: load() checked it is inside and its sha256
                raise BundleError(f"{where}: files does not list {name!r}, preprocessing.{key}'s file; re-export "
                                  "with twins.models.nbr_net_export.export_nbr_net")
        inputs = sorted(i.name for i in session.get_inputs())
        if inputs != sorted(CANDIDATE_INPUTS):
            raise BundleError(f"{path / 'model.onnx'}: graph inputs {inputs}, this runtime feeds "
                              f"{sorted(CANDIDATE_INPUTS)}; the bundle comes from another twins version. Re-export it "
                              "with export_nbr_net")
        try:
            self.neighbours = NeighbourIndex.load(path / files["neighbours"])
            with np.load(path / files["explore"]) as f:
                self.bound = ExploreBound(f["static"], f["norms"], float(f["rho"]), f["signal"])
        except (KeyError, ValueError, OSError, EOFError) as error:  # np.load never unpickles (allow_pickle=False)
            raise BundleError(f"{path}: {files} are not a neighbour index and item bounds ({error!r}); re-export "
                              "the bundle") from None
        if self.neighbours.n_items != n or len(self.bound.order) != n:
            raise BundleError(f"{path}: {self.neighbours.n_items} items in {files['neighbours']}, "
                              f"{len(self.bound.order)} in {files['explore']}, the vocabulary {n}; the files come "
                              "from different exports. Re-export the bundle")
        self._index = {item: i for i, item in enumerate(self.vocabulary)}
        self._check_item_slots()

    def _check_item_slots(self) -> None:
        """The graph reads item ``n - 1``'s row for any index past it (the padding ``n`` included): so candidate
        ``n`` must score as ``n - 1`` and ``n - 2`` not, or the vocabulary and the graph come from different exports
        (a wider graph scores ``n`` as an item of its own, a narrower one ``n - 2`` as its last item)."""
        n = len(self.vocabulary)
        feeds, _ = candidate_inputs([[[0]]], [np.zeros((2, n), np.float32)], [np.zeros(0, np.int64)],
                                    [np.zeros(0, np.int64)], n, self.max_baskets)
        probe = feeds | {"others": np.array([[max(n - 2, 0), n - 1, n]]), "other_signal": np.zeros((1, 3, 2), np.float32)}
        scores = self.run(probe)["scores"][0, -3:] if self.accepts(probe) else None
        if scores is None or scores[2] != scores[1] or (n >= 2 and scores[0] == scores[1]):
            raise BundleError(f"{self.manifest_path}: the vocabulary's {n} items do not match the graph's item rows in "
                              "model.onnx; the manifest and the model come from different exports. Re-export the bundle")

    def _encode(self, history: list[list[str]]) -> list[list[int]]:
        if isinstance(history, str) or any(isinstance(basket, str) for basket in history):
            raise TypeError("a history is a list of baskets and a basket a list of item ids, not a string")
        return [[self._index[i] for i in dict.fromkeys(str(item) for item in basket) if i in self._index]
                for basket in history]

    def recommend(self, histories: list[list[list[str]]], k: int = 10, batch_size: int = 1) -> list[Answer]:
        """Top-``k`` ``(item id, score)`` pairs, best first (ties: vocabulary order), per history (baskets oldest
        first). One history per graph run is the fastest on one thread (BENCHMARKS.md, neural runtime); larger
        batches are grouped by shape."""
        if not 1 <= k <= self.top_k:
            raise ValueError(f"k must be in [1, {self.top_k}] (the bundle's exported top_k), got {k}")
        rows = [self._encode(h) for h in histories]
        out: list[Answer] = [[] for _ in rows]
        for batch in by_shape(rows, self.max_baskets, batch_size):
            for i, answer in zip(batch, self.top([rows[i] for i in batch], k)):
                out[i] = [(self.vocabulary[j], float(v)) for j, v in answer]
        return out

    def recommend_one(self, history: list[list[str]], k: int = 10) -> Answer:
        return self.recommend([history], k)[0]

    def _signals(self, rows: list[list[list[int]]]) -> list[np.ndarray]:
        """Each history's neighbour signal: ``NeighbourIndex.signal`` of its nearest rows."""
        return [self.neighbours.signal(r) for r in self.neighbours.neighbour_rows(rows)]

    def _choose(self, signals: list[np.ndarray], peaks: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """The items ``ExploreBound.choose`` adds to each history's candidates for its signal (and its largest
        values, when known)."""
        peaks = [None] * len(signals) if peaks is None else peaks
        return [self.bound.choose(signal, self.prefix, self.prefix, peak) for signal, peak in zip(signals, peaks)]

    def inputs(self, rows: list[list[list[int]]], signals: list[np.ndarray] | None = None,
               chosen: list[np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The graph's feeds for histories of item indices and the candidates ``[B, C]`` they score
        (``candidate_inputs``); unless given, the neighbour signals searched and the items ``ExploreBound.choose``
        picks."""
        signals = self._signals(rows) if signals is None else signals
        chosen = self._choose(signals) if chosen is None else chosen
        prefix = self.bound.order[:self.prefix]
        return candidate_inputs(rows, signals, chosen, [prefix] * len(rows), len(self.vocabulary), self.max_baskets)

    def top(self, rows: list[list[list[int]]], k: int) -> list[list[tuple[int, float]]]:
        """Top-``k`` ``(item index, score)`` per history of item indices: candidates scored, then, for a history
        whose bound is not met, a second run with the items that could still beat its k-th best."""
        signals = self._signals(rows)
        peaks = [signal.max(1) for signal in signals]
        chosen = self._choose(signals, peaks)
        out: list[list[tuple[int, float]]] = [[] for _ in rows]
        todo = list(range(len(rows)))
        while todo:
            feeds, candidates = self.inputs([rows[i] for i in todo], [signals[i] for i in todo], [chosen[i] for i in todo])
            got = self.run(feeds)
            again = []
            for i, scores, items, user in zip(todo, got["scores"], candidates, got["user"]):
                valid = items < len(self.vocabulary)
                scores, items = scores[valid], items[valid]
                pick = best(scores, items, k)
                threshold, norm = float(scores[pick[-1]]), float(np.linalg.norm(user.astype(np.float64)))
                limit = threshold - self.bound.margin(threshold, norm)
                if self.bound.outside(self.prefix, norm, peaks[i]) >= limit:
                    bound = self.bound.scores(signals[i], norm)
                    bound[items] = -np.inf
                    missing = np.flatnonzero(bound >= limit)
                    if len(missing):
                        chosen[i] = np.concatenate([chosen[i], missing])
                        again.append(i)
                        continue
                out[i] = list(zip(items[pick].tolist(), scores[pick].tolist()))
            todo = again
        return out
