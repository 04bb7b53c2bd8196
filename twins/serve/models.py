"""The bundles and twin snapshots a service holds, and how each is reloaded when its source moves.

A ``ModelSlot`` serves one configured model. ``refresh`` asks where the model points now (the registry version
behind an alias, or the files of a bundle folder) and, when that changed, loads the new bundle next to the old
one; only a bundle the runtime accepts, of the same task, replaces it. A refused version is logged once and
the slot keeps serving what it had. A refusal is remembered only when the source still points where it did
before the load: a folder caught mid-copy is tried again at the next poll, not refused for good.

A ``TwinSource`` follows its store's LATEST pointer the same way: a snapshot is opened, checked and indexed
before the service switches to it; one that cannot be read is refused and the previous one keeps serving.

What the service shows (``status``) names versions and snapshots, never a path on the server.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twins.runtime import Bundle, BundleError, load, registry
from twins.serve.logs import log_event

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
THREADS = 1  # onnxruntime threads per model: the server already runs requests in parallel on its own threads


class NotLoaded(RuntimeError):
    """A configured model or twin source has nothing to serve."""


_ABSOLUTE = re.compile(r"(?<![\w.~$:/\\<>*])(?:/|[A-Za-z]:\\)(?:[^\s'\"():,;/\\]+[/\\])*([^\s'\"():,;/\\]*)")


def public(text: str | None, roots: dict[str, str] | None = None) -> str | None:
    """``text`` without paths of the server: each of ``roots`` (``{path: shown as}``) replaced, then any other
    absolute path by its last part (``/srv/b/model.onnx`` -> ``model.onnx``)."""
    if text is None:
        return None
    home = os.environ.get("TWINS_HOME")
    for path, shown in sorted({**({home: "$TWINS_HOME"} if home else {}), **(roots or {})}.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, shown)
    return _ABSOLUTE.sub(lambda m: m[1] or "/", text)


def default_name(uri: str) -> str:
    """``models:/NAME@ALIAS`` -> NAME; a bundle folder -> its folder name."""
    return registry.parse(uri)[0] if registry.is_registry_uri(uri) else Path(uri).resolve().name


@dataclass
class ModelSlot:
    """One configured model: ``uri`` is a bundle folder or ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``."""

    name: str
    uri: str
    current: tuple[Bundle, str] | None = None   # (bundle, version), swapped as one value
    key: str | None = None                      # what the source pointed at when ``current`` was loaded
    refused: dict[str, str] = field(default_factory=dict)  # key -> why it was refused
    error: str | None = None                    # the last refresh's problem, None when it went well
    loaded_at: float | None = None

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"model name {self.name!r}: use letters, digits, '.', '_' or '-' (it becomes a URL path)")

    @property
    def task(self) -> str | None:
        return self.current[0].manifest["task"] if self.current else None

    def get(self) -> tuple[Bundle, str]:
        if self.current is None:
            raise NotLoaded(f"model {self.name!r} is not loaded: {self._public(self.error)}")
        return self.current

    def _source_key(self) -> str:
        """Registry: the version the URI points at. Folder: a digest of the manifest and of every file's name,
        size and modification time, so that any file still being copied moves the key."""
        if registry.is_registry_uri(self.uri):
            return registry.current_version(self.uri)
        path = Path(self.uri)
        try:
            (path / "model.onnx").stat()  # a folder without the model says so first
            digest = hashlib.sha256((path / "manifest.json").read_bytes())
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                stat = file.stat()
                digest.update(f"\0{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        except OSError as error:
            raise BundleError(f"cannot read the bundle ({error})") from None
        return digest.hexdigest()[:16]

    def _unchanged(self, key: str) -> bool:
        """Whether the source still points at ``key`` (read again after a load)."""
        try:
            return self._source_key() == key
        except (BundleError, LookupError):
            return False

    def _load(self, key: str) -> tuple[Bundle, str]:
        if registry.is_registry_uri(self.uri):
            path, version = registry.fetch(self.uri, key)
            return load(path, THREADS), version
        bundle = load(self.uri, THREADS)
        return bundle, str(bundle.manifest["version"])

    def refresh(self) -> bool:
        """Load what the source points at now if it changed; True when a new bundle is being served."""
        try:
            key = self._source_key()
        except (BundleError, LookupError) as error:
            self.error = str(error)
            log_event("source_unreadable", level="WARNING", model=self.name, uri=self.uri, error=self.error)
            return False
        self.error = self.refused.get(key)
        if key == self.key or key in self.refused:
            return False
        serving = self.current[1] if self.current else None
        try:
            bundle, version = self._load(key)
            if self.task is not None and bundle.manifest["task"] != self.task:
                raise BundleError(f"{bundle.path}: task {bundle.manifest['task']!r}, but model {self.name!r} serves "
                                  f"{self.task!r}; register it under another name")
        except (BundleError, LookupError, OSError) as error:
            self.error = str(error)
            if isinstance(error, BundleError) and self._unchanged(key):
                self.refused[key] = self.error
                log_event("reload_refused", level="ERROR", model=self.name, uri=self.uri, candidate=key,
                          error=self.error, serving=serving)
            else:  # the source moved during the load, or could not be read: try again at the next poll
                log_event("reload_failed", level="WARNING", model=self.name, uri=self.uri, candidate=key,
                          error=self.error, serving=serving)
            return False
        self.current, self.key, self.loaded_at = (bundle, version), key, time.time()
        log_event("model_loaded", model=self.name, uri=self.uri, task=self.task, version=version, previous=serving,
                  sha256=bundle.manifest["model_sha256"])
        return True

    def _public(self, text: str | None) -> str | None:
        if registry.is_registry_uri(self.uri):
            return public(text)
        folder = Path(self.uri)
        return public(text, {str(folder.resolve()): folder.name, str(folder): folder.name})

    def status(self) -> dict[str, Any]:
        """What ``/ready`` and ``/v1/models`` show: names, versions and digests, no server paths."""
        bundle = self.current[0] if self.current else None
        return {"name": self.name, "uri": self.uri if registry.is_registry_uri(self.uri) else f"folder {Path(self.uri).name}",
                "task": self.task, "loaded": bundle is not None, "version": self.current[1] if self.current else None,
                "sha256": bundle.manifest["model_sha256"][:12] if bundle else None, "loaded_at": self.loaded_at,
                "error": self._public(self.error), "refused": {k: self._public(v) for k, v in self.refused.items()}}


@dataclass
class TwinSource:
    """The latest customer twin snapshot of one source; ``refresh`` follows the store's LATEST pointer."""

    source: str
    store_root: Path
    snapshot: Any = None   # twins.twin.store.Snapshot (polars is imported only when twins are served)
    refused: dict[str, str] = field(default_factory=dict)  # snapshot "<as_of>/<version>" -> why it was refused
    error: str | None = None
    loaded_at: float | None = None

    @property
    def name(self) -> str:
        return self.source

    def refresh(self) -> bool:
        """Switch to the snapshot LATEST names if it changed and can be read (its frame loaded and indexed here,
        not on a request); True when a new snapshot is being served."""
        from twins.twin.store import SnapshotError, TwinStore

        store = TwinStore(self.store_root)
        try:
            label = store.latest(self.source)
        except (SnapshotError, OSError) as error:
            self.error = str(error)
            log_event("source_unreadable", level="WARNING", source=self.source, error=self.error)
            return False
        self.error = self.refused.get(label)
        if (self.snapshot is not None and label == self.snapshot.label) or label in self.refused:
            return False
        serving = self.snapshot.label if self.snapshot is not None else None
        try:
            snap = store.open(self.source, snapshot=label)
            snap.index()
        except (SnapshotError, OSError) as error:
            self.error = str(error)
            try:
                unchanged = store.latest(self.source) == label
            except (SnapshotError, OSError):
                unchanged = False
            if unchanged:
                self.refused[label] = self.error
            log_event("reload_refused" if unchanged else "reload_failed", level="ERROR" if unchanged else "WARNING",
                      source=self.source, candidate=label, error=self.error, serving=serving)
            return False
        self.snapshot, self.loaded_at = snap, time.time()
        log_event("twins_loaded", source=self.source, snapshot=label, previous=serving, rows=snap.frame.height)
        return True

    def get(self):
        if self.snapshot is None:
            raise NotLoaded(f"no twin snapshot of source {self.source!r} to serve: {self._public(self.error)}")
        return self.snapshot

    def as_of(self):
        """The served snapshot's as_of: the one it was built at, or for 'end' snapshots the time in its rows."""
        from datetime import datetime

        snap = self.snapshot
        if snap is None:
            return None
        if snap.manifest.get("as_of"):
            return datetime.fromisoformat(snap.manifest["as_of"])
        column = snap.frame["as_of"] if "as_of" in snap.frame.columns else []
        return column[0] if len(column) else None

    def _public(self, text: str | None) -> str | None:
        root = Path(self.store_root)
        return public(text, {str(root.resolve()): "<store>", str(root): "<store>"})

    def status(self) -> dict[str, Any]:
        snap = self.snapshot
        return {"snapshot": snap.label if snap is not None else None, "rows": snap.frame.height if snap is not None else None,
                "loaded_at": self.loaded_at, "error": self._public(self.error),
                "refused": {k: self._public(v) for k, v in self.refused.items()}}
