"""Publishing outputs safely: one lock per output, one atomic rename per publish, stale temps cleared, disk full said.

Every output twins writes (an events folder, a twin snapshot, a score file, a bundle) is published the same way:

1. ``locked(target, what)`` takes an exclusive ``flock`` on ``.<name>.lock`` beside ``target`` and writes the
   holder (what, pid, host, start time) into it; the file is removed on release. A second run on the same
   output fails at once with ``OutputBusy`` naming the first one, or waits up to ``$TWINS_LOCK_WAIT`` seconds.
   The kernel drops the lock when its process dies, so a killed run never leaves the output locked.
2. Once the lock is held, what killed runs left beside ``target`` is cleared: ``.<name>.tmp[-<pid>-<hex>]``
   and ``.<name>.old[-...]`` (files or folders). Only a run holding the lock can own such a temp, so none of
   them belongs to a live run; a previous output moved aside by the fallback below is moved back first.
3. The new output is assembled in ``staged_dir(target)`` (or a ``temp_path`` file) beside ``target``, on the
   same file system; a failed block removes it, and a full disk raises ``DiskFull`` naming the folder.
4. ``publish_dir`` / ``publish_file`` fsync every file and folder written, then make the new output visible
   with one atomic rename (for a folder that exists: ``renameat2(RENAME_EXCHANGE)`` on Linux, ``renamex_np
   (RENAME_SWAP)`` on macOS, so the path always names a complete folder, old or new), fsync the parent folder
   and remove the previous output. Readers keep their paths (``$TWINS_HOME/events/<source>/events.parquet``, a
   folder of bucket files, is swapped with the folder around it).
   Where the file system cannot exchange (e.g. NFS) the folder is replaced by two renames, and a run killed
   between them leaves ``.<name>.old-*``, which the next run on that output moves back (step 2).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

#: seconds a run waits for another run's lock on the same output before giving up (default 0: fail at once)
LOCK_WAIT_ENV = "TWINS_LOCK_WAIT"
#: errno values that mean the disk (or the user's quota on it) is full
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class WriteError(OSError):
    """An output could not be written; the message names it and says what to do."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class OutputBusy(WriteError):
    """Another run holds the output's lock."""


class DiskFull(WriteError):
    """No space left on the device (ENOSPC) or the disk quota is exceeded (EDQUOT) while writing an output."""


# ------------------------------------------------------------------------------------------------ locks

def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


@contextmanager
def locked(target: str | Path, what: str) -> Iterator[None]:
    """Hold ``target``'s lock while writing it (module docstring, steps 1-2); ``what`` names this run in the
    message another run gets (e.g. ``"twins ingest shop"``). The lock file is removed on release."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(target)
    fd = _acquire(path, target)
    try:
        holder = {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)  # a killed run's details may be there
        os.write(fd, json.dumps(holder).encode())
        clean_stale(target)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding it: a run that locks this file now sees it gone, retries
        os.close(fd)


def _acquire(path: Path, target: Path) -> int:
    """A descriptor of ``path`` holding its flock (the file that ``path`` names now, not one removed meanwhile)."""
    wait = _lock_wait()
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                waited = f" (waited {wait:g} s)" if wait else ""
                raise OutputBusy(errno.EWOULDBLOCK,
                                 f"{target} is being written by another run{waited}: {_holder(path)}. Wait for it to "
                                 f"finish or stop it; set {LOCK_WAIT_ENV}=<seconds> to wait for it instead of failing") from None
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))
            continue
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _lock_wait() -> float:
    raw = os.environ.get(LOCK_WAIT_ENV, "").strip()
    try:
        wait = float(raw or 0)
    except ValueError:
        raise ValueError(f"{LOCK_WAIT_ENV}={raw!r} is not a number of seconds; set it to e.g. 600, or unset it") from None
    if not wait >= 0:
        raise ValueError(f"{LOCK_WAIT_ENV}={raw!r} must be a number of seconds >= 0")
    return wait


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text() or "{}")
        return f"{h['what']}, pid {h['pid']} on {h['host']}, started {h['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"a run whose details {path} does not hold (yet)"


# ------------------------------------------------------------------------------------------------ temps

def temp_path(target: Path, kind: str = "tmp") -> Path:
    """A fresh name beside ``target`` for this process: ``.<name>.<kind>-<pid>-<hex>``."""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _stale(target: Path, kind: str) -> list[Path]:
    pattern = re.compile(rf"\.{re.escape(target.name)}\.{kind}(-[0-9a-f]+)*")
    if not target.parent.is_dir():
        return []
    return sorted((p for p in target.parent.iterdir() if pattern.fullmatch(p.name)), key=lambda p: p.stat().st_mtime)


def remove(path: Path) -> None:
    """Remove a file or a folder (not following a link); no error if it is gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(target: Path) -> list[Path]:
    """Clear what killed runs left beside ``target`` (call it holding ``target``'s lock); returns what went.
    A previous output moved aside and never replaced (``target`` missing) is moved back instead."""
    olds = _stale(target, "old")
    if olds and not target.exists():
        os.rename(olds.pop(), target)
        _fsync(target.parent)
    gone = [*_stale(target, "tmp"), *olds]
    for path in gone:
        remove(path)
    return gone


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """An empty folder beside ``target`` to assemble it in (``publish_dir`` it at the end). Removed when the block
    ends; an error from a full disk becomes ``DiskFull``."""
    tmp = temp_path(target)
    with disk_errors(target.parent):
        tmp.mkdir(parents=True)
    try:
        with disk_errors(target.parent):
            yield tmp
    finally:
        remove(tmp)


# ------------------------------------------------------------------------------------------------ publishing

def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then every folder, deepest first."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def publish_file(tmp: Path, target: Path) -> None:
    """fsync file ``tmp``, rename it over ``target`` (atomic) and fsync the folder."""
    _fsync(tmp)
    os.replace(tmp, target)
    _fsync(target.parent)


def write_text(target: Path, text: str) -> None:
    """Write ``target`` atomically: a reader sees the old text or the new, never part of it."""
    tmp = temp_path(target)
    try:
        tmp.write_text(text)
        publish_file(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def publish_dir(tmp: Path, target: Path) -> None:
    """Make folder ``tmp`` (beside ``target``) the folder ``target`` (module docstring, step 4)."""
    sync_tree(tmp)
    if not target.exists():
        os.rename(tmp, target)
        previous = None
    elif _exchange(tmp, target):
        previous = tmp
    else:  # two renames: a run killed between them leaves .<name>.old-*, which the next run moves back
        previous = temp_path(target, "old")
        os.rename(target, previous)
        os.rename(tmp, target)
    _fsync(target.parent)
    if previous is not None:
        remove(previous)


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()
_AT_FDCWD, _RENAME_EXCHANGE, _RENAME_SWAP = -100, 2, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step; False where this system or file system cannot."""
    if sys.platform == "darwin" and hasattr(_LIBC, "renamex_np"):
        rc = _LIBC.renamex_np(os.fsencode(a), os.fsencode(b), ctypes.c_uint(_RENAME_SWAP))
    elif sys.platform.startswith("linux") and hasattr(_LIBC, "renameat2"):
        rc = _LIBC.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), ctypes.c_uint(_RENAME_EXCHANGE))
    else:
        return False
    if rc == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


# ------------------------------------------------------------------------------------------------ disk full

def is_disk_full(exc: BaseException) -> bool:
    """An OSError with ENOSPC/EDQUOT, or a library error (Polars, Arrow, ONNX) whose text carries one."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return True
    return any(os.strerror(code) in str(exc) for code in DISK_FULL)


def disk_full(folder: Path, exc: BaseException) -> DiskFull:
    """The ``DiskFull`` to raise for ``exc`` while writing into ``folder``."""
    code = exc.errno if isinstance(exc, OSError) and exc.errno in DISK_FULL else \
        next((c for c in DISK_FULL if os.strerror(c) in str(exc)), errno.ENOSPC)
    try:
        free = f", {shutil.disk_usage(folder).free / 2**20:,.0f} MiB free there now"
    except OSError:
        free = ""
    return DiskFull(code, f"{os.strerror(code).lower()} while writing into {folder}{free}; nothing was published and "
                          "the previous output is intact. Free some space there, or set TWINS_HOME to a folder on "
                          "a disk with room, and run the command again")


@contextmanager
def disk_errors(folder: Path) -> Iterator[None]:
    """Turn errors from a full disk raised in the block into ``DiskFull`` naming ``folder``."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full(folder, exc) from exc
        raise
