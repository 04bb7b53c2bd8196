"""Named pipelines. Each module exposes ``pipeline() -> twins.pipeline.Pipeline`` and ``TAGS`` (MLflow tags)."""

from __future__ import annotations

import importlib
from types import ModuleType

PIPELINES = {
    "next_basket": "pipelines.next_basket",
    "emotion": "pipelines.emotion",
    "outlook": "pipelines.outlook",
    "replenishment": "pipelines.replenishment",
}


def get(name: str) -> ModuleType:
    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; available: {sorted(PIPELINES)}")
    return importlib.import_module(PIPELINES[name])
