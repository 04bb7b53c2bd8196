"""Where twins keeps its outputs: one working folder, ``$TWINS_HOME`` or ``./.twins`` (absolute)."""

from __future__ import annotations

import os
from pathlib import Path


def twins_home() -> Path:
    """The working folder for events, twin snapshots, models, the MLflow store and its artifacts."""
    return Path(os.environ.get("TWINS_HOME") or Path.cwd() / ".twins").resolve()


def events_dir(source: str) -> Path:
    return twins_home() / "events" / source


def store_dir() -> Path:
    return twins_home() / "store"


def models_dir() -> Path:
    return twins_home() / "models"
