"""A simulated market as canonical events (DESIGN §2), its ground truth and its offer feed, as polars frames.

Event conventions (``actor`` machine or human):

- orders: ``purchase`` rows, one per order (``basket_id`` ``o<n>``, ``channel`` ``api``), with the extra columns
  ``supplier`` and ``promised_days`` (the supplier's quoted lead time); human visits are ``purchase`` rows per line
  item (``basket_id`` ``v<n>``, ``channel`` ``store``);
- telemetry: ``telemetry`` rows, ``item_id`` the consumable, ``text`` the reading (``stock``: units on hand;
  ``usage``: cumulative units consumed), ``quantity`` its value;
- service requests: ``service`` rows, ``text`` ``breakdown``;
- negotiation: ``message`` rows from autonomous machines, ``text`` ``accept`` / ``counter`` / ``decline``,
  ``unit_price`` the price accepted or proposed, ``basket_id`` the order it led to (null if none).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from twins.data.schema import CANONICAL
from twins.sim.config import KINDS
from twins.sim.machines import POLICIES
from twins.sim.market import MESSAGES

DAY_US = 86_400_000_000
EXTRA = {"supplier": pl.String(), "promised_days": pl.Int16()}


def _time(start_us: int, day: np.ndarray, second: np.ndarray) -> pl.Series:
    us = start_us + day.astype(np.int64) * DAY_US + second.astype(np.int64) * 1_000_000
    return pl.Series("event_time", us).cast(pl.Datetime("us", "UTC"))


def _frame(start_us: int, prefix: str, who: np.ndarray, day: np.ndarray, second: np.ndarray, **columns) -> pl.DataFrame:
    df = pl.DataFrame({"who": who.astype(np.int64), **{k: v for k, v in columns.items() if not isinstance(v, str)}})
    df = df.with_columns(_time(start_us, day, second),
                         pl.format(f"{prefix}{{}}", pl.col("who")).alias("customer_id"),
                         *[pl.lit(v).alias(k) for k, v in columns.items() if isinstance(v, str)])
    return df.drop("who")


def _canonical(frames: list[pl.DataFrame], sort: bool) -> pl.DataFrame:
    schema = {**CANONICAL, **EXTRA}
    out = pl.concat([f.select([(pl.col(c) if c in f.columns else pl.lit(None)).cast(t).alias(c)
                               for c, t in schema.items()]) for f in frames])
    return out.sort("event_time", maintain_order=True) if sort else out


def to_events(market, sort: bool = True) -> pl.DataFrame:
    """Every event of a ``twins.sim.Market`` (observation window and horizon), sorted by time (stable: events of
    one time in the order orders, readings, service requests, messages, shoppers' lines; ``sort=False`` leaves them
    in that order, which a stable sort by customer and time turns into the same order as the sorted frame); a
    chunk's events carry the market's ids (its ``first_*`` offsets)."""
    log, m = market.log, market.machines
    start_us = int(market.config.start.timestamp() * 1_000_000)
    item = pl.format("p{}", pl.col("product"))
    o = log.orders
    first = market.first_machine
    orders = _frame(start_us, "m", o["machine"] + first, o["day"], o["second"], quantity=o["quantity"].astype(np.float64),
                    unit_price=o["unit_price"].astype(np.float64), product=m.product[o["machine"]],
                    order=market.first_order + o.get("order", np.arange(len(o["day"]))), supplier_no=o["supplier"],
                    promised_days=o["promised_days"],
                    event_type="purchase", channel="api", actor="machine")
    orders = orders.with_columns(item.alias("item_id"), pl.format("o{}", pl.col("order")).alias("basket_id"),
                                 (pl.col("quantity") * pl.col("unit_price")).alias("amount"),
                                 pl.format("s{}", pl.col("supplier_no")).alias("supplier"))
    tl = log.telemetry
    tele = [_frame(start_us, "m", tl["machine"] + first, tl["day"], m.telemetry_second[tl["machine"]],
                   quantity=tl[kind].astype(np.float64), product=m.product[tl["machine"]], text=kind,
                   event_type="telemetry", channel="telemetry", actor="machine").with_columns(item.alias("item_id"))
            for kind in ("stock", "usage")]
    sv = log.service
    service = _frame(start_us, "m", sv["machine"] + first, sv["day"], sv["second"], product=m.product[sv["machine"]],
                     text="breakdown", event_type="service", channel="api", actor="machine").with_columns(item.alias("item_id"))
    ms = log.messages
    msgs = _frame(start_us, "m", ms["machine"] + first, ms["day"], ms["second"], code=ms["code"],
                  unit_price=ms["price"].astype(np.float64),
                  order=np.where(ms["order"] >= 0, ms["order"] + market.first_order, -1), product=m.product[ms["machine"]],
                  event_type="message", channel="api", actor="machine")
    msgs = msgs.with_columns(item.alias("item_id"),
                             pl.col("code").replace_strict(list(range(len(MESSAGES))), list(MESSAGES)).alias("text"),
                             pl.when(pl.col("order") >= 0).then(pl.format("o{}", pl.col("order"))).alias("basket_id"))
    h = market.humans
    humans = _frame(start_us, "h", h["shopper"] + market.first_shopper, h["day"], h["second"], quantity=h["quantity"],
                    unit_price=h["unit_price"], visit=h["visit"] + market.first_visit, grocery=h["item"],
                    event_type="purchase", channel="store", actor="human")
    humans = humans.with_columns(pl.format("v{}", pl.col("visit")).alias("basket_id"),
                                 pl.format("g{}", pl.col("grocery")).alias("item_id"),
                                 (pl.col("quantity") * pl.col("unit_price")).alias("amount"))
    return _canonical([orders, *tele, service, msgs, humans], sort)


def ground_truth(market) -> pl.DataFrame:
    """One row per machine (of a chunk: its machines): its kind, policy and true parameters, its state at ``as_of``
    and its true next order after ``as_of`` (null and ``censored`` when none within ``horizon_days``)."""
    cfg, m, log = market.config, market.machines, market.log
    o = log.orders
    after = np.flatnonzero(o["day"] >= cfg.days)
    machine, first = np.unique(o["machine"][after], return_index=True)
    rows = after[first]
    start_us = int(cfg.start.timestamp() * 1_000_000)
    n = len(m)
    next_us = np.full(n, -1, np.int64)
    next_qty = np.full(n, np.nan)
    next_us[machine] = start_us + o["day"][rows].astype(np.int64) * DAY_US + o["second"][rows].astype(np.int64) * 1_000_000
    next_qty[machine] = o["quantity"][rows]
    list_price = market.list_price[m.product]
    nan_if = lambda mask, v: np.where(mask, v, np.nan)  # noqa: E731
    df = pl.DataFrame({
        "machine_id": [f"m{i}" for i in range(market.first_machine, market.first_machine + n)],
        "kind": np.asarray(KINDS)[m.kind], "policy": np.asarray(POLICIES)[m.policy],
        "item_id": [f"p{k}" for k in m.product], "telemetry": m.telemetry,
        "base_rate": m.base_rate, "expected_rate": m.expected_rate,
        "rate": log.demand_window / cfg.days, "consumed_rate": log.consumed_window / cfg.days,
        "stockout_days": log.stockout_days, "weekday_only": m.weekday_only, "annual_amplitude": m.annual_amplitude,
        "reorder_point": nan_if(m.policy != 1, m.reorder_point), "order_up_to": m.order_up_to,
        "review_days": m.review_days, "cover_days": m.cover_days, "safety_days": m.safety_days,
        "lead_time": m.lead_expected, "contract_supplier": nan_if(m.kind == 0, m.supplier),
        "list_price": list_price, "delay_cost": m.delay_cost * list_price,
        "reservation_price": m.reservation * list_price, "procrastinate_prob": m.procrastinate,
        "quantity_noise": m.quantity_noise, "stock_as_of": log.stock_as_of.astype(np.float64),
        "next_order_us": next_us, "next_order_quantity": next_qty,
    })
    return df.with_columns(
        pl.lit(market.as_of).cast(pl.Datetime("us", "UTC")).alias("as_of"),
        pl.when(pl.col("next_order_us") >= 0).then(pl.col("next_order_us")).cast(pl.Datetime("us", "UTC")).alias("next_order_time"),
        (pl.col("next_order_us") < 0).alias("censored"),
    ).drop("next_order_us")


def offer_feed(market) -> pl.DataFrame:
    """The suppliers' public price list: one row per (day, supplier, product) with the quoted delivery days."""
    offers, cfg = market.offers, market.config
    days, n_sup, n_prod = offers.shape
    d, s, p = np.meshgrid(np.arange(days), np.arange(n_sup), np.arange(n_prod), indexing="ij")
    start_us = int(cfg.start.timestamp() * 1_000_000)
    return pl.DataFrame({"day": (start_us + d.ravel().astype(np.int64) * DAY_US), "s": s.ravel(), "p": p.ravel(),
                         "unit_price": offers.ravel(),
                         "delivery_days": np.asarray(cfg.products.supplier_delivery_days)[s.ravel()]}).select(
        pl.col("day").cast(pl.Datetime("us", "UTC")), pl.format("s{}", "s").alias("supplier"),
        pl.format("p{}", "p").alias("item_id"), "unit_price", "delivery_days")
