"""One thread budget per process for torch, BLAS/OpenMP and polars: ``twins --threads N``, ``TWINS_THREADS`` or
``twins.threads.set_threads(n)``.

The count is, first found: the argument, ``TWINS_THREADS``, ``OMP_NUM_THREADS`` (a setting already made for
OpenMP), else half the usable cores (CPU affinity and the cgroup CPU quota), at least 1. Half, because the
compute-bound kernels of torch and BLAS gain little from a second hardware thread per core (SMT machines report
twice their physical cores), the Python thread feeding them and polars' I/O need a core of their own, and a
machine shared with other jobs slows down sharply once threads outnumber free cores (spinning OpenMP workers
wait on descheduled ones). Measured in the README ("Threads").

Libraries read their variables when they load, so the CLI applies the count before importing any of them;
``set_threads`` also resizes torch's and BLAS's pools when they are already loaded. Polars sizes its pool once,
at import: after that ``POLARS_MAX_THREADS`` no longer applies. torch's inter-op pool (``torch.jit.fork`` only;
idle otherwise) reads no variable: only a ``set_threads`` after ``import torch`` sizes it.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

ENV = "TWINS_THREADS"
LIBRARY_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "POLARS_MAX_THREADS")


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def default_threads() -> int:
    return max(1, usable_cores() // 2)


def _count(value: str, origin: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{origin}={value!r} is not a thread count: give a whole number of 1 or more "
                         f"(default: half the usable cores, here {default_threads()})")
    return n


def thread_count(n: int | None = None) -> int:
    """``n``, else ``TWINS_THREADS``, else ``OMP_NUM_THREADS``, else ``default_threads()``."""
    if n is not None:
        return _count(str(n), "threads")
    for var in (ENV, "OMP_NUM_THREADS"):
        if os.environ.get(var, "").strip():
            return _count(os.environ[var].strip(), var)
    return default_threads()


def set_threads(n: int | None = None) -> int:
    """Give torch (intra- and inter-op), BLAS/OpenMP and polars (when not yet imported) ``thread_count(n)``
    threads; returns the count."""
    n = thread_count(n)
    for var in LIBRARY_ENV:
        if var != "POLARS_MAX_THREADS" or "polars" not in sys.modules:
            os.environ[var] = str(n)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # torch allows it once, before any inter-op work; the pool keeps its size
            pass
    if "numpy" in sys.modules:  # BLAS is loaded and read its variables already
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            threadpool_limits(n)
    return n
