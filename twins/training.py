"""What every twins training loop shares: the device, the progress bar, crash-safe checkpoints (tensors and plain
values only, read with ``torch.load(weights_only=True)``: a checkpoint file never runs code) and heap trimming."""

import ctypes
import functools
import hashlib
import json
import os
import pickle
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

LAST = "last.pt"
PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def autocast_enabled(precision: str, device: torch.device) -> bool:
    """Whether training steps run under bf16 autocast: ``"auto"`` on CUDA only, ``"bf16"`` on any device (CPU
    autocast too), ``"fp32"`` never."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def progress(batches: list, description: str, show: bool) -> Iterable:
    """``batches`` with progress when ``show`` (``twins.progress``: a bar on a terminal, plain lines in a log)."""
    if not show:
        return batches
    from twins.progress import track
    return track(batches, description, unit="batches")


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only
    except (AttributeError, OSError):
        return None


def trim_heap() -> None:
    """Give the heap's freed memory back to the OS (glibc ``malloc_trim``; nothing elsewhere).

    A loop that frees and allocates many arrays of a few MB to 32 MB each step fragments glibc's heap: such arrays sit
    under its mmap threshold, which rises to 32 MB after the first large free. On Complete Journey (61,115 items,
    ``[batch, items]`` arrays of 31 MB) the next-basket network's RSS grew from 2.5 to 11.9 GiB in one epoch and past
    21 GiB over several, with under 3 GiB live. Trimming every 8 batches kept the epoch's peak at 4.1 GiB, for 4 %
    more time."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def fingerprint(params: Mapping[str, Any], *data: Any) -> str:
    """Short hash of hyper-parameters and data sizes: a checkpoint resumes only under the same fingerprint."""
    return hashlib.sha256(json.dumps([dict(params), *data], sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(folder: Path | None, name: str, payload: dict, rank: int = 0) -> None:
    """Write ``folder/name`` atomically (a killed run leaves the previous file intact); only rank 0 writes. The
    random generators' states go in too (``rng``), and numpy values become Python numbers and tensors: the file
    holds only what ``torch.load(weights_only=True)`` reads, so loading it never runs code."""
    if folder is None or rank != 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    torch.save(_plain({**payload, "rng": rng_state()}), tmp)
    tmp.replace(folder / name)


def load_checkpoint(folder: Path | None, expected: str, device: torch.device) -> dict | None:
    """The ``last.pt`` payload of ``folder``, or ``None`` when there is none; refuses another fingerprint. The
    random generators continue from the saved states."""
    if folder is None or not (folder / LAST).exists():
        return None
    saved = _read(folder / LAST, device)
    if not isinstance(saved, dict) or saved.get("fingerprint") != expected:
        raise ValueError(f"{folder / LAST}: checkpoint was written with other hyper-parameters or data; "
                         "use another checkpoint_dir, or delete this one to start over")
    if "rng" in saved:
        set_rng_state(saved["rng"])
    return saved


def rng_state() -> dict:
    """The states of torch's (CPU and CUDA), numpy's global and Python's random generators, as tensors, lists and
    numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": [version, list(internal), gauss_next]}


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned (CUDA states only where as many devices are there)."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and numpy arrays as tensors; containers holding none are
    returned as they are (a state dict keeps its type and metadata)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return value if all(a is b for a, b in zip(items, value)) else type(value)(items)
    if isinstance(value, dict):
        items = {k: _plain(v) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    return value


def _read(path: Path, device: torch.device) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain values only, never code; errors say what to do."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: (GLOBAL \S+)", str(error))
        if found is None:
            raise ValueError(f"{path}: not a readable checkpoint; delete it to start over") from None
        raise ValueError(f"{path}: holds {found[1]}, which twins refuses to load: a checkpoint holds tensors and plain "
                         "values only (unpickling anything else could run code). Delete the file to start over, or "
                         "write it with twins.training.save_checkpoint") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path}: not a readable checkpoint ({error}); delete it to start over") from None


def setup_distributed(device: str | None = None) -> tuple[torch.device, int, int]:
    """``(device, rank, world size)``. Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is started
    (nccl on CUDA, gloo on CPU) and each process takes the GPU of its ``LOCAL_RANK``, made its current device before
    the group starts (else NCCL's own work, e.g. its barrier, lands on GPU 0 from every rank); otherwise
    ``(device, 0, 1)``."""
    chosen = pick_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return chosen, 0, 1
    if chosen.type == "cuda":
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return chosen, dist.get_rank(), dist.get_world_size()


def shared_score(value: float, device: torch.device, world: int) -> float:
    """Rank 0's validation score on every rank (other ranks pass a placeholder); ``value`` itself when alone."""
    if world <= 1:
        return value
    score = torch.tensor([value], device=device)
    dist.broadcast(score, 0)
    return float(score.item())


def restore_best(net: torch.nn.Module, best_state: dict | None, folder: Path | None, device: torch.device) -> None:
    """Load the best epoch's weights: this run's, else a resumed run's ``best.pt``; leave ``net`` as is otherwise."""
    if best_state is not None:
        net.load_state_dict(best_state)
    elif folder is not None and (folder / "best.pt").exists():
        net.load_state_dict(_read(folder / "best.pt", device)["net"])
