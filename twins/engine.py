"""The engine: the seam under per-bucket work (ingest, twin building, scoring). One call, ``map``, runs a pure
function over independent items (buckets, files, chunks) and returns the results in item order.

* ``local`` (the default): a plain loop in this process; imports nothing new.
* ``ray`` (``pip install "twins[ray]"``): Ray tasks, or with ``setup`` one actor per worker holding its state (an
  ONNX session, say); joins the cluster at ``RAY_ADDRESS`` or starts a local Ray. See ``twins.engine_ray``.

Functions and items must be picklable (module-level functions, plain data) so that both engines run the same code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")
ENGINES = ("local", "ray")


class Engine(Protocol):
    name: str
    workers: int

    def map(self, fn: Callable[..., R], items: Sequence[T], *, setup: Callable[[], Any] | None = None,
            on_done: Callable[[int, int], None] | None = None) -> list[R]:
        """``[fn(item) for item in items]``, or ``fn(state, item)`` with ``state = setup()`` made once per worker;
        ``on_done(done, total)`` after each item finishes."""


class LocalEngine:
    """Everything in this process, one item after another."""

    name = "local"
    workers = 1

    def map(self, fn: Callable[..., R], items: Sequence[T], *, setup: Callable[[], Any] | None = None,
            on_done: Callable[[int, int], None] | None = None) -> list[R]:
        state = setup() if setup is not None else None
        out = []
        for n, item in enumerate(items, 1):
            out.append(fn(item) if setup is None else fn(state, item))
            if on_done:
                on_done(n, len(items))
        return out


def get_engine(name: str | None = None, workers: int | None = None) -> Engine:
    """The engine called ``name`` (default ``$TWINS_ENGINE``, else ``local``); ``workers``: Ray's worker count
    (default: its cluster's CPUs)."""
    name = (name or os.environ.get("TWINS_ENGINE") or "local").lower()
    if name == "local":
        return LocalEngine()
    if name == "ray":
        from twins.engine_ray import RayEngine

        return RayEngine(workers)
    raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)} (--engine or TWINS_ENGINE)")
