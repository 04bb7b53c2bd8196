"""Customer twins: hand-computed values, and point-in-time correctness (no event at or after as_of counts)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from twins.data.schema import CANONICAL
from twins.twin.customer import TwinParams, build_customer_twins
from twins.twin.store import TwinNotFound, TwinStore

UTC = timezone.utc


def events(rows: list[dict]) -> pl.LazyFrame:
    """Canonical events from partial rows (missing columns null; event_type purchase)."""
    full = [{c: r.get(c) for c in CANONICAL} | {"event_type": r.get("event_type", "purchase")} for r in rows]
    return pl.DataFrame(full, schema=CANONICAL).lazy()


def line(cust: str, basket: str, item: str, day: int, amount: float = 1.0, etype: str = "purchase") -> dict:
    return {"customer_id": cust, "basket_id": basket, "item_id": item, "quantity": 1.0, "unit_price": amount,
            "amount": amount, "event_type": etype, "event_time": datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=day)}


def test_hand_computed_twin():
    ev = events([
        line("a", "b1", "milk", 0, 2.0), line("a", "b1", "bread", 0, 3.0),
        line("a", "b2", "milk", 2, 2.0),
        line("a", "b3", "milk", 6, 2.0), line("a", "b3", "eggs", 6, 4.0),
        line("a", "r1", "eggs", 7, 4.0, "return"),
        line(None, "g1", "milk", 1, 2.0),                      # a guest: no twin
        line("b", "b9", "tea", 20, 5.0),                       # on as_of: excluded
    ])
    tw = build_customer_twins(ev, datetime(2024, 1, 21, tzinfo=UTC), TwinParams(item_decay=0.5, outlook_horizon_days=None))
    assert tw["customer_id"].to_list() == ["a"]
    a = tw.row(0, named=True)
    assert a["baskets"] == 3 and a["repeat_purchase_days"] == 2
    assert a["spend_total"] == pytest.approx(13.0) and a["returned_total"] == pytest.approx(4.0)
    assert a["monetary"] == pytest.approx(9.0)
    assert a["basket_value_mean"] == pytest.approx(13.0 / 3)
    assert a["recency_days"] == pytest.approx(14.0)           # Jan 21 - Jan 7
    assert a["tenure_days"] == pytest.approx(20.0)
    assert a["ipt_mean_days"] == pytest.approx(3.0)           # gaps 2 and 4
    assert a["ipt_std_days"] == pytest.approx(np.std([2, 4], ddof=1))
    cv = np.std([2, 4], ddof=1) / 3
    assert a["ipt_cv"] == pytest.approx(cv)
    assert a["burstiness"] == pytest.approx((cv * 3 - 3) / (cv * 3 + 3))
    # decayed item weights, latest basket rank 0: milk in ranks 0,1,2 -> 1 + .5 + .25; eggs rank 0; bread rank 2
    weights = {d["item_id"]: d["weight"] for d in a["top_items"]}
    assert weights == pytest.approx({"milk": 1.75, "eggs": 1.0, "bread": 0.25})
    assert [d["item_id"] for d in a["top_items"]] == ["milk", "eggs", "bread"]
    assert a["distinct_items"] == 3 and a["repeat_item_share"] == pytest.approx(1 / 3)
    assert a["naive_next_purchase"] == datetime(2024, 1, 10, tzinfo=UTC)


def random_events(rng: np.random.Generator, n: int, start: datetime, days: int) -> list[dict]:
    rows = []
    for i in range(n):
        cust = f"c{rng.integers(0, 40)}"
        day = float(rng.uniform(0, days))
        rows.append({"customer_id": cust, "basket_id": f"{cust}-{int(day)}", "item_id": f"i{rng.integers(0, 30)}",
                     "quantity": float(rng.integers(1, 4)), "unit_price": float(rng.uniform(1, 9)), "amount": None,
                     "event_type": "return" if rng.random() < 0.05 else "purchase",
                     "event_time": start + timedelta(days=day)})
    for r in rows:
        r["amount"] = r["quantity"] * r["unit_price"]
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_event_at_or_after_as_of_changes_any_twin(seed):
    rng = np.random.default_rng(seed)
    start, as_of = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)
    past = [r for r in random_events(rng, 600, start, 120) if r["event_time"] < as_of]
    future = [r for r in random_events(rng, 600, start, 120) if r["event_time"] >= as_of]
    # adversarial future: exactly at as_of, new customers, items of existing baskets, and returns
    future += [dict(past[0], event_time=as_of), dict(past[1], event_time=as_of, customer_id="newcomer"),
               dict(past[2], event_time=as_of + timedelta(days=1), event_type="return")]
    params = TwinParams(item_decay=0.8)
    before = build_customer_twins(events(past), as_of, params)
    after = build_customer_twins(events(past + future), as_of, params)
    assert before.height > 10
    assert_frame_equal(before, after)
    # and the twin really moves once as_of passes the future events
    later = build_customer_twins(events(past + future), as_of + timedelta(days=90), params)
    assert not later.select("customer_id", "baskets").equals(after.select("customer_id", "baskets"))


def test_purchase_outlook_in_the_twin():
    rng = np.random.default_rng(3)
    as_of = datetime(2024, 4, 1, tzinfo=UTC)
    tw = build_customer_twins(events(random_events(rng, 1500, datetime(2024, 1, 1, tzinfo=UTC), 90)), as_of,
                              TwinParams(outlook_horizon_days=28))
    cols = ["expected_purchases", "expected_spend", "p_alive", "churn_risk", "p_any_purchase"]
    assert tw.select(pl.all_horizontal(pl.col(cols).is_finite()).all()).item()
    assert tw.select(((pl.col("p_alive") + pl.col("churn_risk") - 1).abs() < 1e-12).all()).item()
    assert tw.select(pl.col("p_alive").is_between(0, 1).all() & pl.col("p_any_purchase").is_between(0, 1).all()).item()
    assert tw.select((pl.col("next_purchase_low") <= pl.col("next_purchase")).all()
                     & (pl.col("next_purchase") <= pl.col("next_purchase_high")).all()
                     & (pl.col("next_purchase_low") >= as_of).all()).item()
    # a customer who bought more often is expected to buy more
    top = tw.sort("baskets").tail(5)["expected_purchases"].mean()
    low = tw.sort("baskets").head(5)["expected_purchases"].mean()
    assert top > low


def test_outlook_off_without_repeat_buyers():
    ev = events([line("a", "b1", "milk", 0), line("b", "b2", "tea", 1)])
    with pytest.warns(RuntimeWarning, match="no repeat purchases"):
        tw = build_customer_twins(ev, datetime(2024, 1, 5, tzinfo=UTC))
    assert tw.height == 2 and "expected_purchases" not in tw.columns


def test_order_only_source_builds_as_of_end():
    ev = events([{"customer_id": "u", "basket_id": f"u|{s}", "basket_seq": s, "item_id": it, "event_type": "purchase"}
                 for s, it in [(0, "x"), (1, "y"), (1, "x"), (2, "x")]])
    tw = build_customer_twins(ev, None, TwinParams(item_decay=0.5)).row(0, named=True)
    assert tw["baskets"] == 3 and tw["recency_days"] is None and tw["spend_total"] is None
    assert {d["item_id"]: d["weight"] for d in tw["top_items"]} == pytest.approx({"x": 1.75, "y": 0.5})


def test_store_versions_latest_and_lookup(tmp_path):
    store = TwinStore(tmp_path / "store")
    ev = events([line("a", "b1", "milk", 0), line("b", "b2", "tea", 1)])
    first = store.write(build_customer_twins(ev, datetime(2024, 1, 2, tzinfo=UTC)), "shop", as_of=datetime(2024, 1, 2, tzinfo=UTC))
    second = store.write(build_customer_twins(ev), "shop")
    assert store.snapshots("shop") == sorted([f"{first.path.parent.name}/{first.path.name}",
                                              f"{second.path.parent.name}/{second.path.name}"])
    latest = store.open("shop")
    assert latest.path == second.path
    assert latest.get("b")["baskets"] == 1
    assert store.open("shop", snapshot=f"{first.path.parent.name}/{first.path.name}").get("a")["baskets"] == 1
    with pytest.raises(TwinNotFound, match="no twin 'zz'"):
        latest.get("zz")
    with pytest.raises(FileNotFoundError, match="twins build"):
        store.open("nowhere")
    assert latest.manifest["rows"] == 2


def test_store_leaves_previous_snapshot_when_write_fails(tmp_path):
    store = TwinStore(tmp_path / "store")
    good = build_customer_twins(events([line("a", "b1", "milk", 0)]))
    snap = store.write(good, "shop")
    with pytest.raises(ValueError, match="duplicate customer_id"):
        store.write(pl.concat([good, good]), "shop")
    assert store.open("shop").path == snap.path
