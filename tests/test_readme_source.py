"""README.md's "Bring your own log" example, run as written: its CSV lines and its source config."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from twins.data.ingest import ingest
from twins.data.source import load_source

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> tuple[list[str], str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Bring your own log"):]
    section = section[:section.index("\n## ", 1)]
    csv = re.search(r"```text\n(.*?)```", section, re.S).group(1).splitlines()
    yaml = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return csv, yaml


def test_the_readme_source_config_ingests_the_readme_lines(tmp_path):
    csv, yaml = _blocks()
    (tmp_path / "data").mkdir()
    (tmp_path / "my_shop.yaml").write_text(yaml)
    (tmp_path / "data" / "orders_2024.csv").write_text("\n".join(csv) + "\n")
    (tmp_path / "data" / "orders_2024b.csv").write_text("\n".join(csv[:2]) + "\n")  # the first line again: overlap
    (tmp_path / "data" / "products.csv").write_text("StockCode,Category\n85123A,home\n")
    (tmp_path / "data" / "promotions.csv").write_text("StockCode,Promo\n85123A,spring\n85123A,summer\n")
    report = ingest(load_source(tmp_path / "my_shop.yaml"), tmp_path / "out")

    assert (report.rows_in, report.accepted) == (4, 1)
    assert report.quarantined == {"non_product": 2, "overlap_duplicate": 1} and report.hints == []
    event = pl.read_parquet(tmp_path / "out" / "events.parquet").row(0, named=True)
    assert (event["customer_id"], event["item_id"], event["quantity"], event["unit_price"]) == ("17850", "85123A", 6.0, 2.55)
    assert (event["channel"], event["Country"], event["export"]) == ("web", "United Kingdom", None)
    assert str(event["event_time"]) == "2024-12-01 08:26:00+00:00"  # 08:26 in London on 1 December is 08:26 UTC
    items = pl.read_parquet(tmp_path / "out" / "items.parquet").row(0, named=True)
    assert items == {"item_id": "85123A", "item_Category": "home", "item_promotions": 2}
