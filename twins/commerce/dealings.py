"""The seller's own record of each buyer and product: quotes, quotes lost, the highest price taken without a counter,
the lowest counter. The twin policy reads it beside the machine twin (``accepted_price``, ``lost_share``,
``reservation_price``), as the agent market's seller does. Kept in memory by ``twins sell`` and rebuilt at start
from the ACP lines of its ledger (``$TWINS_HOME/commerce/acp/*.jsonl``), so a restart forgets nothing written.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path


class Dealings:
    def __init__(self) -> None:
        self._by: dict[tuple[str, str], list[float]] = {}  # quotes, lost, highest taken, lowest counter
        self._lock = threading.Lock()

    def _row(self, key: tuple[str, str]) -> list[float]:
        return self._by.setdefault(key, [0.0, 0.0, math.nan, math.nan])

    def quoted(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._row(key)[0] += 1

    def lost(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._row(key)[1] += 1

    def took(self, key: tuple[str, str], unit_price: float, countered: bool) -> None:
        if not countered:
            with self._lock:
                row = self._row(key)
                row[2] = max(row[2], unit_price) if math.isfinite(row[2]) else unit_price

    def countered(self, key: tuple[str, str], unit_price: float) -> None:
        with self._lock:
            row = self._row(key)
            row[3] = min(row[3], unit_price) if math.isfinite(row[3]) else unit_price

    def features(self, key: tuple[str, str]) -> dict[str, float] | None:
        row = self._by.get(key)
        if row is None:
            return None
        quotes, lost, taken, counter = row
        return {"accepted_price": taken, "lost_share": lost / quotes if quotes else math.nan,
                "reservation_price": counter}

    @classmethod
    def from_ledger(cls, folder: Path) -> "Dealings":
        """Replay the ACP lines ``twins sell`` wrote (unreadable lines are skipped: the ingest reports them)."""
        dealings, countered = cls(), set()
        for file in sorted(Path(folder).glob("*.jsonl")):
            for text in file.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    line = json.loads(text)
                    session, customer = line["checkout_session"], line["customer_id"]
                    items = [(li["item"]["id"], li["total"] / max(li["item"]["quantity"], 1))
                             for li in session["line_items"]]
                    event = line["event"]
                except (ValueError, KeyError, TypeError):
                    continue
                for item, unit_price in items:
                    key = (customer, item)
                    if event == "checkout_session.created":
                        dealings.quoted(key)
                    elif event == "checkout_session.updated" and isinstance(line.get("negotiation"), dict):
                        suggested = line["negotiation"].get("suggested_unit_price")
                        if isinstance(suggested, (int, float)):
                            dealings.countered(key, suggested)
                            countered.add((session["id"], item))
                    elif event == "checkout_session.completed":
                        dealings.took(key, unit_price, (session["id"], item) in countered)
                    elif event == "checkout_session.canceled":
                        dealings.lost(key)
        return dealings
