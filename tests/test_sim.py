"""The market simulator: reproducible, mass-balanced, policies obeyed, ground truth consistent with the events."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from twins.config import ConfigError
from twins.data.schema import CANONICAL, EVENT_TYPES
from twins.sim import MarketConfig, load_config, simulate
from twins.sim.config import Products, Telemetry
from twins.sim.prices import offer_prices, redraw_from

REPO_CONFIG = "configs/sim/market.yaml"


def small(**kw) -> MarketConfig:
    base = dict(seed=3, n_machines=300, days=90, horizon_days=40, humans={"n": 30},
                telemetry=Telemetry(share={"bound": 1.0, "adaptable": 1.0, "autonomous": 1.0}, stock_noise=0.0,
                                    usage_noise=0.0))
    return MarketConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def market():
    return simulate(small())


@pytest.fixture(scope="module")
def events(market):
    return market.events()


@pytest.fixture(scope="module")
def truth(market):
    return market.truth()


def test_the_repo_config_loads_and_overrides_apply():
    cfg = load_config(REPO_CONFIG, ["n_machines=7", "telemetry.every_days=7"])
    assert cfg.n_machines == 7 and cfg.telemetry.every_days == 7 and cfg.start.tzinfo is not None


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("kinds: {bound: 0.5, robot: 0.5}\n")
    with pytest.raises(ConfigError, match="robot"):
        load_config(path)


def test_same_seed_same_market_other_seed_other_market():
    a, b, c = (simulate(small(n_machines=50, seed=s)).events() for s in (1, 1, 2))
    assert a.equals(b)
    assert not a.equals(c)


def test_another_future_keeps_the_past_and_redraws_what_follows(market, events, truth):
    other = simulate(small(), future_seed=5)
    before = pl.col("event_time") < market.as_of
    assert other.events().filter(before).equals(events.filter(before))
    assert np.array_equal(other.offers[: market.config.days], market.offers[: market.config.days])
    assert np.array_equal(other.log.stock_as_of, market.log.stock_as_of)
    assert not other.truth()["next_order_time"].equals(truth["next_order_time"])
    assert not np.array_equal(other.offers[market.config.days:], market.offers[market.config.days:])
    assert simulate(small(), future_seed=5).truth().equals(other.truth())


def test_redrawn_offers_continue_the_promotions_running_the_day_before():
    cfg = Products(n_products=50, promo_prob=0.5, promo_days=1e9)   # promotions never end once started
    base = np.full(50, 10.0)
    offers = offer_prices(cfg, base, 20, np.random.default_rng(0))
    again = redraw_from(cfg, base, offers, 10, np.random.default_rng(1))
    on = offers[9] < 10.0 * np.asarray(cfg.supplier_markup)[:, None] - 1e-9
    assert on.any() and np.array_equal(again[:10], offers[:10])
    assert np.all(again[10:][:, on] == offers[9][on])


def test_events_are_canonical(events):
    assert list(events.columns)[: len(CANONICAL)] == list(CANONICAL)
    assert dict(events.schema) | dict(CANONICAL) == dict(events.schema)
    assert set(events["event_type"].unique()) <= set(EVENT_TYPES)
    assert set(events["event_type"].unique()) == {"purchase", "telemetry", "service", "message"}
    assert events["event_time"].is_sorted()
    assert events.filter(pl.col("actor") == "human")["channel"].unique().to_list() == ["store"]


def _stock_usage(events: pl.DataFrame, machine: str) -> tuple[np.ndarray, np.ndarray]:
    tel = events.filter((pl.col("customer_id") == machine) & (pl.col("event_type") == "telemetry"))
    return (tel.filter(pl.col("text") == "stock")["quantity"].to_numpy(),
            tel.filter(pl.col("text") == "usage")["quantity"].to_numpy())


def test_stock_balances_arrivals_and_consumption_and_never_goes_negative(market, events):
    """With noiseless daily telemetry: stock(t) = stock(t-1) + arrivals(t) - consumption(t), consumption >= 0."""
    o = market.log.orders
    days = market.config.days + market.config.horizon_days
    for i in range(0, 300, 7):
        stock, usage = _stock_usage(events, f"m{i}")
        assert len(stock) == days and stock.min() >= 0
        arrivals = np.zeros(days + 20)
        mine = o["machine"] == i
        np.add.at(arrivals, o["day"][mine] + o["lead_days"][mine], o["quantity"][mine])
        used = np.diff(usage)
        assert used.min() >= -1e-3
        np.testing.assert_allclose(stock[1:], stock[:-1] + arrivals[1:days] - used, atol=1e-3 * max(1, stock.max()))


def _position_before(market, events, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Inventory position at the start of each day (day >= 1) from noiseless telemetry and open orders."""
    o = market.log.orders
    stock, _ = _stock_usage(events, f"m{i}")
    mine = o["machine"] == i
    day, lead, qty = o["day"][mine], o["lead_days"][mine], o["quantity"][mine]
    days = np.arange(1, len(stock))
    open_ = np.array([qty[(day < t) & (day + lead >= t)].sum() for t in days])  # on order or arriving at t
    return days, stock[:-1] + open_


def test_bound_s_S_machines_order_up_to_S_exactly_when_at_or_below_s(market, events, truth):
    o = market.log.orders
    rows = truth.with_row_index().filter(pl.col("policy") == "s_S").head(25)
    assert rows.height > 5
    for i, s, big_s in rows.select("index", "reorder_point", "order_up_to").iter_rows():
        days, position = _position_before(market, events, i)
        mine = o["machine"] == i
        ordered = dict(zip(o["day"][mine].tolist(), o["quantity"][mine].tolist()))
        for t, pos in zip(days, position):
            if pos <= s - 1e-3:
                assert t in ordered and ordered[t] == pytest.approx(np.ceil(big_s - pos), abs=1.0)
            elif pos > s + 1e-3:
                assert t not in ordered


def test_periodic_machines_order_only_on_review_days(market, truth):
    o = market.log.orders
    rows = truth.with_row_index().filter(pl.col("policy") == "periodic")
    assert rows.height > 3
    for i, review in rows.select("index", "review_days").iter_rows():
        days = o["day"][o["machine"] == i]
        assert len(days) >= 2 and np.all(np.diff(days) % review == 0)


def test_adaptable_machines_choose_the_cheapest_offer_counting_delivery(market, events, truth):
    feed = market.offer_feed().with_columns(pl.col("day").dt.date())
    orders = (events.filter((pl.col("event_type") == "purchase") & (pl.col("actor") == "machine"))
              .join(truth.filter(pl.col("kind") == "adaptable").select("machine_id", "delay_cost"),
                    left_on="customer_id", right_on="machine_id")
              .with_columns(pl.col("event_time").dt.date().alias("day")))
    assert orders.height > 50
    offers = orders.select("basket_id", "day", "item_id", "delay_cost", pl.col("supplier").alias("chosen")).join(
        feed, on=["day", "item_id"]).with_columns((pl.col("unit_price") + pl.col("delay_cost") * pl.col("delivery_days")).alias("cost"))
    best = offers.sort("cost").group_by("basket_id").first()
    assert (best["supplier"] == best["chosen"]).all()


def test_autonomous_machines_pay_above_their_reservation_only_after_a_refused_counter(events, truth):
    machine = events.filter(pl.col("actor") == "machine")
    orders = machine.filter(pl.col("event_type") == "purchase").join(
        truth.filter(pl.col("kind") == "autonomous").select("machine_id", "reservation_price"),
        left_on="customer_id", right_on="machine_id")
    msgs = machine.filter(pl.col("event_type") == "message")
    above = orders.filter(pl.col("unit_price") > pl.col("reservation_price") + 0.01)
    assert orders.height > 20 and msgs.height > 0
    pairs = msgs.filter(pl.col("basket_id").is_in(above["basket_id"].implode()))
    assert set(pairs["text"]) <= {"accept"} and pairs.height == above.height
    refused = msgs.filter(pl.col("text") == "decline")
    assert refused["basket_id"].null_count() == refused.height


def test_ground_truth_rows_match_machines_and_the_next_order(market, events, truth):
    assert truth.height == market.config.n_machines and truth["machine_id"].n_unique() == truth.height
    machines = events.filter(pl.col("actor") == "machine")["customer_id"].unique()
    assert machines.is_in(truth["machine_id"].implode()).all()
    as_of = market.as_of
    first = (events.filter((pl.col("event_type") == "purchase") & (pl.col("actor") == "machine")
                           & (pl.col("event_time") >= as_of))
             .group_by("customer_id").agg(pl.col("event_time").min(), pl.col("quantity").first()))
    joined = truth.join(first, left_on="machine_id", right_on="customer_id", how="left")
    assert (joined["next_order_time"].is_null() == joined["censored"]).all()
    uncensored = joined.filter(~pl.col("censored"))
    assert (uncensored["next_order_time"] == uncensored["event_time"]).all()
    assert (uncensored["next_order_quantity"] == uncensored["quantity"]).all()
    assert (truth["as_of"] == as_of).all() and as_of == market.config.start + timedelta(days=90)
    # the true rate is the window's realised demand, close to the long-run parameter
    ratio = (truth["rate"] / truth["expected_rate"]).to_numpy()
    assert 0.9 < np.median(ratio) < 1.1


def test_humans_shop_in_daytime_baskets(events):
    humans = events.filter(pl.col("actor") == "human")
    assert humans.height > 100
    hours = humans["event_time"].dt.hour()
    assert hours.min() >= 7 and hours.max() <= 23
    assert humans.group_by("basket_id").agg(pl.col("customer_id").n_unique())["customer_id"].max() == 1
