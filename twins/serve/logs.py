"""Structured logs: one JSON object per line (``ts``, ``level``, ``event`` and the event's fields)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

LOGGER = logging.getLogger("twins.serve")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname, "event": record.getMessage(), **getattr(record, "fields", {})}
        return json.dumps(line, default=str)


def log_event(event: str, level: str = "INFO", **fields: Any) -> None:
    LOGGER.log(logging.getLevelName(level), event, extra={"fields": fields})


def configure(level: str = "INFO") -> None:
    """Send ``twins.serve`` events as JSON lines to stderr (``twins serve`` calls this)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
