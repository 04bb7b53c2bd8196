"""Attribute tables: several per kind, joined on the key; ``count_as`` counts rows per key."""

from __future__ import annotations

import pytest

from twins.config import ConfigError
from twins.data.events import scan_events
from twins.data.ingest import ingest
from twins.data.source import load_source


def test_several_tables_and_counts(tmp_path):
    (tmp_path / "log.csv").write_text("cust,sku,ts\nh1,p1,2024-01-01\nh2,p2,2024-01-02\nh3,p1,2024-01-03\n")
    (tmp_path / "demo.csv").write_text("hh,age\nh1,30\nh2,40\n")
    (tmp_path / "campaigns.csv").write_text("hh,campaign\nh1,c1\nh1,c2\nh3,c1\n")
    (tmp_path / "coupons.csv").write_text("sku,campaign\np1,c1\np1,c2\np1,c3\n")
    (tmp_path / "s.yaml").write_text(
        "name: shop\nfiles: [{path: log.csv}]\ncolumns: {customer_id: cust, item_id: sku, event_time: ts}\n"
        "validation: {not_after: 2025-01-01T00:00:00Z}\n"
        "customer_attributes:\n  - {path: demo.csv, key: hh, columns: [age]}\n"
        "  - {path: campaigns.csv, key: hh, count_as: campaigns_received}\n"
        "item_attributes: {path: coupons.csv, key: sku, count_as: coupon_offers}\n")
    ingest(load_source(tmp_path / "s.yaml"), tmp_path / "out")
    ev = scan_events(tmp_path / "out", with_attributes=True).sort("customer_id").collect()
    assert ev["customer_age"].to_list() == ["30", "40", None]                 # h3 has no demographics row
    assert ev["customer_campaigns_received"].to_list() == [2, 0, 1]            # h2 received none: 0, not null
    assert ev["item_coupon_offers"].to_list() == [3, None, 3]                  # p2 is in no attribute table


def test_attribute_table_needs_columns_or_count(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "name: shop\nfiles: [{path: log.csv}]\ncolumns: {customer_id: cust, item_id: sku, event_time: ts}\n"
        "item_attributes: {path: coupons.csv, key: sku}\n")
    with pytest.raises(ConfigError, match="either columns .* or count_as"):
        load_source(tmp_path / "s.yaml")


def test_old_single_table_form_still_loads(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "name: shop\nfiles: [{path: log.csv}]\ncolumns: {customer_id: cust, item_id: sku, event_time: ts}\n"
        "item_attributes: {path: p.csv, key: sku, columns: [cat]}\n")
    cfg = load_source(tmp_path / "s.yaml")
    assert isinstance(cfg.item_attributes, list) and cfg.item_attributes[0].columns == ["cat"]
