"""Runtime for ``next_basket_net`` bundles (``twins.models.nbr_net_export``): raw purchase histories in, top-k
items out. numpy and onnxruntime only."""

from pathlib import Path

from twins.runtime.bundle import Bundle, BundleError, need, need_strings
from twins.runtime.next_basket_features import INPUTS, NeighbourIndex, by_shape, network_inputs


class NeighbourNextBasketBundle(Bundle):
    """Top-k next-basket items from the repeat-explore network. Unknown item ids are dropped (their basket still
    counts); a history without a known item gets the popular and trending items; only the last ``max_baskets``
    baskets enter the network, the neighbour search uses the whole history."""

    def __init__(self, path: Path, manifest: dict, session) -> None:
        super().__init__(path, manifest, session)
        where = self.manifest_path
        self.vocabulary = need_strings(manifest, "vocabulary", where, unique=True)
        self.max_baskets = need(manifest, "preprocessing.max_baskets", int, where)
        neighbours = need(manifest, "preprocessing.neighbours", str, where)
        if self.max_baskets < 1:
            raise BundleError(f"{where}: preprocessing.max_baskets must be >= 1; re-export the bundle")
        if neighbours not in manifest.get("files", {}):  # listed: load() checked it is inside and its sha256
            raise BundleError(f"{where}: files does not list {neighbours!r}, the neighbour search's file; "
                              "re-export with twins.models.nbr_net_export.export_nbr_net")
        inputs = sorted(i.name for i in session.get_inputs())
        if inputs != sorted(INPUTS):
            raise BundleError(f"{path / 'model.onnx'}: graph inputs {inputs}, this runtime feeds {sorted(INPUTS)}; the "
                              "bundle comes from another twins version. Re-export it with export_nbr_net")
        self.top_k = self.graph_width("scores")
        n = len(self.vocabulary)
        if self.graph_width("context") != 2 * n or self.top_k > n:
            raise BundleError(f"{where}: the vocabulary's {n} items do not match the graph in model.onnx (context "
                              f"width {self.graph_width('context')} = 2 x items, top {self.top_k}); the manifest and "
                              "the model come from different exports. Re-export the bundle")
        try:
            self.neighbours = NeighbourIndex.load(path / neighbours)
        except (KeyError, ValueError, OSError, EOFError) as error:  # np.load never unpickles (allow_pickle=False)
            raise BundleError(f"{path / neighbours}: not a neighbour index ({error!r}); re-export the bundle") from None
        if self.neighbours.n_items != n:
            raise BundleError(f"{path / neighbours}: {self.neighbours.n_items} items, the vocabulary {n}; "
                              "the files come from different exports. Re-export the bundle")
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
