"""The seller's ledger: the JSON lines ``twins sell`` writes for the next ``twins ingest`` to read.

UCP order webhooks go to ``$TWINS_HOME/commerce/ucp/`` (read by ``configs/sources/ucp_orders.yaml``), ACP
checkout-session events to ``$TWINS_HOME/commerce/acp/`` (``configs/sources/acp_checkouts.yaml``). Each process
writes its own segment per day, ``<day>-<pid>-<part>.jsonl``, and republishes it whole with
``twins.publish.write_text`` (temporary file, fsync, rename, fsync of the folder) under the segment's lock, so a
reader (an ingest running meanwhile) sees a segment before or after a line, never part of one. A segment passes
to the next part at ``max_bytes``. An order is on disk before ``append(..., sync=True)`` returns; other lines are
published by ``flush`` (the service calls it every second and on shutdown).
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from twins import publish

MAX_BYTES = 4 << 20


class Ledger:
    """Append-only JSON lines under ``folder``, published atomically (see the module docstring)."""

    def __init__(self, folder: Path, max_bytes: int = MAX_BYTES) -> None:
        self.folder, self.max_bytes = Path(folder), max_bytes
        self._lock, self._writing = threading.Lock(), threading.Lock()
        self._day, self._part, self._text, self._pending = "", 0, "", []

    def _target(self) -> Path:
        return self.folder / f"{self._day}-{os.getpid()}-{self._part:03d}.jsonl"

    def append(self, line: dict, sync: bool = False) -> None:
        """Queue ``line``; with ``sync`` publish every queued line before returning."""
        text = json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n"
        with self._lock:
            self._pending.append(text)
        if sync:
            self.flush()

    def flush(self) -> None:
        """Publish the queued lines; appending goes on meanwhile (only the queue swap holds its lock)."""
        with self._writing:
            with self._lock:
                pending, self._pending = self._pending, []
            if not pending:
                return
            try:
                self._publish("".join(pending))
            except BaseException:
                with self._lock:
                    self._pending[:0] = pending
                raise

    def _publish(self, lines: str) -> None:
        day = datetime.now(timezone.utc).strftime("%Y%m%d")
        if day != self._day:
            self._day, self._part, self._text = day, 0, ""
        if len(self._text) > self.max_bytes:
            self._part, self._text = self._part + 1, ""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self._target()
        with publish.locked(target, "twins sell ledger"), publish.disk_errors(self.folder):
            if not self._text and target.exists():  # a restarted process with the same pid: keep what is there
                self._text = target.read_text(encoding="utf-8")
            text = self._text + lines
            publish.write_text(target, text)
        self._text = text
