"""Load ONNX bundles and answer with plain Python values. Imports only numpy, onnxruntime and the standard
library's json, hashlib and pathlib: never torch, polars or mlflow (DESIGN.md section 6)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
MIN_OPSET = 17
REQUIRED_KEYS = ("name", "version", "task", "opset", "inputs", "outputs", "model_sha256")


class BundleError(Exception):
    """A bundle that cannot be used: the message names the file, what is wrong and the fix."""


class Bundle:
    """A verified bundle: its folder, manifest and onnxruntime session."""

    def __init__(self, path: Path, manifest: dict, session: ort.InferenceSession) -> None:
        self.path = path
        self.manifest = manifest
        self.session = session

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model; returns ``{output name: array}``."""
        names = [output["name"] for output in self.manifest["outputs"]]
        return dict(zip(names, self.session.run(names, feeds)))


class NextBasketBundle(Bundle):
    """Top-k next-basket items for histories of string item ids (task ``next_basket``).

    Preprocessing, as recorded in the manifest: item ids map to ``vocabulary`` index + 1 (unknown ids are
    dropped), each basket is deduplicated, baskets are flattened oldest first, the last ``max_history_items``
    entries are kept and rows are padded with 0. An empty history gets the globally popular items.
    """

    INPUT = "history"
    OUTPUTS = ("scores", "indices")

    def __init__(self, path: Path, manifest: dict, session: ort.InferenceSession) -> None:
        super().__init__(path, manifest, session)
        manifest_path = path / MANIFEST_FILE
        try:
            self.vocabulary: list[str] = [str(item) for item in manifest["vocabulary"]]
            self.max_history_items = int(manifest["preprocessing"]["max_history_items"])
        except (KeyError, TypeError, ValueError) as error:
            raise BundleError(
                f"{manifest_path}: task 'next_basket' needs 'vocabulary' (a list) and "
                f"'preprocessing.max_history_items' (an int); missing or invalid: {error!r}. Re-export the bundle."
            ) from None
        if self.max_history_items < 1:
            raise BundleError(f"{manifest_path}: preprocessing.max_history_items must be >= 1; re-export the bundle")
        if [value["name"] for value in manifest["inputs"]] != [self.INPUT] or tuple(
            value["name"] for value in manifest["outputs"]
        ) != self.OUTPUTS:
            raise BundleError(
                f"{manifest_path}: task 'next_basket' needs input {self.INPUT!r} and outputs {self.OUTPUTS}; "
                "re-export with twins.models.topfreq_torch.export_gp_topfreq"
            )
        self.top_k = int(manifest["outputs"][0]["shape"][1])
        self._index = {item: i + 1 for i, item in enumerate(self.vocabulary)}

    def _encode(self, history: list[list[str]]) -> list[int]:
        if isinstance(history, str) or any(isinstance(basket, str) for basket in history):
            raise TypeError("a history is a list of baskets and a basket a list of item ids, not a string")
        indices = [
            self._index[item]
            for basket in history
            for item in dict.fromkeys(str(item) for item in basket)
            if item in self._index
        ]
        return indices[-self.max_history_items :]

    def recommend(
        self, histories: list[list[list[str]]], k: int = 10, batch_size: int = 1024
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(item id, score)`` pairs, best first, for each history (a list of baskets, oldest first).

        Runs onnxruntime on ``batch_size`` histories at a time. ``k`` may not exceed the exported ``top_k``.
        """
        if not 1 <= k <= self.top_k:
            raise ValueError(f"k must be in [1, {self.top_k}] (the bundle's exported top_k), got {k}")
        rows = [self._encode(history) for history in histories]
        results: list[list[tuple[str, float]]] = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = np.zeros((len(chunk), max(1, *(len(row) for row in chunk))), dtype=np.int64)
            for i, row in enumerate(chunk):
                batch[i, : len(row)] = row
            out = self.run({self.INPUT: batch})
            for scores, indices in zip(out["scores"][:, :k], out["indices"][:, :k]):
                results.append([(self.vocabulary[j - 1], float(s)) for s, j in zip(scores, indices)])
        return results

    def recommend_one(self, history: list[list[str]], k: int = 10) -> list[tuple[str, float]]:
        """Top-``k`` ``(item id, score)`` pairs for one history."""
        return self.recommend([history], k)[0]


TASKS: dict[str, type[Bundle]] = {"next_basket": NextBasketBundle}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: not found; a bundle is a folder with {MODEL_FILE} and {MANIFEST_FILE}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{manifest_path}: not valid JSON ({error}); re-export the bundle") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise BundleError(f"{manifest_path}: missing keys {missing}; re-export the bundle")
    if not isinstance(manifest["opset"], int) or manifest["opset"] < MIN_OPSET:
        raise BundleError(
            f"{manifest_path}: opset {manifest['opset']!r} is not supported; bundles need ONNX opset >= {MIN_OPSET}. "
            f"Re-export with opset >= {MIN_OPSET}"
        )
    if manifest["task"] not in TASKS:
        raise BundleError(
            f"{manifest_path}: unknown task {manifest['task']!r}; this runtime serves {sorted(TASKS)}. "
            "Upgrade twins or export for a supported task"
        )
    return manifest


def _verify_files(path: Path, manifest: dict) -> None:
    """Every file that the manifest's ``files`` lists (what the preprocessing reads) is in the folder, unmodified."""
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise BundleError(f"{path / MANIFEST_FILE}: files must map file names to their sha256; re-export the bundle")
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{file}: missing; the bundle's preprocessing needs it. Copy the whole bundle folder "
                              "or re-export it")
        if sha256_file(file) != digest:
            raise BundleError(f"{file}: sha256 does not match {MANIFEST_FILE}'s files[{name!r}]; the file was "
                              "modified. Restore it or re-export the bundle")


def load(path: str | Path, threads: int | None = None) -> Bundle:
    """Load and verify a bundle folder: manifest, sha256 of ``model.onnx`` and of the files the manifest lists, opset,
    input and output names.

    ``path`` may also be a registry URI, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: the version is
    downloaded once to a local cache (``twins.runtime.registry``, the only place mlflow is imported) and
    verified the same way. ``threads``: onnxruntime's intra-op threads (default: one per core; a service that
    runs many small requests at once does better with 1). Returns the task's bundle class (``NextBasketBundle``
    for ``next_basket``); raises ``BundleError``.
    """
    if isinstance(path, str) and path.startswith("models:/"):
        from twins.runtime.registry import fetch

        path = fetch(path)[0]
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a folder; pass the bundle folder holding {MODEL_FILE} and {MANIFEST_FILE}")
    manifest = _read_manifest(path)
    model_path = path / MODEL_FILE
    if not model_path.is_file():
        raise BundleError(f"{model_path}: not found; copy the whole bundle folder or re-export it")
    actual = sha256_file(model_path)
    if actual != manifest["model_sha256"]:
        raise BundleError(
            f"{model_path}: sha256 {actual} does not match model_sha256 {manifest['model_sha256']} in "
            f"{MANIFEST_FILE}; the model was modified or comes from another export. Restore the file or re-export"
        )
    _verify_files(path, manifest)
    try:
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises several private exception types
        raise BundleError(
            f"{model_path}: onnxruntime {ort.__version__} cannot load it (opset {manifest['opset']}): {error}. "
            "Upgrade onnxruntime or re-export with an opset it supports"
        ) from None
    got = ([value.name for value in session.get_inputs()], [value.name for value in session.get_outputs()])
    want = ([value["name"] for value in manifest["inputs"]], [value["name"] for value in manifest["outputs"]])
    if got != want:
        raise BundleError(
            f"{model_path}: inputs/outputs {got} differ from {MANIFEST_FILE}'s {want}; re-export the bundle"
        )
    return TASKS[manifest["task"]](path, manifest, session)
