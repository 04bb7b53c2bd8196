"""Runtime for ``next_basket_net`` bundles (``twins.models.nbr_net_export``): raw purchase histories in, top-k
items out. numpy and onnxruntime only."""

from pathlib import Path

from twins.runtime.bundle import Bundle, BundleError
from twins.runtime.next_basket_features import INPUTS, NeighbourIndex, by_shape, network_inputs


class NeighbourNextBasketBundle(Bundle):
    """Top-k next-basket items from the repeat-explore network. Unknown item ids are dropped (their basket still
    counts); a history without a known item gets the popular and trending items; only the last ``max_baskets``
    baskets enter the network, the neighbour search uses the whole history."""

    def __init__(self, path: Path, manifest: dict, session) -> None:
        super().__init__(path, manifest, session)
        where = path / "manifest.json"
        try:
            self.vocabulary = [str(item) for item in manifest["vocabulary"]]
            pre = manifest["preprocessing"]
            self.max_baskets = int(pre["max_baskets"])
            file = path / pre["neighbours"]
            listed = pre["neighbours"] in manifest["files"]  # then load() checked its sha256
        except (KeyError, TypeError, ValueError) as error:
            raise BundleError(f"{where}: task 'next_basket_net' needs vocabulary, preprocessing.max_baskets, "
                              f"preprocessing.neighbours and files ({error!r}); re-export with "
                              "twins.models.nbr_net_export.export_nbr_net") from None
        if not listed:
            raise BundleError(f"{where}: files does not list {pre['neighbours']!r}, the neighbour search's file; "
                              "re-export with twins.models.nbr_net_export.export_nbr_net")
        inputs = sorted(i.name for i in session.get_inputs())
        if inputs != sorted(INPUTS):
            raise BundleError(f"{path / 'model.onnx'}: graph inputs {inputs}, this runtime feeds {sorted(INPUTS)}; the "
                              "bundle comes from another twins version. Re-export it with export_nbr_net")
        self.neighbours = NeighbourIndex.load(file)
        if self.neighbours.n_items != len(self.vocabulary):
            raise BundleError(f"{file}: {self.neighbours.n_items} items, the vocabulary {len(self.vocabulary)}; "
                              "the files come from different exports. Re-export the bundle")
        self.top_k = int(manifest["outputs"][0]["shape"][1])
        self._index = {item: i for i, item in enumerate(self.vocabulary)}

    def _encode(self, history: list[list[str]]) -> list[list[int]]:
        if isinstance(history, str) or any(isinstance(basket, str) for basket in history):
            raise TypeError("a history is a list of baskets and a basket a list of item ids, not a string")
        return [[self._index[i] for i in dict.fromkeys(str(item) for item in basket) if i in self._index]
                for basket in history]

    def recommend(self, histories: list[list[list[str]]], k: int = 10,
                  batch_size: int = 1) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(item id, score)`` pairs, best first, per history (baskets oldest first). The graph's work
        is per item, so batching saves nothing on one thread and larger batches fall out of the CPU cache: one
        history per run is the fastest there (BENCHMARKS.md, neural runtime); larger batches are grouped by shape."""
        if not 1 <= k <= self.top_k:
            raise ValueError(f"k must be in [1, {self.top_k}] (the bundle's exported top_k), got {k}")
        rows = [self._encode(h) for h in histories]
        out: list[list[tuple[str, float]]] = [[] for _ in rows]
        for batch in by_shape(rows, self.max_baskets, batch_size):
            chunk = [rows[i] for i in batch]
            got = self.run(network_inputs(chunk, len(self.vocabulary), self.max_baskets)
                           | {"context": self.neighbours.context(chunk)})
            for i, scores, indices in zip(batch, got["scores"][:, :k], got["indices"][:, :k]):
                out[i] = [(self.vocabulary[j], float(v)) for v, j in zip(scores, indices)]
        return out

    def recommend_one(self, history: list[list[str]], k: int = 10) -> list[tuple[str, float]]:
        return self.recommend([history], k)[0]
