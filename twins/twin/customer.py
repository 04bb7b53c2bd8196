"""Customer twins: the point-in-time state of every customer, computed with polars from events before ``as_of``.

Only events strictly before ``as_of`` are read (``tests/test_twin_point_in_time.py`` proves it). Sources that
give basket order but no time (Ta-Feng's published versions) are built "as of the end" (``as_of=None``).
Model outputs (purchase outlook, churn, emotion, machine-likeness) join the twin as their models land.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import polars as pl

DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class TwinParams:
    """How twins are summarised; set under ``twin:`` in a pipeline config."""

    item_decay: float = 0.9          # weight of a basket k baskets before the latest: item_decay**k (TIFU-style)
    top_items: int = 20              # decayed item frequencies kept per twin
    category_column: str | None = None   # e.g. item_department, from the source's item attribute table
    top_categories: int = 5
    discount_columns: list[str] = field(default_factory=list)  # e.g. [retail_disc, coupon_disc]
    outlook_horizon_days: float | None = 91.0  # purchase outlook over this horizon; None: off
    outlook_model: str = "bgnbd"     # bgnbd (BG/NBD + Gamma-Gamma) | neural (twins.models.outlook_net)


def _as_of_filter(events: pl.LazyFrame, as_of: datetime | None) -> pl.LazyFrame:
    if as_of is None:
        return events
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=timezone.utc)
    return events.filter(pl.col("event_time") < pl.lit(as_of, pl.Datetime("us", "UTC")))


def baskets(events: pl.LazyFrame) -> pl.LazyFrame:
    """One row per (customer, basket) with its time, order, value and size; ``rank`` 0 = the latest."""
    return (events.filter(pl.col("customer_id").is_not_null() & (pl.col("event_type") == "purchase"))
            .group_by("customer_id", "basket_id")
            .agg(time=pl.col("event_time").min(), seq=pl.col("basket_seq").min(),
                 spend=pl.when(pl.col("amount").is_not_null().any()).then(pl.col("amount").sum()),
                 n_items=pl.col("item_id").n_unique())
            .with_columns(rank=pl.struct("time", "seq", "basket_id").rank("ordinal", descending=True)
                          .over("customer_id").cast(pl.Int64) - 1))


def _basket_stats(b: pl.LazyFrame, as_of: datetime | None) -> pl.LazyFrame:
    """Counts, spend and timing per customer; recency and tenure are measured to ``as_of``."""
    day = pl.col("time").dt.truncate("1d")
    gap = pl.col("time").sort().diff().dt.total_microseconds() / DAY_US
    ref = pl.lit(as_of, pl.Datetime("us", "UTC"))
    mean_gap, std_gap = gap.mean(), gap.std()
    return (b.group_by("customer_id").agg(
        first_purchase=pl.col("time").min(), last_purchase=pl.col("time").max(),
        baskets=pl.len().cast(pl.Int64), repeat_purchase_days=(day.n_unique() - 1).cast(pl.Int64),
        spend_total=pl.when(pl.col("spend").is_not_null().any()).then(pl.col("spend").sum()),
        basket_value_mean=pl.col("spend").mean(), items_per_basket=pl.col("n_items").mean(),
        ipt_mean_days=mean_gap, ipt_std_days=std_gap,
        _ref=ref,
    ).with_columns(
        recency_days=(pl.col("_ref") - pl.col("last_purchase")).dt.total_microseconds() / DAY_US,
        tenure_days=(pl.col("_ref") - pl.col("first_purchase")).dt.total_microseconds() / DAY_US,
        ipt_cv=pl.col("ipt_std_days") / pl.col("ipt_mean_days"),
        burstiness=(pl.col("ipt_std_days") - pl.col("ipt_mean_days")) / (pl.col("ipt_std_days") + pl.col("ipt_mean_days")),
        naive_next_purchase=pl.col("last_purchase") + pl.duration(microseconds=(pl.col("ipt_mean_days") * DAY_US).cast(pl.Int64)),
    ).drop("_ref"))


def _item_profile(events: pl.LazyFrame, b: pl.LazyFrame, p: TwinParams) -> pl.LazyFrame:
    """Decayed repeat frequency per (customer, item): sum over baskets holding it of decay**rank, rounded to
    1e-12 so that the summation order of a parallel engine cannot reorder tied items."""
    lines = (events.filter(pl.col("customer_id").is_not_null() & (pl.col("event_type") == "purchase"))
             .select("customer_id", "basket_id", "item_id").unique()
             .join(b.select("customer_id", "basket_id", "rank"), on=["customer_id", "basket_id"]))
    weights = (lines.group_by("customer_id", "item_id")
               .agg(weight=pl.lit(p.item_decay, pl.Float64).pow(pl.col("rank")).sum().round(12), baskets_with_item=pl.len()))
    return (weights.group_by("customer_id").agg(
        distinct_items=pl.len().cast(pl.Int64),
        repeat_item_share=(pl.col("baskets_with_item") > 1).mean(),
        top_items=pl.struct("item_id", "weight").sort_by(["weight", "item_id"], descending=[True, False]).head(p.top_items)))


def _category_mix(events: pl.LazyFrame, p: TwinParams) -> pl.LazyFrame:
    col = p.category_column
    spend = (events.filter(pl.col("customer_id").is_not_null() & (pl.col("event_type") == "purchase"))
             .group_by("customer_id", col).agg(spend=pl.col("amount").sum())
             .with_columns(share=pl.col("spend") / pl.col("spend").sum().over("customer_id")))
    return spend.group_by("customer_id").agg(
        category_mix=pl.struct(pl.col(col).alias("category"), "share").sort_by("share", descending=True).head(p.top_categories))


def _discounts(events: pl.LazyFrame, p: TwinParams) -> pl.LazyFrame:
    disc = pl.sum_horizontal([pl.col(c).abs() for c in p.discount_columns])
    buy = events.filter(pl.col("customer_id").is_not_null() & (pl.col("event_type") == "purchase"))
    return buy.group_by("customer_id").agg(
        discounted_line_share=(disc > 0).mean(),
        discount_share=(disc.sum() / (disc.sum() + pl.col("amount").sum())))


def _returns(events: pl.LazyFrame) -> pl.LazyFrame:
    ret = events.filter(pl.col("customer_id").is_not_null() & (pl.col("event_type") == "return"))
    return ret.group_by("customer_id").agg(return_lines=pl.len().cast(pl.Int64), returned_total=pl.col("amount").sum())


def _messages(events: pl.LazyFrame) -> pl.LazyFrame:
    msg = events.filter(pl.col("customer_id").is_not_null() & (pl.col("event_type") == "message"))
    return msg.group_by("customer_id").agg(messages=pl.len().cast(pl.Int64), last_message=pl.col("event_time").max())


def _outlook(events: pl.LazyFrame, as_of: datetime, horizon_days: float, model: str) -> pl.LazyFrame:
    """The purchase outlook columns, or none when the data cannot support the models (e.g. no repeat buyer)."""
    from twins.twin.outlook import OutlookParams, check_model, customer_outlook

    check_model(model)  # a wrong name is the caller's error, not the data's
    try:
        return customer_outlook(events, as_of, OutlookParams(horizon_days=horizon_days, model=model)).lazy()
    except ValueError as exc:
        warnings.warn(f"twins without a purchase outlook: {exc}", RuntimeWarning, stacklevel=3)
        return events.select("customer_id").unique()


def build_customer_twins(events: pl.LazyFrame, as_of: datetime | None = None, params: TwinParams | None = None) -> pl.DataFrame:
    """Customer twins as of ``as_of``, one row per customer, sorted by id. ``as_of=None`` means just after
    the last event (or, for order-only sources, all baskets, with the time-based fields left empty)."""
    p = params or TwinParams()
    if as_of is None:
        last = events.select(pl.col("event_time").max()).collect().item()
        as_of = None if last is None else last + timedelta(microseconds=1)
    ev = _as_of_filter(events, as_of)
    names = ev.collect_schema().names()
    b = baskets(ev)
    parts = [_basket_stats(b, as_of), _item_profile(ev, b, p)]
    if p.category_column:
        if p.category_column not in names:
            raise ValueError(f"twin.category_column {p.category_column!r} is not an events column; have {names}")
        parts.append(_category_mix(ev, p))
    if p.discount_columns:
        missing = [c for c in p.discount_columns if c not in names]
        if missing:
            raise ValueError(f"twin.discount_columns {missing} are not events columns; have {names}")
        parts.append(_discounts(ev, p))
    ids = ev.filter(pl.col("customer_id").is_not_null()).select("customer_id").unique()
    if p.outlook_horizon_days and as_of is not None:
        parts.append(_outlook(ev, as_of, p.outlook_horizon_days, p.outlook_model))
    twins = ids
    for part in [*parts, _returns(ev), _messages(ev)]:
        twins = twins.join(part, on="customer_id", how="left")
    ref = as_of.replace(tzinfo=as_of.tzinfo or timezone.utc) if as_of else None
    twins = twins.with_columns(
        as_of=pl.lit(ref, pl.Datetime("us", "UTC")), messages=pl.col("messages").fill_null(0),
        baskets=pl.col("baskets").fill_null(0), return_lines=pl.col("return_lines").fill_null(0),
        returned_total=pl.when(pl.col("spend_total").is_not_null()).then(pl.col("returned_total").fill_null(0.0)),
    ).with_columns(
        monetary=pl.col("spend_total") - pl.col("returned_total"),
        return_rate=pl.when(pl.col("spend_total") > 0).then(pl.col("returned_total") / pl.col("spend_total")),
    )
    return twins.sort("customer_id").collect(engine="streaming")
