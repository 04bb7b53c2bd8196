"""The canonical event schema every source is mapped onto (DESIGN §2)."""

from __future__ import annotations

import polars as pl

EVENT_TYPES = ("purchase", "return", "message", "telemetry", "service")  # service: a machine's service request
ACTORS = ("human", "machine", "unknown")

#: Canonical columns in output order. ``basket_seq`` orders baskets within a customer for
#: sources that give order but no time (Ta-Feng's published versions); ``amount`` is the
#: line value (``quantity * unit_price`` unless the source gives it).
CANONICAL: dict[str, pl.DataType] = {
    "customer_id": pl.String(),
    "event_time": pl.Datetime("us", "UTC"),
    "basket_id": pl.String(),
    "basket_seq": pl.Int64(),
    "item_id": pl.String(),
    "quantity": pl.Float64(),
    "unit_price": pl.Float64(),
    "amount": pl.Float64(),
    "event_type": pl.String(),
    "text": pl.String(),
    "channel": pl.String(),
    "actor": pl.String(),
}

#: Source columns that a config may map onto canonical ones (the rest are derived).
MAPPABLE = ("customer_id", "event_time", "basket_id", "item_id", "quantity", "unit_price", "amount",
            "event_type", "text", "channel", "actor")

QUARANTINE_REASON = "reason"
FILE_COLUMN = "source_file"
ROW_COLUMN = "source_row"
READER_REASON = "_reader_reason"  # a reader's own quarantine reason for a row (e.g. basket JSON's bad_item)
