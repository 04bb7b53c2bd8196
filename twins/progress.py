"""Progress of long jobs, for a person and for a log.

On a terminal: a transient rich bar (or spinner). Anywhere else (``nohup``, ``2> log``, CI, a pipe): plain lines,
each one flushed, with the time of day. A job done within ``QUIET_S`` seconds prints nothing; a longer one prints
a line at ``QUIET_S``, then at most one every ``every_s`` seconds or ``every_pct`` percent (a background thread
keeps the log alive while a step gives no news), and an end line, e.g. ``12:03:04 epoch 3/8: 40% (120/300 batches,
00:42)`` then ``12:04:30 epoch 3/8: done in 01:45 (300/300 batches)``. Lines go to standard error (standard output
stays for results), where ``nohup`` and ``2>&1`` collect them.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as _RichProgress

T = TypeVar("T")

_stderr = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
QUIET_S = 2.0  # a job done sooner prints nothing in a log


def line_buffered_stdout() -> None:
    """Flush standard output at each line when it is not a terminal (``PYTHONUNBUFFERED`` for text): results
    printed during a long job reach its log in order with the progress lines, not when a buffer fills or it ends."""
    stream = sys.stdout
    if stream is not None and not stream.isatty() and hasattr(stream, "reconfigure"):
        stream.reconfigure(line_buffering=True)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """A unit of work with an optional count: ``with Progress("ingesting x.yaml") as p: ...``; ``p.update(n, total)``
    as work is done, ``p.note(line)`` for a line that stays (above the bar, or in the log). ``unit`` names what is
    counted (``batches``); a progress without a unit or total shows a spinner on a terminal."""

    def __init__(self, description: str, total: int | None = None, unit: str = "", console: Console | None = None,
                 every_s: float = 60.0, every_pct: float = 10.0) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.console = console or _stderr
        self.every_s, self.every_pct = every_s, every_pct
        self.completed = 0
        self._bar: _RichProgress | None = None
        self._task = None
        self._start = self._last_line = 0.0
        self._last_pct = 0.0
        self._printed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heart: threading.Thread | None = None

    def __enter__(self) -> Progress:
        self._start = self._last_line = time.monotonic()
        if self.console.is_terminal:
            counted = self.total is not None or bool(self.unit)
            columns = [SpinnerColumn(), TextColumn("{task.description}", markup=False),
                       *([BarColumn(), MofNCompleteColumn()] if counted else []), TimeElapsedColumn()]
            self._bar = _RichProgress(*columns, console=self.console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        else:
            line_buffered_stdout()
            self._heart = threading.Thread(target=self._heartbeat, name="twins-progress", daemon=True)
            self._heart.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._bar is not None:
            self._bar.stop()
            return
        self._stop.set()
        self._heart.join()
        if self._printed:
            counted = f" ({self._count()})" if self.total is not None or self.completed else ""
            ended = "done in" if exc_type is None else "stopped after"
            self._line(f"{self.description}: {ended} {_clock(time.monotonic() - self._start)}{counted}")

    def update(self, completed: int | None = None, total: int | None = None, description: str | None = None,
               advance: int = 0) -> None:
        """Set (``completed``) or add to (``advance``) the count, and optionally the total and the description."""
        with self._lock:
            self.completed = (self.completed if completed is None else completed) + advance
            self.total = self.total if total is None else total
            self.description = description or self.description
            if self._bar is not None:
                self._bar.update(self._task, completed=self.completed, total=self.total, description=self.description)
                return
            now = time.monotonic()
            pct = self._pct()
            due = now - self._last_line >= self.every_s or (pct is not None and pct >= self._last_pct + self.every_pct)
            if now - self._start >= QUIET_S and due:
                self._status(now)

    def note(self, line: str) -> None:
        """A line that stays: printed above the bar on a terminal, with the time of day in a log."""
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            with self._lock:
                self._line(line)

    def _heartbeat(self) -> None:
        wait = QUIET_S
        while not self._stop.wait(wait):
            with self._lock:
                now = time.monotonic()
                if not self._printed or now - self._last_line >= self.every_s:
                    self._status(now)
                wait = max(0.05, self._last_line + self.every_s - now)

    def _pct(self) -> float | None:
        return 100.0 * self.completed / self.total if self.total else None

    def _status(self, now: float) -> None:
        pct = self._pct()
        if pct is not None:
            self._last_pct = pct - pct % self.every_pct
        clock = _clock(now - self._start)
        if pct is not None:
            self._line(f"{self.description}: {pct:.0f}% ({self._count()}, {clock})")
        else:
            self._line(f"{self.description}: {self._count() if self.completed else 'running'} ({clock})")
        self._last_line = now

    def _count(self) -> str:
        total = "" if self.total is None else f"/{self.total:,}"
        return f"{self.completed:,}{total}{' ' + self.unit if self.unit else ''}"

    def _line(self, text: str) -> None:
        self.console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False)
        self.console.file.flush()
        self._printed = True


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "",
          console: Console | None = None) -> Iterator[T]:
    """``items``, advancing a ``Progress`` by one per item (``total`` defaults to ``len(items)`` where it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(description, total, unit, console) as progress:
        for item in items:
            yield item
            progress.update(advance=1)
