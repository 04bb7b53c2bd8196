"""Load ONNX bundles and answer with plain Python values. Imports only numpy, onnxruntime and the standard
library: never torch, polars or mlflow (DESIGN.md section 6).

What ``load`` promises about a bundle it returns:

* **A closed folder.** Every file the manifest names (``model.onnx``, each key of ``files``, the files the
  preprocessing reads, which must be keys of ``files``) is a plain relative name that resolves inside the folder:
  absolute paths, ``..`` and symlinks leading out are refused.
* **Exactly the bytes that were exported.** ``model.onnx`` is read once, its sha256 checked against
  ``model_sha256`` and those very bytes handed to onnxruntime; every file ``files`` lists is checked against its
  sha256. Weights stored outside ``model.onnx`` (ONNX external data) are refused: onnxruntime gets an empty folder
  to look for them in, so no file that no digest covers is ever read.
* **One digest for the whole bundle.** The sha256 of ``manifest.json`` is ``Bundle.digest``: the manifest pins
  ``model.onnx`` and every listed file by their sha256, so this one digest pins every byte the bundle is made
  of. ``load(path, expect_sha256=...)`` refuses a bundle with any other; the registry records it when a
  version is registered (tag ``bundle_sha256``) and ``twins.runtime.registry`` checks it after each download.
* **A well-formed manifest.** A missing key or a value of the wrong type, at any depth, is a ``BundleError``
  naming the key; a vocabulary that does not cover the graph's index range is refused here, not per request.
"""

import hashlib
import json
import math
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import onnxruntime as ort

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
MIN_OPSET = 17
SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: a name that may become a file name (a bundle's ``name`` in a default output path, a file the bundle ships): one
#: plain name of letters, digits, ``_ . + -``, not starting with a dot, no folder
PLAIN_NAME = re.compile(r"^\w[\w.+-]{0,127}$")
_EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"
_KIND_NAMES = {str: "a string", int: "an integer", float: "a finite number", list: "a list", dict: "an object"}


class BundleError(Exception):
    """A bundle that cannot be used: the message names the file, what is wrong and the fix."""


def need(manifest: dict, key: str, kind: type | tuple[type, ...], where: Path, within: str = "") -> Any:
    """``manifest[a][b]`` for ``key`` ``"a.b"``, of type ``kind`` (``float`` takes any finite number and returns a
    float; a bool is never a number); otherwise a ``BundleError`` naming the key (``within`` + ``key``) in
    ``where``, the manifest's path."""
    value: Any = manifest
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(value, dict):
            raise BundleError(f"{where}: {within + '.'.join(parts[:depth])!r} must be an object holding {part!r}; "
                              "re-export the bundle")
        if part not in value:
            raise BundleError(f"{where}: missing key {within + key!r}; re-export the bundle")
        value = value[part]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if not isinstance(value, tuple(k for k in kinds if k is not float)) or isinstance(value, bool):
        wanted = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise BundleError(f"{where}: {within + key!r} must be {wanted}, got {_short(value)}; re-export the bundle")
    return value


def need_strings(manifest: dict, key: str, where: Path, *, unique: bool = False) -> list[str]:
    """A non-empty list of strings at ``key`` (``unique``: each at most once)."""
    values = need(manifest, key, list, where)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise BundleError(f"{where}: {key}[{i}] must be a string, got {_short(value)}; re-export the bundle")
    if not values:
        raise BundleError(f"{where}: {key!r} is empty; re-export the bundle")
    if unique and len(set(values)) != len(values):
        seen: set[str] = set()
        twice = next(v for v in values if v in seen or seen.add(v))
        raise BundleError(f"{where}: {key!r} lists {twice!r} more than once; re-export the bundle")
    return values


def need_numbers(manifest: dict, key: str, where: Path) -> np.ndarray:
    """A list of finite numbers at ``key``, as float64."""
    values = need(manifest, key, list, where)
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BundleError(f"{where}: {key}[{i}] must be a finite number, got {_short(value)}; re-export the bundle")
    return np.array(values, dtype=np.float64)


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def inside(folder: Path, name: object, key: str) -> Path:
    """``folder / name`` for ``name`` taken from the manifest's ``key``: a plain relative file name that, symlinks
    resolved, stays inside ``folder``; otherwise a ``BundleError``."""
    where = folder / MANIFEST_FILE
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        raise BundleError(f"{where}: {key} {_short(name)} is not a file name; re-export the bundle")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or pure.parts in ((), (".",)):
        raise BundleError(f"{where}: {key} {name!r} points outside the bundle folder; a bundle names its files "
                          "relative to its folder. Re-export the bundle")
    file = folder / name
    try:
        target = file.resolve()
        escapes = not target.is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        target, escapes = file, True
    if escapes:
        raise BundleError(f"{file}: a link leading outside the bundle folder (to {target}); a bundle is a closed "
                          "folder: copy the file in instead of linking to it")
    return file


def need_specs(manifest: dict, key: str, where: Path) -> list[dict]:
    """The manifest's ``inputs`` or ``outputs``: a non-empty list of ``{"name": str, "dtype": str, "shape": [int |
    str]}``."""
    specs = need(manifest, key, list, where)
    if not specs:
        raise BundleError(f"{where}: {key!r} is empty; re-export the bundle")
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise BundleError(f"{where}: {key}[{i}] must be an object with name, dtype and shape; re-export the bundle")
        need(spec, "name", str, where, f"{key}[{i}].")
        need(spec, "dtype", str, where, f"{key}[{i}].")
        for j, dim in enumerate(need(spec, "shape", list, where, f"{key}[{i}].")):
            if isinstance(dim, bool) or not isinstance(dim, (int, str)):
                raise BundleError(f"{where}: {key}[{i}].shape[{j}] must be an integer or an axis name, got "
                                  f"{_short(dim)}; re-export the bundle")
    return specs


class Bundle:
    """A verified bundle: its folder, manifest, onnxruntime session and ``digest`` (the sha256 of its manifest,
    which pins every file of the bundle)."""

    def __init__(self, path: Path, manifest: dict, session: ort.InferenceSession) -> None:
        self.path = path
        self.manifest = manifest
        self.session = session
        self.digest = ""  # set by load()

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    def graph_width(self, name: str, axis: int = 1) -> int:
        """The static size of axis ``axis`` of the graph's input or output ``name`` (as the session reads it)."""
        values = {v.name: v for v in (*self.session.get_inputs(), *self.session.get_outputs())}
        shape = values[name].shape if name in values else []
        if len(shape) <= axis or not isinstance(shape[axis], int):
            raise BundleError(f"{self.path / MODEL_FILE}: the graph's {name!r} has no fixed size on axis {axis} "
                              f"(shape {shape}); re-export the bundle")
        return shape[axis]

    def accepts(self, feeds: dict[str, np.ndarray]) -> bool:
        """Whether the graph runs on ``feeds``: probes its index ranges at load (onnxruntime refuses an index past
        the end of a table) without logging the expected refusal."""
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4
        try:
            self.session.run(None, feeds, quiet)
        except Exception:  # onnxruntime's own error types
            return False
        return True

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
        where = self.manifest_path
        self.vocabulary = need_strings(manifest, "vocabulary", where, unique=True)
        self.max_history_items = need(manifest, "preprocessing.max_history_items", int, where)
        if self.max_history_items < 1:
            raise BundleError(f"{where}: preprocessing.max_history_items must be >= 1; re-export the bundle")
        if [value["name"] for value in manifest["inputs"]] != [self.INPUT] or tuple(
            value["name"] for value in manifest["outputs"]
        ) != self.OUTPUTS:
            raise BundleError(
                f"{where}: task 'next_basket' needs input {self.INPUT!r} and outputs {self.OUTPUTS}; "
                "re-export with twins.models.topfreq_torch.export_gp_topfreq"
            )
        self.top_k = self.graph_width("scores")
        self._check_index_range()
        self._index = {item: i + 1 for i, item in enumerate(self.vocabulary)}

    def _check_index_range(self) -> None:
        """The graph scores the slots ``0 .. len(vocabulary)``: it must take the last item's index and refuse the next
        one, and return no more items than the vocabulary holds."""
        n = len(self.vocabulary)
        if self.top_k > n or not self.accepts(self._probe(n)) or self.accepts(self._probe(n + 1)):
            raise BundleError(f"{self.manifest_path}: the vocabulary's {n} items do not match the graph's item "
                              f"slots in {MODEL_FILE}; the manifest and the model come from different exports. "
                              "Re-export the bundle")

    def _probe(self, index: int) -> dict[str, np.ndarray]:
        return {self.INPUT: np.array([[index]], dtype=np.int64)}

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


def manifest_sha256(path: str | Path) -> str:
    """The digest of the bundle folder ``path``: the sha256 of its ``manifest.json`` (see the module docstring)."""
    return sha256_file(Path(path) / MANIFEST_FILE)


def _read_manifest(path: Path) -> tuple[dict, str]:
    """The manifest, checked for the keys every task needs, and the sha256 of the bytes it was parsed from."""
    manifest_path = inside(path, MANIFEST_FILE, "the manifest")
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: not found; a bundle is a folder with {MODEL_FILE} and {MANIFEST_FILE}")
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{manifest_path}: not valid JSON ({error}); re-export the bundle") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: must hold a JSON object, not {type(manifest).__name__}; re-export the bundle")
    for key, kind in (("name", str), ("version", (str, int)), ("task", str), ("opset", int), ("model_sha256", str)):
        need(manifest, key, kind, manifest_path)
    if manifest["opset"] < MIN_OPSET:
        raise BundleError(
            f"{manifest_path}: opset {manifest['opset']!r} is not supported; bundles need ONNX opset >= {MIN_OPSET}. "
            f"Re-export with opset >= {MIN_OPSET}"
        )
    if manifest["task"] not in TASKS:
        raise BundleError(
            f"{manifest_path}: unknown task {manifest['task']!r}; this runtime serves {sorted(TASKS)}. "
            "Upgrade twins or export for a supported task"
        )
    need_specs(manifest, "inputs", manifest_path)
    need_specs(manifest, "outputs", manifest_path)
    if not manifest["name"].strip():
        raise BundleError(f"{manifest_path}: 'name' is empty; re-export the bundle")
    if not SHA256.match(manifest["model_sha256"]):
        raise BundleError(f"{manifest_path}: 'model_sha256' must be 64 lowercase hex digits; re-export the bundle")
    if manifest.get("model_file", MODEL_FILE) != MODEL_FILE:
        raise BundleError(f"{manifest_path}: 'model_file' must be {MODEL_FILE!r}, got {_short(manifest['model_file'])}; "
                          "re-export the bundle")
    for key in ("files", "preprocessing"):
        if key in manifest:
            need(manifest, key, dict, manifest_path)
    return manifest, hashlib.sha256(raw).hexdigest()


def _verify_files(path: Path, manifest: dict) -> None:
    """Every file that the manifest's ``files`` lists (what the preprocessing reads) is in the folder, unmodified."""
    for name, digest in manifest.get("files", {}).items():
        file = inside(path, name, "files key")
        if not isinstance(digest, str) or not SHA256.match(digest):
            raise BundleError(f"{path / MANIFEST_FILE}: files[{name!r}] must be the file's sha256 (64 lowercase hex "
                              "digits); re-export the bundle")
        if not file.is_file():
            raise BundleError(f"{file}: missing; the bundle's preprocessing needs it. Copy the whole bundle folder "
                              "or re-export it")
        if sha256_file(file) != digest:
            raise BundleError(f"{file}: sha256 does not match {MANIFEST_FILE}'s files[{name!r}]; the file was "
                              "modified. Restore it or re-export the bundle")


def _session(model_path: Path, model: bytes, opset: int, threads: int | None) -> ort.InferenceSession:
    """An onnxruntime session on the verified bytes ``model``; onnxruntime's refusals as ``BundleError``s that
    say what they are."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="twins-no-external-data-") as empty:
        options.add_session_config_entry(_EXTERNAL_DATA_FOLDER, empty)
        try:
            return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises private exception types: told apart by name and text
            kind, text = type(error).__name__, str(error).strip().splitlines()[0][:300]
    if kind == "InvalidProtobuf":
        raise BundleError(f"{model_path}: not a readable ONNX model (corrupt or truncated: {text}). Restore the file "
                          "or re-export the bundle")
    if "external data" in text.lower():
        raise BundleError(f"{model_path}: keeps weights in external data files, which bundles may not use (no digest "
                          f"covers them; {text}). Re-export with the weights inside {MODEL_FILE} (external_data=False)")
    if kind == "NotImplemented" or "opset" in text.lower():
        raise BundleError(f"{model_path}: onnxruntime {ort.__version__} does not support this model's operators or "
                          f"opset {opset} ({kind}: {text}). Upgrade onnxruntime or re-export with an opset it supports")
    raise BundleError(f"{model_path}: onnxruntime {ort.__version__} refuses the model as invalid ({kind}: {text}); "
                      "re-export the bundle")


def load(path: str | Path, threads: int | None = None, expect_sha256: str | None = None) -> Bundle:
    """Load and verify a bundle folder (see the module docstring): manifest, sha256 of ``model.onnx`` and of the
    files the manifest lists, opset, input and output names; with ``expect_sha256``, the bundle's digest too.

    ``path`` may also be a registry URI, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: the version is
    downloaded once to a local cache (``twins.runtime.registry``, the only place mlflow is imported) and
    verified the same way, against the digest the registry recorded. ``threads``: onnxruntime's intra-op threads
    (default: one per core; a service that runs many small requests at once does better with 1). Returns the
    task's bundle class (``NextBasketBundle`` for ``next_basket``); raises ``BundleError``.
    """
    if isinstance(path, str) and path.startswith("models:/"):
        from twins.runtime.registry import locate

        found = locate(path)
        path, expect_sha256 = found.path, expect_sha256 or found.sha256
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a folder; pass the bundle folder holding {MODEL_FILE} and {MANIFEST_FILE}")
    manifest, digest = _read_manifest(path)
    if expect_sha256 is not None and digest != expect_sha256:
        raise BundleError(f"{path / MANIFEST_FILE}: sha256 {digest} is not the expected {expect_sha256}; the bundle "
                          "was modified or is another version. Restore it, or fetch the version again")
    model_path = inside(path, MODEL_FILE, "the model")
    if not model_path.is_file():
        raise BundleError(f"{model_path}: not found; copy the whole bundle folder or re-export it")
    model = model_path.read_bytes()
    actual = hashlib.sha256(model).hexdigest()
    if actual != manifest["model_sha256"]:
        raise BundleError(
            f"{model_path}: sha256 {actual} does not match model_sha256 {manifest['model_sha256']} in "
            f"{MANIFEST_FILE}; the model was modified or comes from another export. Restore the file or re-export"
        )
    _verify_files(path, manifest)
    session = _session(model_path, model, manifest["opset"], threads)
    got = ([value.name for value in session.get_inputs()], [value.name for value in session.get_outputs()])
    want = ([value["name"] for value in manifest["inputs"]], [value["name"] for value in manifest["outputs"]])
    if got != want:
        raise BundleError(
            f"{model_path}: inputs/outputs {got} differ from {MANIFEST_FILE}'s {want}; re-export the bundle"
        )
    bundle = TASKS[manifest["task"]](path, manifest, session)
    bundle.digest = digest
    return bundle
