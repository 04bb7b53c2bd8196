"""Customer twins: the point-in-time state of every customer, computed with polars from events before ``as_of``.

Only events strictly before ``as_of`` are read (``tests/test_twin_point_in_time.py`` proves it). Sources that
give basket order but no time (Ta-Feng's published versions) are built "as of the end" (``as_of=None``).
Model outputs (purchase outlook, churn, emotion, machine-likeness) join the twin as their models land.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl

from twins.data.events import bucket_files, scan_events

DAY_US = 86_400 * 1_000_000
#: rows per row group of a bucket's twins file: the snapshot merge reads slices of it (``twins.twin.store.MERGE_ROWS``
#: over all buckets at a time), so small groups keep it from decoding rows it does not need yet
PART_ROW_GROUP = 1_024


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
    # baskets in a fixed order before the sums (maintain_order: polars drops a sort that only feeds a group-by)
    return (b.sort("customer_id", "time", "seq", "basket_id", "spend", nulls_last=True).group_by("customer_id", maintain_order=True).agg(
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
    """Decayed repeat frequency per (customer, item): sum over baskets holding it of decay**rank (newest basket
    rank 0), each term in whole units of 1e-12 summed as integers: exact, so the same in any row order, bucketing or
    thread count."""
    lines = (events.filter(pl.col("customer_id").is_not_null() & (pl.col("event_type") == "purchase"))
             .select("customer_id", "basket_id", "item_id").unique()
             .join(b.select("customer_id", "basket_id", "rank"), on=["customer_id", "basket_id"]))
    weights = (lines.group_by("customer_id", "item_id")
               .agg(weight=(pl.lit(p.item_decay, pl.Float64).pow(pl.col("rank")) * 1e12).round().cast(pl.Int64).sum() / 1e12,
                    baskets_with_item=pl.len()))
    return (weights.group_by("customer_id").agg(
        distinct_items=pl.len().cast(pl.Int64),
        repeat_item_share=(pl.col("baskets_with_item") > 1).mean(),
        top_items=pl.struct("item_id", "weight").sort_by(["weight", "item_id"], descending=[True, False]).head(p.top_items)))


def _category_mix(events: pl.LazyFrame, p: TwinParams) -> pl.LazyFrame:
    """The top categories by share of each customer's spend (ties: by category). The spend per category is
    collected in category order first, so each customer's total sums them in that order (polars drops a sort that
    only feeds a group-by)."""
    col = p.category_column
    spend = (events.filter(pl.col("customer_id").is_not_null() & (pl.col("event_type") == "purchase"))
             .group_by("customer_id", col).agg(spend=pl.col("amount").sum())
             .sort("customer_id", col, nulls_last=True).collect(engine="in-memory"))
    shares = (spend.with_columns(share=pl.col("spend") / pl.col("spend").sum().over("customer_id"))
              .sort(["customer_id", "share", col], descending=[False, True, False], nulls_last=True))
    return shares.lazy().group_by("customer_id", maintain_order=True).agg(
        category_mix=pl.struct(pl.col(col).alias("category"), "share").head(p.top_categories))


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


def _outlook_params(p: TwinParams):
    from twins.twin.outlook import OutlookParams, check_model

    check_model(p.outlook_model)  # a wrong name is the caller's error, not the data's
    return OutlookParams(horizon_days=p.outlook_horizon_days, model=p.outlook_model)


def last_event(events: pl.LazyFrame) -> datetime | None:
    """The time just after the last event (``as_of=None``'s meaning), None for an order-only source."""
    last = events.select(pl.col("event_time").max()).collect(engine="streaming").item()
    return None if last is None else last + timedelta(microseconds=1)


def outlook_inputs(events: pl.LazyFrame, as_of: datetime | None, params: TwinParams):
    """Phase one of the outlook on one bucket's events (``twins.twin.outlook.outlook_inputs``); None when off."""
    from twins.twin.outlook import outlook_inputs as inputs

    if not params.outlook_horizon_days or as_of is None:
        return None
    return inputs(_as_of_filter(events, as_of), as_of, _outlook_params(params))


def fit_population(inputs: list[pl.DataFrame | Path | None], as_of: datetime | None, params: TwinParams):
    """Phase two: the outlook's population-level fit on every bucket's inputs (frames, or the Parquet files
    ``bucket_outlook_inputs`` wrote); None when off or when the data cannot support the models (e.g. no repeat
    buyer: the twins go without outlook columns, with a warning)."""
    from twins.twin.outlook import fit_population as fit

    if not params.outlook_horizon_days or as_of is None:
        return None
    outlook = _outlook_params(params)
    frames = [pl.read_parquet(f) if isinstance(f, Path) else f for f in inputs if f is not None]
    try:
        return fit(frames, as_of, outlook)
    except ValueError as exc:
        warnings.warn(f"twins without a purchase outlook: {exc}", RuntimeWarning, stacklevel=3)
        return None


def population_fit(job: tuple[list[pl.DataFrame | Path | None], datetime | None, TwinParams]):
    """``fit_population(*job)`` (an engine's job)."""
    return fit_population(*job)


def build_customer_twins(events: pl.LazyFrame, as_of: datetime | None = None, params: TwinParams | None = None,
                         outlook: Any = "fit") -> pl.DataFrame:
    """Customer twins as of ``as_of``, one row per customer, sorted by id. ``as_of=None`` means just after
    the last event (or, for order-only sources, all baskets, with the time-based fields left empty).

    Every column is the customer's own except the purchase outlook's population-level fit: by default fitted on
    ``events`` (the whole log); for one bucket of a partitioned store pass ``outlook``, the ``fit_population`` of
    every bucket's ``outlook_inputs`` (None: no outlook), and the twins of the buckets, concatenated and sorted by
    id, equal those of the whole log (``build_store_twins``)."""
    p = params or TwinParams()
    if as_of is None:
        as_of = last_event(events)
    if isinstance(outlook, str):
        outlook = fit_population([outlook_inputs(events, as_of, p)], as_of, p)
    ev = _as_of_filter(events, as_of)
    names = ev.collect_schema().names()
    # parts whose sums need their sorted input are collected on their own: polars drops a sort under a join
    b = baskets(ev).collect(engine="in-memory").lazy()
    parts = [_basket_stats(b, as_of).collect(engine="in-memory").lazy(),
             _item_profile(ev, b, p).collect(engine="in-memory").lazy()]
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
    if outlook is not None:
        from twins.twin.outlook import apply_outlook

        parts.append(apply_outlook(outlook_inputs(ev, as_of, p), outlook).lazy())
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
    return twins.sort("customer_id").collect(engine="in-memory")


def read_bucket(events: pl.LazyFrame) -> pl.LazyFrame:
    """One bucket's events read into memory as one chunk: every part of the twin reads the file once, and the
    rows lie the same way whichever engine reads them (polars sums a group's rows chunk by chunk)."""
    return events.collect(engine="in-memory").rechunk().lazy()


def bucket_outlook_inputs(job: tuple[Path, int, datetime | None, TwinParams, Path | None]) -> pl.DataFrame | Path | None:
    """``outlook_inputs`` of bucket ``job[1]`` of the events folder ``job[0]`` (an engine's work item); written to
    the Parquet file ``job[4]`` (returned) when it is given."""
    events_dir, bucket, as_of, p, out = job
    inputs = outlook_inputs(read_bucket(scan_events(events_dir, bucket=bucket)), as_of, p)
    if out is None or inputs is None:
        return inputs
    inputs.write_parquet(out)
    return out


def bucket_twins(job: tuple[Path, int, datetime | None, TwinParams, Any, Path | None]) -> pl.DataFrame | Path:
    """The twins of the customers in bucket ``job[1]`` with the population's outlook fit ``job[4]``; written to the
    Parquet file ``job[5]`` (returned) when it is given."""
    events_dir, bucket, as_of, p, fit, out = job
    events = read_bucket(scan_events(events_dir, with_attributes=bool(p.category_column), bucket=bucket))
    twins = build_customer_twins(events, as_of, p, outlook=fit)
    if out is None:
        return twins
    twins.write_parquet(out, row_group_size=PART_ROW_GROUP)
    return out


def build_store_twins(events_dir: str | Path, as_of: datetime | None = None, params: TwinParams | None = None,
                      engine=None, parts: Path | None = None) -> pl.DataFrame | list[Path]:
    """``build_customer_twins`` of a partitioned events folder, bucket by bucket through ``engine``
    (``twins.engine``; default the local one): the outlook's inputs per bucket, one population fit, then each
    bucket's twins. Equal, row for row (sorted by id), to the twins of the same events in one bucket. Returns the
    twins, or with ``parts`` (a folder every worker can write to) each bucket's twins as a file there, sorted by id
    (``TwinStore.write_parts`` merges them), so memory is set by the largest bucket, not the log: the outlook's
    inputs go to files there too, and on a large store (``twins.engine.worth_a_process``) each step runs in a
    fresh process, so none holds what the one before it took (the fit's, say)."""
    from twins.engine import get_engine, worth_a_process

    p, engine = params or TwinParams(), engine or get_engine("local")
    events_dir = Path(events_dir)
    files = bucket_files(events_dir)
    buckets = range(len(files))
    fresh = parts is not None and worth_a_process(files)
    as_of = last_event(scan_events(events_dir)) if as_of is None else as_of
    staged = [None if parts is None else Path(parts) / f"outlook-{b:05d}.parquet" for b in buckets]
    inputs = engine.map(bucket_outlook_inputs, [(events_dir, b, as_of, p, staged[b]) for b in buckets], fresh=fresh)
    fit = engine.call(population_fit, (inputs, as_of, p), fresh=fresh)
    del inputs
    out = [None if parts is None else Path(parts) / f"part-{b:05d}.parquet" for b in buckets]
    done = engine.map(bucket_twins, [(events_dir, b, as_of, p, fit, out[b]) for b in buckets], fresh=fresh)
    return done if parts is not None else pl.concat(done, how="vertical_relaxed").sort("customer_id")
