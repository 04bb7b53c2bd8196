"""Pipelines of pure steps (Kedro-style): each node names its inputs and outputs in a shared catalog;
I/O happens in the few nodes at the edges; parameters come from a YAML config (``PipelineConfig``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from twins import config


class PipelineConfig(BaseModel):
    """A pipeline run: which pipeline, on which source, with which parameters (see configs/pipelines/)."""

    model_config = ConfigDict(extra="forbid")
    pipeline: str = Field(description="name of a pipeline in the pipelines package, e.g. next_basket")
    experiment: str = Field(description="MLflow experiment the run is logged to")
    source: str = Field(description="source config (path relative to this file)")
    as_of: str | None = Field(None, description="twins as of this date (ISO 8601); null: after the last event")
    twin: dict[str, Any] = Field(default_factory=dict, description="TwinParams fields")
    params: dict[str, Any] = Field(default_factory=dict, description="the pipeline's own parameters")
    base_dir: Path = Path(".")

    def source_path(self) -> Path:
        p = Path(self.source)
        return p if p.is_absolute() else self.base_dir / p


def load_pipeline_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    tree = config.read_yaml(path, overrides)
    tree.setdefault("base_dir", str(Path(path).resolve().parent))
    return config.validate(PipelineConfig, tree, path)


@dataclass(frozen=True)
class Node:
    func: Callable[..., Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.func.__name__


def node(func: Callable[..., Any], inputs: str | tuple[str, ...], outputs: str | tuple[str, ...]) -> Node:
    as_tuple = lambda x: (x,) if isinstance(x, str) else tuple(x)  # noqa: E731
    return Node(func, as_tuple(inputs), as_tuple(outputs))


@dataclass
class Pipeline:
    name: str
    nodes: list[Node]
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, catalog: dict[str, Any], on_node: Callable[[Node, float], None] | None = None,
            on_start: Callable[[Node], None] | None = None) -> dict[str, Any]:
        """Run the nodes in order, reading inputs from and writing outputs to ``catalog``; ``on_start(node)`` and
        ``on_node(node, seconds)`` are called as each node starts and ends."""
        for n in self.nodes:
            missing = [i for i in n.inputs if i not in catalog]
            if missing:
                raise KeyError(f"pipeline {self.name}: node {n.name} needs {missing}, which no earlier node produces")
            if on_start:
                on_start(n)
            t0 = time.perf_counter()
            result = n.func(*(catalog[i] for i in n.inputs))
            results = result if len(n.outputs) > 1 else (result,)
            catalog.update(zip(n.outputs, results))
            self.timings[n.name] = time.perf_counter() - t0
            if on_node:
                on_node(n, self.timings[n.name])
        return catalog
