"""What data a bundle was fitted on, and the check that it never saw the future of the twins it scores.

Exporters record two manifest keys (``provenance``): ``data_source``, the source name, and ``data_until``, the
time of the last event the model was fitted on (ISO 8601, UTC; ``null`` for a source without event times).
``twins score`` and ``twins serve`` compare it with a twin snapshot's ``as_of`` (``check_fitted_before``): a
bundle of the same source fitted on events at or after ``as_of`` knows what those customers did next, so its
scores are not what it would have said at ``as_of``. That is refused unless asked for (``allow_future``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any


class FutureLeak(ValueError):
    """A bundle fitted on events at or after the twins' ``as_of`` of the same source."""


def provenance(source: str, until: datetime | None) -> dict[str, Any]:
    """The manifest keys naming the data a bundle was fitted on: ``until`` is its last event's time (None when the
    source has no times)."""
    return {"data_source": source,
            "data_until": None if until is None else until.astimezone(timezone.utc).isoformat()}


def last_event(events) -> datetime | None:
    """The latest ``event_time`` of a polars frame (lazy or not) of events; None when it has none."""
    import polars as pl

    frame = events.lazy().select(pl.col("event_time").max()).collect()
    return frame.item() if frame.height else None


def future_leak(manifest: Mapping[str, Any], source: str, as_of: datetime | None, what: str) -> str | None:
    """Why a bundle (its ``manifest``) must not score ``source``'s twins as of ``as_of``: it was fitted on events of
    that source at or after ``as_of``; None when it was not, or cannot be told. ``what`` names the twins."""
    until = manifest.get("data_until")
    if manifest.get("data_source") != source or until is None or as_of is None:
        return None
    fitted = datetime.fromisoformat(until)
    if fitted < as_of:
        return None
    return (f"bundle {manifest.get('name', '?')!r} was fitted on events of {source} up to {fitted:%Y-%m-%d %H:%M} UTC, "
            f"after the as_of of {what} ({as_of:%Y-%m-%d %H:%M} UTC): it has seen what these customers did next. "
            f"Use twins built after {fitted:%Y-%m-%d} (`twins build ... --as-of end`), a bundle fitted before "
            f"{as_of:%Y-%m-%d}, or --allow-future to use it anyway (a deliberate backtest)")


def check_fitted_before(manifest: Mapping[str, Any], source: str, as_of: datetime | None, what: str,
                        allow_future: bool = False) -> None:
    """Refuse (``FutureLeak``) a bundle of ``source`` fitted on events at or after ``as_of``, the time of the twins
    it would score (``future_leak``); with ``allow_future`` warn instead. A bundle that does not record its data
    (exported before ``data_until`` existed) gets a warning. Bundles of another source, and twins without
    ``as_of``, are not compared."""
    if "data_until" not in manifest:
        warnings.warn(f"bundle {manifest.get('name', '?')!r} does not record the data it was fitted on (no data_until "
                      f"in its manifest): cannot check that it never saw events after the as_of of {what}; re-export "
                      "it to record them", stacklevel=2)
        return
    message = future_leak(manifest, source, as_of, what)
    if message and not allow_future:
        raise FutureLeak(message)
    if message:
        warnings.warn(message, stacklevel=2)
