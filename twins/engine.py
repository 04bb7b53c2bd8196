"""The engine: the seam under per-bucket work (ingest, twin building, scoring). ``map`` runs a pure function over
independent items (buckets, files, chunks) and returns the results in item order; ``call`` runs one job.

Both can run their work ``fresh``: in a new process that ends with the work, so the memory a step takes (polars'
allocator keeps what it once held) is given back before the next step instead of stacking up in the driver. A
process costs about a second to start, so callers ask for it only on large inputs (``worth_a_process``).

* ``local`` (the default): a plain loop in this process (``fresh``: in one spawned process); imports nothing new.
* ``ray`` (``pip install "twins[ray]"``): Ray tasks, or with ``setup`` one actor per worker holding its state (an
  ONNX session, say), never in the driver; ``call`` ``fresh`` is a task on a worker process that exits after it;
  joins the cluster at ``RAY_ADDRESS`` or starts a local Ray. See ``twins.engine_ray``.

Functions and items must be picklable (module-level functions, plain data) so that both engines run the same code.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")
ENGINES = ("local", "ray")
#: inputs of at least this many bytes (Parquet: about 13M events, or 1.5M customer twins) are worked on in fresh
#: processes: a step on them takes a minute or more and up to GiBs, beside a process start of a few seconds
FRESH_BYTES = 256 * 2**20


def worth_a_process(files: Iterable[Path]) -> bool:
    """Whether work on ``files`` should run ``fresh`` (``FRESH_BYTES`` of them or more)."""
    return sum(Path(f).stat().st_size for f in files) >= FRESH_BYTES


class Engine(Protocol):
    name: str
    workers: int

    def map(self, fn: Callable[..., R], items: Sequence[T], *, setup: Callable[[], Any] | None = None,
            on_done: Callable[[int, int], None] | None = None, fresh: bool = False) -> list[R]:
        """``[fn(item) for item in items]``, or ``fn(state, item)`` with ``state = setup()`` made once per worker;
        ``on_done(done, total)`` after each item finishes; ``fresh``: never in this process."""

    def call(self, fn: Callable[[T], R], job: T, *, fresh: bool = True) -> R:
        """``fn(job)``; ``fresh``: in a new process that ends with it."""


_state: Any = None  # a fresh process's ``setup()``


def _set_state(setup: Callable[[], Any]) -> None:
    global _state
    _state = setup()


def _with_state(fn: Callable[..., R], item: Any) -> R:
    return fn(_state, item)


def _process(setup: Callable[[], Any] | None = None) -> ProcessPoolExecutor:
    """One new Python process (spawned: polars' threads do not survive a fork) that makes ``setup()`` first."""
    spawn = multiprocessing.get_context("spawn")
    if setup is None:
        return ProcessPoolExecutor(1, spawn)
    return ProcessPoolExecutor(1, spawn, initializer=_set_state, initargs=(setup,))


class LocalEngine:
    """Everything on this machine, one item after another: in this process, or ``fresh`` in one new process."""

    name = "local"
    workers = 1

    def map(self, fn: Callable[..., R], items: Sequence[T], *, setup: Callable[[], Any] | None = None,
            on_done: Callable[[int, int], None] | None = None, fresh: bool = False) -> list[R]:
        """``[fn(item) for item in items]`` (``fn(state, item)`` with ``setup``); ``fresh``: in one new process
        for all the items, ended after them."""
        if fresh:
            with _process(setup) as pool:
                if setup is None:
                    return self._loop(lambda item: pool.submit(fn, item).result(), items, on_done)
                return self._loop(lambda item: pool.submit(_with_state, fn, item).result(), items, on_done)
        state = setup() if setup is not None else None
        return self._loop(fn if setup is None else lambda item: fn(state, item), items, on_done)

    @staticmethod
    def _loop(run: Callable[[T], R], items: Sequence[T], on_done: Callable[[int, int], None] | None) -> list[R]:
        out = []
        for n, item in enumerate(items, 1):
            out.append(run(item))
            if on_done:
                on_done(n, len(items))
        return out

    def call(self, fn: Callable[[T], R], job: T, *, fresh: bool = True) -> R:
        """``fn(job)``: in a new process ended after it (``fresh``), else here."""
        if not fresh:
            return fn(job)
        with _process() as pool:
            return pool.submit(fn, job).result()


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
