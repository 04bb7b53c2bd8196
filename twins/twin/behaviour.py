"""Behaviour features that tell machine customers from people, per customer, from ``purchase`` events alone.

Only ``customer_id, basket_id, event_time, item_id, quantity, unit_price`` of purchase rows are read — never
``actor``, ``channel``, or the fact that a customer sends telemetry, service requests or messages — so the
features run unchanged on any canonical log. An order is a basket (its time: the basket's first line). Every
feature is scale-free (no quantity, price or frequency level), so a detector cannot learn a log's units or a
simulator's rates:

- regularity of orders: ``gap_cv`` (std / mean of the inter-order gaps), ``gap_mad`` (median absolute deviation
  / median gap), ``gap_autocorr`` (lag-1 correlation of the gaps; 0 when undefined), ``max_gap_ratio`` (longest /
  median gap), ``whole_day_gaps`` (share of gaps within ``clock_minutes`` of a whole number of days: the same
  clock time every order);
- timing: ``hour_entropy`` and ``weekday_entropy`` (entropy of the hour-of-day and weekday histograms, divided by
  its maximum for that many orders), ``time_of_day_spread`` (circular variance of the clock time, 0 = always the
  same time), ``weekend_share``;
- basket structure: ``log_lines_per_order``, ``top_item_share`` (lines of the most bought item / lines),
  ``distinct_items_per_order`` (distinct items / orders), ``quantity_mode_share`` (lines with the modal quantity /
  lines), ``top_item_quantity_cv``;
- reaction to price and offers: ``deal_share`` (lines bought at ``deal_discount`` or more below the item's median
  price in the whole log), ``price_cv`` (mean over items bought twice or more of the CV of the price paid);
- per item (per consumable: a two-item machine is regular item by item, not order by order), over the customer's
  items ordered 3 times or more, weighted by lines: ``item_gap_cv``, ``item_gap_mad`` and ``item_quantity_cv``
  (median over items of the item's gap CV, gap MAD / median gap and quantity CV; 1 when no item qualifies),
  ``regular_line_share`` (lines in series regular by ``twins.twin.machine.SeriesRule``) and
  ``repeat_line_share`` (lines of items ordered 3 times or more).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from twins.twin.machine import SeriesRule, series_regularity

DAY_US = 86_400_000_000
REGULARITY = ("gap_cv", "gap_mad", "gap_autocorr", "max_gap_ratio", "whole_day_gaps")
TIMING = ("hour_entropy", "weekday_entropy", "time_of_day_spread", "weekend_share")
BASKET = ("log_lines_per_order", "top_item_share", "distinct_items_per_order", "quantity_mode_share",
          "top_item_quantity_cv")
PRICE = ("deal_share", "price_cv")
ITEM = ("item_gap_cv", "item_gap_mad", "item_quantity_cv", "regular_line_share", "repeat_line_share")
BEHAVIOUR_FEATURES = REGULARITY + TIMING + BASKET + PRICE + ITEM


def _cv(col: str) -> pl.Expr:
    return (pl.col(col).std(ddof=0) / pl.col(col).mean()).fill_nan(0.0).fill_null(0.0)


def _normalised_entropy(counts: pl.DataFrame, bins: int, name: str) -> pl.DataFrame:
    """``counts`` (customer_id, bin, n) -> entropy / log(min(orders, bins)) per customer (0 with one order); bins
    summed in their order, so the value does not depend on how many threads grouped them."""
    p = pl.col("n") / pl.col("n").sum()
    return counts.sort(counts.columns[:2]).group_by("customer_id", maintain_order=True).agg(
        (-(p * p.log()).sum() / pl.min_horizontal(pl.col("n").sum(), pl.lit(bins)).cast(pl.Float64).log())
        .fill_nan(0.0).abs().alias(name))


def _purchase_lines(events: pl.DataFrame | pl.LazyFrame, min_orders: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(purchase lines, orders) of the customers with at least ``min_orders`` orders."""
    lines = ((events.lazy() if isinstance(events, pl.DataFrame) else events)
             .filter(pl.col("event_type") == "purchase")
             .select("customer_id", "basket_id", "event_time", "item_id", "quantity", "unit_price").collect())
    orders = (lines.group_by("customer_id", "basket_id").agg(pl.col("event_time").min(), pl.len().alias("lines"))
              .with_columns(pl.len().over("customer_id").alias("n_orders"))
              .filter(pl.col("n_orders") >= min_orders).sort("customer_id", "event_time"))
    return lines.join(orders.select("customer_id").unique(), on="customer_id", maintain_order="left"), orders


def _priced(lines: pl.DataFrame) -> pl.DataFrame:
    return lines.filter(pl.col("unit_price").is_finite() & (pl.col("unit_price") > 0))


def price_counts(events: pl.DataFrame | pl.LazyFrame, min_orders: int = 3) -> pl.DataFrame:
    """``item_id, unit_price, n``: how many priced purchase lines of the customers ``behaviour_features`` keeps paid
    each price for each item (phase one of ``deal_share``'s item medians, per bucket of a partitioned store)."""
    return _price_counts(_purchase_lines(events, min_orders)[0])


def _price_counts(lines: pl.DataFrame) -> pl.DataFrame:
    return _priced(lines).group_by("item_id", "unit_price").agg(pl.len().cast(pl.Int64).alias("n"))


def item_medians(counts: list[pl.DataFrame]) -> pl.DataFrame:
    """``item_id, item_median``: each item's median price over every line of ``counts`` (``price_counts`` of every
    bucket), exactly polars' median of those lines: the middle price, or polars' median of the two middle ones."""
    c = (pl.concat(counts).group_by("item_id", "unit_price").agg(pl.col("n").sum()).sort("item_id", "unit_price")
         .with_columns(upto=pl.col("n").cum_sum().over("item_id"), total=pl.col("n").sum().over("item_id")))
    below = pl.col("upto") - pl.col("n")
    middle = pl.any_horizontal([(below <= k) & (k < pl.col("upto"))
                                for k in ((pl.col("total") - 1) // 2, pl.col("total") // 2)])
    # the two middle lines (one row when both share a price: the median of two equal prices is that price)
    return (c.filter(middle).group_by("item_id", maintain_order=True)
            .agg(pl.col("unit_price").median().alias("item_median")))


def behaviour_features(events: pl.DataFrame | pl.LazyFrame, min_orders: int = 3, clock_minutes: float = 5.0,
                       deal_discount: float = 0.1, medians: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per customer with at least ``min_orders`` orders: ``customer_id``, ``n_orders`` and
    ``BEHAVIOUR_FEATURES`` (float64). ``deal_share`` compares prices with each item's median price over the
    log's lines: ``medians`` (``item_medians``) for one bucket of a partitioned store, else those of ``events``."""
    lines, orders = _purchase_lines(events, min_orders)
    us = pl.col("event_time").dt.timestamp("us")
    orders = orders.with_columns(
        (us.diff().over("customer_id") / DAY_US).alias("gap"),
        ((us % DAY_US) / DAY_US * 2 * np.pi).alias("angle"),
        pl.col("event_time").dt.hour().alias("hour"), pl.col("event_time").dt.weekday().alias("weekday"))
    clock = clock_minutes / 1440
    frac = pl.col("gap") - pl.col("gap").floor()
    gap = pl.col("gap").drop_nulls()
    regular = orders.group_by("customer_id").agg(
        pl.col("n_orders").first(),
        _cv("gap").alias("gap_cv"),
        ((gap - gap.median()).abs().median() / gap.median()).fill_nan(0.0).alias("gap_mad"),
        pl.corr(gap, gap.shift(1)).fill_nan(0.0).fill_null(0.0).alias("gap_autocorr"),
        (gap.max() / gap.median()).fill_nan(1.0).alias("max_gap_ratio"),
        (pl.min_horizontal(frac, 1 - frac) <= clock).drop_nulls().mean().alias("whole_day_gaps"),
        (1 - (pl.col("angle").cos().mean() ** 2 + pl.col("angle").sin().mean() ** 2).sqrt()).alias("time_of_day_spread"),
        (pl.col("weekday") >= 6).mean().alias("weekend_share"),
        pl.col("lines").mean().log1p().alias("log_lines_per_order"),
    )
    hours = _normalised_entropy(orders.group_by("customer_id", "hour").agg(pl.len().alias("n")), 24, "hour_entropy")
    weekdays = _normalised_entropy(orders.group_by("customer_id", "weekday").agg(pl.len().alias("n")), 7,
                                   "weekday_entropy")

    per_item = lines.group_by("customer_id", "item_id").agg(pl.len().alias("n"))
    top_item = per_item.sort("n", "item_id", descending=[True, False]).group_by("customer_id").first()
    items = per_item.group_by("customer_id").agg(
        (pl.col("n").max() / pl.col("n").sum()).alias("top_item_share"), pl.len().alias("distinct_items"))
    modal = (lines.group_by("customer_id", "quantity").agg(pl.len().alias("n")).group_by("customer_id")
             .agg((pl.col("n").max() / pl.col("n").sum()).alias("quantity_mode_share")))
    top_qty = (lines.join(top_item.select("customer_id", "item_id"), on=["customer_id", "item_id"], maintain_order="left")
               .group_by("customer_id").agg(_cv("quantity").alias("top_item_quantity_cv")))

    medians = item_medians([_price_counts(lines)]) if medians is None else medians
    priced = _priced(lines).join(medians, on="item_id", how="left", maintain_order="left")
    deals = priced.group_by("customer_id").agg(
        (pl.col("unit_price") <= (1 - deal_discount) * pl.col("item_median")).mean().alias("deal_share"))
    price_cv = (priced.group_by("customer_id", "item_id").agg(_cv("unit_price").alias("cv"), pl.len().alias("n"))
                .filter(pl.col("n") >= 2).sort("customer_id", "item_id")
                .group_by("customer_id", maintain_order=True).agg(pl.col("cv").mean().alias("price_cv")))

    out = regular
    for part in (hours, weekdays, items, modal, top_qty, deals, price_cv, item_features(lines)):
        out = out.join(part, on="customer_id", how="left")
    out = out.with_columns((pl.col("distinct_items") / pl.col("n_orders")).alias("distinct_items_per_order"))
    return (out.select("customer_id", pl.col("n_orders").cast(pl.Int64),
                       *[pl.col(f).cast(pl.Float64).fill_null(0.0) for f in BEHAVIOUR_FEATURES])
            .sort("customer_id"))


def _weighted_median(value: str, weight: str) -> pl.Expr:
    """The weighted median of ``value`` (rows sorted by it) with weights ``weight``."""
    v, w = pl.col(value).sort_by(value), pl.col(weight).sort_by(value)
    return v.filter(w.cum_sum() >= w.sum() / 2).first()


def item_features(lines: pl.DataFrame) -> pl.DataFrame:
    """The ``ITEM`` features per customer from purchase lines (``customer_id, basket_id, event_time, item_id,
    quantity``)."""
    rule = SeriesRule()
    reg = series_regularity(lines.with_columns(pl.lit("unknown").alias("actor"), pl.lit("purchase").alias("event_type")))
    repeat = reg.filter(pl.col("n_orders") >= 3)
    regular = ((pl.col("n_orders") >= rule.min_orders) & (pl.col("gap_cv") <= rule.max_gap_cv)
               & (pl.col("gap_mad") <= rule.max_gap_mad)).fill_null(False)
    shares = reg.group_by("customer_id").agg(
        (pl.col("lines").filter(regular).sum() / pl.col("lines").sum()).alias("regular_line_share"),
        (pl.col("lines").filter(pl.col("n_orders") >= 3).sum() / pl.col("lines").sum()).alias("repeat_line_share"))
    medians = repeat.with_columns(pl.col("gap_cv", "gap_mad", "quantity_cv").fill_null(0.0)).group_by("customer_id").agg(
        _weighted_median("gap_cv", "lines").alias("item_gap_cv"), _weighted_median("gap_mad", "lines").alias("item_gap_mad"),
        _weighted_median("quantity_cv", "lines").alias("item_quantity_cv"))
    return shares.join(medians, on="customer_id", how="left").with_columns(
        pl.col("item_gap_cv", "item_gap_mad", "item_quantity_cv").fill_null(1.0))
