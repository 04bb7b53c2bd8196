"""Behaviour features (machine vs human) on hand-made customers: every value checkable by hand."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from twins.twin.behaviour import BEHAVIOUR_FEATURES, behaviour_features

MONDAY_3AM = datetime(2025, 1, 6, 3, 0, tzinfo=timezone.utc)
# a person: Sat 10:00, Sun 15:00, Fri 18:00, Sun 11:00; two lines a visit, items alternate, one line on a deal
VISITS = [datetime(2025, 1, 4, 10, tzinfo=timezone.utc), datetime(2025, 1, 5, 15, tzinfo=timezone.utc),
          datetime(2025, 1, 10, 18, tzinfo=timezone.utc), datetime(2025, 1, 12, 11, tzinfo=timezone.utc)]


def _events(extra: list[dict] | None = None) -> pl.DataFrame:
    rows = [dict(customer_id="m", basket_id=f"o{k}", event_time=MONDAY_3AM + timedelta(days=7 * k), item_id="p1",
                 quantity=10.0, unit_price=5.0, event_type="purchase", actor="machine") for k in range(5)]
    for k, when in enumerate(VISITS):
        rows += [dict(customer_id="h", basket_id=f"v{k}", event_time=when, item_id=f"g{k % 2}", quantity=1.0,
                      unit_price=2.0, event_type="purchase", actor="human"),
                 dict(customer_id="h", basket_id=f"v{k}", event_time=when + timedelta(seconds=30), item_id=f"g{1 + k % 2}",
                      quantity=2.0, unit_price=1.0 if k == 2 else 3.0, event_type="purchase", actor="human")]
    rows += [dict(customer_id="few", basket_id=f"f{k}", event_time=MONDAY_3AM + timedelta(days=k), item_id="p1",
                  quantity=1.0, unit_price=5.0, event_type="purchase", actor="human") for k in range(2)]
    rows += extra or []
    return pl.DataFrame(rows).with_columns(pl.col("event_time").cast(pl.Datetime("us", "UTC")))


@pytest.fixture(scope="module")
def feats() -> dict[str, dict[str, float]]:
    return {r["customer_id"]: r for r in behaviour_features(_events()).iter_rows(named=True)}


def test_a_clockwork_machine(feats):
    m = feats["m"]
    assert m["n_orders"] == 5
    assert m["gap_cv"] == m["gap_mad"] == m["gap_autocorr"] == 0.0 and m["max_gap_ratio"] == 1.0
    assert m["whole_day_gaps"] == 1.0 and m["hour_entropy"] == 0.0 and m["weekday_entropy"] == 0.0
    assert m["time_of_day_spread"] == pytest.approx(0.0, abs=1e-12) and m["weekend_share"] == 0.0
    assert m["log_lines_per_order"] == pytest.approx(np.log(2))
    assert m["top_item_share"] == m["quantity_mode_share"] == 1.0 and m["distinct_items_per_order"] == 0.2
    assert m["top_item_quantity_cv"] == m["deal_share"] == m["price_cv"] == 0.0


def test_a_person(feats):
    h = feats["h"]
    gaps = np.array([29.0, 123.0, 41.0]) / 24                      # hours between the visits
    assert h["gap_cv"] == pytest.approx(gaps.std() / gaps.mean())
    assert h["gap_mad"] == pytest.approx(np.median(np.abs(gaps - gaps[2])) / gaps[2])
    assert h["max_gap_ratio"] == pytest.approx(123 / 41) and h["whole_day_gaps"] == 0.0
    assert h["gap_autocorr"] == pytest.approx(-1.0)                 # two pairs: (29, 123), (123, 41)
    assert h["hour_entropy"] == pytest.approx(1.0)                  # 4 visits, 4 distinct hours
    assert h["weekday_entropy"] == pytest.approx(-(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5)) / np.log(4))
    assert h["weekend_share"] == 0.75
    assert h["top_item_share"] == 0.5 and h["distinct_items_per_order"] == 0.75 and h["quantity_mode_share"] == 0.5
    assert h["top_item_quantity_cv"] == pytest.approx(np.std([2, 1, 2, 1]) / 1.5)   # g1: qty 2, 1, 2, 1
    assert h["deal_share"] == 1 / 8                                 # g1 at 1.0, its median price 2.0
    assert h["price_cv"] == pytest.approx(np.std([3, 2, 1, 2]) / 2 / 3)  # g0, g2 constant; g1 varies


def test_too_few_orders_are_left_out_and_only_purchases_count(feats):
    assert set(feats) == {"h", "m"}
    noise = [dict(customer_id="m", basket_id=None, event_time=MONDAY_3AM + timedelta(hours=k), item_id="p1",
                  quantity=float(k), unit_price=None, event_type=kind, actor="machine")
             for k, kind in enumerate(("telemetry", "message", "service"))]
    again = behaviour_features(_events(noise).with_columns(pl.lit("unknown").alias("actor")))
    assert again.equals(behaviour_features(_events()))
    assert again.columns == ["customer_id", "n_orders", *BEHAVIOUR_FEATURES]
