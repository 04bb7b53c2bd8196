"""The bundles and twin snapshots a service holds, and how each is reloaded when its source moves.

A ``ModelSlot`` serves one configured model. ``refresh`` asks where the model points now (the registry version
behind an alias, or the files of a bundle folder) and, when that changed, loads the new bundle next to the old
one; only a bundle the runtime accepts, of the same task, replaces it. A refused version is logged once and
the slot keeps serving what it had.
"""

from __future__ import annotations

import hashlib
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
            raise NotLoaded(f"model {self.name!r} ({self.uri}) is not loaded")
        return self.current

    def _source_key(self) -> str:
        """Registry: the version the URI points at. Folder: a digest of the manifest and the model's size/mtime."""
        if registry.is_registry_uri(self.uri):
            return registry.current_version(self.uri)
        path = Path(self.uri)
        try:
            stat = (path / "model.onnx").stat()
            digest = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()[:16]
        except OSError as error:
            raise BundleError(f"cannot read the bundle ({error})") from None
        return f"{digest}-{stat.st_size}-{stat.st_mtime_ns}"

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
        try:
            bundle, version = self._load(key)
            if self.task is not None and bundle.manifest["task"] != self.task:
                raise BundleError(f"{bundle.path}: task {bundle.manifest['task']!r}, but model {self.name!r} serves "
                                  f"{self.task!r}; register it under another name")
        except (BundleError, LookupError, OSError) as error:
            self.refused[key] = self.error = str(error)
            log_event("reload_refused", level="ERROR", model=self.name, uri=self.uri, candidate=key, error=str(error),
                      serving=self.current[1] if self.current else None)
            return False
        previous = self.current[1] if self.current else None
        self.current, self.key, self.loaded_at = (bundle, version), key, time.time()
        log_event("model_loaded", model=self.name, uri=self.uri, task=self.task, version=version, previous=previous,
                  sha256=bundle.manifest["model_sha256"])
        return True

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "uri": self.uri, "task": self.task, "loaded": self.current is not None,
                "version": self.current[1] if self.current else None, "loaded_at": self.loaded_at,
                "error": self.error, "refused": self.refused}


@dataclass
class TwinSource:
    """The latest customer twin snapshot of one source; ``refresh`` follows the store's LATEST pointer."""

    source: str
    store_root: Path
    snapshot: Any = None   # twins.twin.store.Snapshot (polars is imported only when twins are served)

    @property
    def name(self) -> str:
        return self.source

    def refresh(self) -> bool:
        from twins.twin.store import TwinStore

        try:
            snap = TwinStore(self.store_root).open(self.source)
        except (FileNotFoundError, OSError, ValueError) as error:
            log_event("source_unreadable", level="WARNING", source=self.source, error=str(error))
            return False
        if self.snapshot is not None and snap.path == self.snapshot.path:
            return False
        self.snapshot = snap
        log_event("twins_loaded", source=self.source, snapshot=str(snap.path))
        return True

    def get(self):
        if self.snapshot is None:
            raise NotLoaded(f"no twin snapshot of source {self.source!r} under {self.store_root}: run `twins build`")
        return self.snapshot
