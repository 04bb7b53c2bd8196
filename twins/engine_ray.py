"""The Ray engine (``--engine ray``, ``pip install "twins[ray]"``): ``Engine.map`` as Ray tasks, or with ``setup``
one actor per worker (``ray.util.ActorPool``) holding the state it made once (an ONNX session, say); ``Engine.call``
``fresh`` as one task on a worker process that exits after it (``max_calls=1``), so its memory goes back.

It joins the cluster at ``RAY_ADDRESS`` when that is set (every node needs twins installed, and the paths the
items name must be readable there: a shared file system or object store), else starts a local Ray with
``workers`` CPUs. Every worker runs with one thread for torch, BLAS/OpenMP and polars (``twins.threads``): one
process per core beats oversubscription (DESIGN §10). Results come back in item order; an item that fails is
re-raised in this process with the item named. Only ``twins.engine.get_engine("ray")`` imports this module.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import ray
from ray.util import ActorPool

from twins.threads import LIBRARY_ENV, set_threads, usable_cores

T = TypeVar("T")
R = TypeVar("R")
#: worker processes start with one thread per library, before they import any of them
WORKER_ENV = {var: "1" for var in (*LIBRARY_ENV, "TWINS_THREADS")}


class _Failure:
    """An item's exception and its traceback as text, returned instead of raised so the driver can name the item."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.trace = "".join(traceback.format_exception(error))


def _call(fn: Callable[..., R], item: Any, state: Any = None, stateful: bool = False) -> R | _Failure:
    set_threads(1)
    try:
        return fn(state, item) if stateful else fn(item)
    except Exception as error:  # handed to the driver, which raises it with the item named
        return _Failure(error)


@ray.remote
class _Worker:
    """One per worker: ``setup()`` once, then ``fn(state, item)`` per item."""

    def __init__(self, setup: Callable[[], Any]) -> None:
        set_threads(1)
        self.state = setup()

    def run(self, fn: Callable[..., R], index: int, item: Any) -> tuple[int, R | _Failure]:
        return index, _call(fn, item, self.state, stateful=True)


_task = ray.remote(_call)
_fresh_task = ray.remote(max_calls=1)(_call)  # its worker process exits after one call


def _raise(failure: _Failure, item: Any) -> None:
    """Raise ``failure``'s exception again (its type where it takes one message) with the item named."""
    label = repr(item)
    label = label if len(label) <= 200 else label[:200] + "..."
    error = failure.error
    try:
        named = type(error)(f"{error} (while processing {label} on a Ray worker)")
    except Exception:
        named = RuntimeError(f"{type(error).__name__}: {error} (while processing {label} on a Ray worker)")
    named.add_note(f"worker traceback:\n{failure.trace}")
    raise named from error


class RayEngine:
    """``Engine.map`` on Ray: a task per item, or with ``setup`` a pool of ``workers`` actors."""

    name = "ray"

    def __init__(self, workers: int | None = None) -> None:
        """``workers`` default: ``$TWINS_WORKERS`` (``twins --workers``), else the cluster's CPUs."""
        if workers is None and os.environ.get("TWINS_WORKERS", "").strip():
            workers = int(os.environ["TWINS_WORKERS"])
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers} (--workers)")
        if not ray.is_initialized():
            env = {"runtime_env": {"env_vars": WORKER_ENV}, "log_to_driver": False}
            if os.environ.get("RAY_ADDRESS"):
                ray.init(address=os.environ["RAY_ADDRESS"], **env)
            else:
                ray.init(num_cpus=workers or usable_cores(), include_dashboard=False, **env)
        self.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map(self, fn: Callable[..., R], items: Sequence[T], *, setup: Callable[[], Any] | None = None,
            on_done: Callable[[int, int], None] | None = None, fresh: bool = False) -> list[R]:
        """``[fn(item) for item in items]`` as Ray tasks (at most ``workers`` at a time), or ``fn(state, item)``
        on ``workers`` actors that each made ``state = setup()``; results in item order. Never in the driver, so
        ``fresh`` changes nothing."""
        items = list(items)
        results: list[Any] = [None] * len(items)
        done = 0

        def finish(index: int, result: Any) -> None:
            nonlocal done
            if isinstance(result, _Failure):
                _raise(result, items[index])
            results[index] = result
            done += 1
            if on_done:
                on_done(done, len(items))

        if setup is None:
            task = _task.options(num_cpus=1)
            fn_ref = ray.put(fn)
            pending: dict[Any, int] = {}
            queue = iter(enumerate(items))
            for index, item in queue:
                pending[task.remote(fn_ref, item)] = index
                if len(pending) >= self.workers:
                    break
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(ref)
                nxt = next(queue, None)
                if nxt is not None:
                    pending[task.remote(fn_ref, nxt[1])] = nxt[0]
                finish(index, ray.get(ref))
        else:
            actors = [_Worker.options(num_cpus=1).remote(setup) for _ in range(min(self.workers, max(1, len(items))))]
            pool = ActorPool(actors)
            try:
                for index, item in enumerate(items):
                    pool.submit(lambda actor, job: actor.run.remote(fn, *job), (index, item))
                while pool.has_next():
                    finish(*pool.get_next_unordered())
            finally:
                for actor in actors:
                    ray.kill(actor)
        return results

    def call(self, fn: Callable[[T], R], job: T, *, fresh: bool = True) -> R:
        """``fn(job)``: one task on a worker that exits after it (``fresh``), else here in the driver."""
        if not fresh:
            return fn(job)
        result = ray.get(_fresh_task.options(num_cpus=1).remote(fn, job))
        if isinstance(result, _Failure):
            _raise(result, job)
        return result
