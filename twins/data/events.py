"""Reading canonical events written by ``ingest`` (the I/O edge for every downstream step)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl


def scan_events(events_dir: str | Path, with_attributes: bool = False) -> pl.LazyFrame:
    """Lazily scan ``events.parquet``; with ``with_attributes`` join the item and customer tables in."""
    events_dir = Path(events_dir)
    path = events_dir / "events.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `twins ingest SOURCE.yaml` first")
    lf = pl.scan_parquet(path)
    if with_attributes:
        for table, key in (("items", "item_id"), ("customers", "customer_id")):
            if (events_dir / f"{table}.parquet").exists():
                lf = lf.join(pl.scan_parquet(events_dir / f"{table}.parquet"), on=key, how="left", maintain_order="left")
    return lf


def read_report(events_dir: str | Path) -> dict:
    return json.loads((Path(events_dir) / "report.json").read_text())


def baskets_by_customer(events: pl.LazyFrame) -> dict[str, list[list[str]]]:
    """Purchase baskets per customer in order (time, then basket_seq, then basket id), items de-duplicated
    within a basket in first-seen order. Guest rows (no customer) are left out."""
    df = (events.filter(pl.col("customer_id").is_not_null() & (pl.col("event_type") == "purchase"))
          .group_by("customer_id", "basket_id", maintain_order=True)
          .agg(pl.col("event_time").min(), pl.col("basket_seq").min(), pl.col("item_id").unique(maintain_order=True))
          .sort("customer_id", "event_time", "basket_seq", "basket_id", nulls_last=True)
          .group_by("customer_id", maintain_order=True).agg(pl.col("item_id"))
          .collect())
    return dict(zip(df["customer_id"].to_list(), df["item_id"].to_list()))
