"""Machine twins: per (machine, consumable) state as of a timestamp, from its orders alone or from orders plus
telemetry, with intervals. Only events strictly before ``as_of`` are read.

From orders (``purchase`` rows): a machine that orders up to a level S (an (s, S) or periodic-review policy)
orders exactly what it consumed since its previous order, so the consumption rate is the ratio estimator
``sum(q_2..q_n) / (t_n - t_1)``; its standard error comes from the residuals ``q_k - rate x gap_k``. Order
intervals that are multiples of one period mark periodic review; otherwise the order quantity is S - s plus an
undershoot (its low quantile estimates S - s). Without telemetry the reorder point is a prior, rate x (lead time
+ ``safety_days_prior``), and the lead time the median quoted one (``promised_days``) where the log has it.

From telemetry (``telemetry`` rows, ``text`` ``usage``: a cumulative consumption counter; ``stock``: units on
hand): the rate is the counter's slope over the window, its error from weekly blocks; the stock now is the last
reading carried forward; a delivery shows as a jump in stock (lead time = jump day - order day); the inventory
position at each order (stock + open orders) gives the reorder point (its median) and position + quantity
gives S.

Price sensitivity: given the suppliers' offer feed (``day, supplier, item_id, unit_price, delivery_days``), every
order's choice bounds the price of a day of delivery ``lambda``: choosing supplier c over k means
``p_c + lambda d_c <= p_k + lambda d_k``. The bounds' intersection is reported (``delay_cost_low/high``); an empty
one (the machine ignores offers, e.g. a contract) is null. Negotiating machines reveal a reservation price in
their counter-offers (``message`` rows ``counter``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import polars as pl

from twins.data.events import bucket_files, scan_events

DAY_US = 86_400_000_000


@dataclass(frozen=True)
class MachineTwinParams:
    """How machine twins are estimated."""

    interval: float = 0.8              # central probability of every interval
    safety_days_prior: float = 3.0     # orders alone: reorder point = rate x (lead time + this)
    lead_days_prior: float = 4.0       # orders alone, no quoted lead time in the log
    use_telemetry: bool = True
    block_days: int = 7                # telemetry rate error from blocks this long
    periodic_share: float = 0.9        # share of order gaps that are multiples of the modal gap to call it periodic


def _days(times: pl.Series | np.ndarray, origin_us: int) -> np.ndarray:
    us = times.cast(pl.Int64).to_numpy() if isinstance(times, pl.Series) else times
    return (us - origin_us) / DAY_US


def order_rate(t: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    """Consumption rate and its standard error from order times (days, sorted) and quantities of an
    order-up-to machine: ``sum(q[1:]) / (t[-1] - t[0])``; nan with fewer than 2 orders (se: fewer than 3)."""
    if len(t) < 2 or t[-1] <= t[0]:
        return np.nan, np.nan
    gaps, qty = np.diff(t), q[1:]
    rate = qty.sum() / gaps.sum()
    if len(gaps) < 2:
        return float(rate), np.nan
    resid = qty - rate * gaps
    return float(rate), float(np.sqrt(len(gaps) / (len(gaps) - 1) * np.sum(resid**2)) / gaps.sum())


def usage_rate(t: np.ndarray, usage: np.ndarray, block_days: int) -> tuple[float, float]:
    """Slope of a cumulative usage counter over the readings, and the standard error of the mean of block
    rates (blocks of ``block_days``)."""
    if len(t) < 2 or t[-1] <= t[0]:
        return np.nan, np.nan
    rate = (usage[-1] - usage[0]) / (t[-1] - t[0])
    edges = np.arange(t[0], t[-1] + 1e-9, block_days)
    at = np.interp(edges, t, usage)
    blocks = np.diff(at) / block_days
    se = blocks.std(ddof=1) / np.sqrt(len(blocks)) if len(blocks) >= 2 else np.nan
    return float(rate), float(se)


def stock_rate(t: np.ndarray, stock: np.ndarray, order_t: np.ndarray, order_q: np.ndarray, lead: float) -> float:
    """Rate from stock readings alone: (first - last reading + orders delivered in between) / elapsed days."""
    if len(t) < 2 or t[-1] <= t[0] or not np.isfinite(lead):
        return np.nan
    arrive = order_t + lead
    delivered = order_q[(arrive > t[0]) & (arrive <= t[-1])].sum()
    return float((stock[0] - stock[-1] + delivered) / (t[-1] - t[0]))


def arrival_lags(order_t: np.ndarray, order_q: np.ndarray, t: np.ndarray, stock: np.ndarray,
                 max_days: float = 30.0) -> np.ndarray:
    """Days from each order to the first stock reading (times in days) that jumps by at least half its quantity."""
    jumps, read = np.diff(stock), t[1:]
    lags = []
    for when, qty in zip(order_t, order_q):
        after = np.flatnonzero((read > when) & (read <= when + max_days) & (jumps >= 0.5 * qty))
        if len(after):
            lags.append(np.floor(read[after[0]]) - np.floor(when))  # whole days: deliveries come at the day's start
    return np.asarray(lags)


def periodic_review(gaps: np.ndarray, share: float) -> float:
    """The review period (days) when at least ``share`` of the order gaps are multiples of the modal gap, else nan."""
    days = np.round(gaps).astype(int)
    if len(days) < 3 or days.min() < 1:
        return np.nan
    values, counts = np.unique(days, return_counts=True)
    period = values[np.argmax(counts)]
    on_grid = np.mean((days % period == 0) & (np.abs(gaps - days) < 0.1))
    return float(period) if on_grid >= share else np.nan


def delay_cost_bounds(chosen_price: np.ndarray, chosen_days: np.ndarray, alt_price: np.ndarray,
                      alt_days: np.ndarray) -> tuple[float, float]:
    """Bounds on lambda from ``p_c + lambda d_c <= p_k + lambda d_k`` over all (order, alternative) pairs;
    (nan, nan) when no lambda >= 0 satisfies them all."""
    dd, dp = chosen_days - alt_days, alt_price - chosen_price  # lambda * dd <= dp
    if np.any((dd == 0) & (dp < -1e-9)):
        return np.nan, np.nan
    lo = np.max(-dp[dd < 0] / -dd[dd < 0], initial=0.0)   # dd < 0: lambda >= -dp / -dd
    hi = np.min(dp[dd > 0] / dd[dd > 0], initial=np.inf)
    return (float(lo), float(hi)) if lo <= hi + 1e-9 else (np.nan, np.nan)


def _split(frame: pl.DataFrame, keys: list[str]) -> dict[tuple, pl.DataFrame]:
    """``frame``'s rows by ``keys`` in order of first appearance (``partition_by(as_dict=True)``, which runs a query
    per group to name it)."""
    if not frame.height:
        return {}
    return dict(zip(frame.select(keys).unique(maintain_order=True).rows(), frame.partition_by(keys, maintain_order=True)))


def orders_state(t: np.ndarray, q: np.ndarray, promised: float, p: MachineTwinParams) -> dict[str, float]:
    """The twin from orders alone; ``t`` in days relative to as_of (negative), sorted."""
    rate, se = order_rate(t, q)
    review = periodic_review(np.diff(t), p.periodic_share)
    lead = promised if np.isfinite(promised) else p.lead_days_prior
    reorder = rate * (lead + p.safety_days_prior)
    up_to = reorder + float(np.quantile(q, 0.1)) if np.isnan(review) else rate * (review + lead + p.safety_days_prior)
    # after the last order the position was S; since then it fell by the consumption; open orders are not stock yet
    stock = up_to - rate * -t[-1] - q[np.floor(t) + lead > 0].sum()
    stock_sd = rate * (lead + p.safety_days_prior) / 2 + (se if np.isfinite(se) else 0.0) * -t[-1]
    return {"source": "orders", "rate": rate, "rate_se": se, "stock": stock, "stock_sd": stock_sd,
            "reorder_point": reorder if np.isnan(review) else np.nan, "order_up_to": up_to,
            "review_days": review, "lead_time": lead}


def telemetry_state(state: dict[str, float], t: np.ndarray, q: np.ndarray, tele: pl.DataFrame, as_of_us: int,
                    p: MachineTwinParams) -> dict[str, float]:
    """``state`` (from orders) updated with the machine's readings: lead time from stock jumps, rate from the
    usage counter (else from stock), reorder point and S from the inventory position at each order, stock now
    from the last reading."""
    state = dict(state)
    text, us, value = tele["text"].to_numpy(), tele["event_time"].cast(pl.Int64).to_numpy(), tele["quantity"].to_numpy()
    use, stk = text == "usage", text == "stock"  # numpy masks: a polars filter per series costs a query each
    ts, sv = _days(us[stk], as_of_us), value[stk]
    lags = arrival_lags(t, q, ts, sv) if len(ts) else np.empty(0)
    lead = float(np.median(lags)) if len(lags) else state["lead_time"]
    rate, se = state["rate"], state["rate_se"]
    if use.sum() >= 2:
        rate, se = usage_rate(_days(us[use], as_of_us), value[use], p.block_days)
    elif len(ts) >= 2:
        rate = stock_rate(ts, sv, np.floor(t), q, lead)
    state.update(source="telemetry", rate=rate, rate_se=se, lead_time=lead)
    if not len(ts):
        return state
    before = np.searchsorted(ts, t) - 1                  # the last reading before each order (the previous evening)
    ok = before >= 0
    if ok.any():
        day = np.floor(t)
        open_at = np.array([q[(t < tk) & (day + lead >= dk)].sum() for tk, dk in zip(t, day)])
        position = sv[before[ok]] + open_at[ok]
        state.update(reorder_point=float(np.median(position)) if np.isnan(state["review_days"]) else np.nan,
                     order_up_to=float(np.median(position + q[ok])))
    arriving = q[(np.floor(t) + lead > ts[-1]) & (np.floor(t) + lead <= 0)].sum()
    resid = np.diff(sv) + rate * np.diff(ts)
    noise = float(np.median(np.abs(resid - np.median(resid)))) * 1.4826 if len(resid) else 0.0
    state.update(stock=sv[-1] - rate * -ts[-1] + arriving, stock_sd=noise + rate * -ts[-1] * 0.3)
    return state


@dataclass(frozen=True)
class SeriesRule:
    """Which (customer, item) series are a machine's, when neither ``actor`` nor a detector says: orders of the
    item at least ``min_orders`` times, its gaps' coefficient of variation at most ``max_gap_cv`` and their median
    absolute deviation at most ``max_gap_mad`` of the median gap, and such regular series hold at least
    ``min_regular_share`` of the customer's order lines (a person's one regular habit among many other purchases
    does not make a machine)."""

    min_orders: int = 5
    max_gap_cv: float = 0.5
    max_gap_mad: float = 0.35
    min_regular_share: float = 0.5


def series_regularity(events: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """Per (customer_id, item_id) of the purchase rows: ``n_orders`` (distinct baskets holding the item), ``lines``,
    the gaps' ``gap_cv`` and ``gap_mad`` (median absolute deviation / median gap) and ``quantity_cv`` of the quantity per
    order; the customer's ``actor`` hint (``machine`` if any row says so, ``human`` if every row does, else
    ``unknown``)."""
    ev = events.lazy() if isinstance(events, pl.DataFrame) else events
    hint = ev.group_by("customer_id").agg(
        pl.when((pl.col("actor") == "machine").any()).then(pl.lit("machine"))
        .when((pl.col("actor") == "human").all()).then(pl.lit("human")).otherwise(pl.lit("unknown")).alias("actor"))
    gap = pl.col("event_time").dt.timestamp("us").diff().drop_nulls() / DAY_US
    order = pl.col("basket_id" if "basket_id" in ev.collect_schema().names() else "event_time").alias("_order")
    orders = (ev.filter((pl.col("event_type") == "purchase") & pl.col("customer_id").is_not_null())
              .group_by("customer_id", "item_id", order).agg(pl.col("event_time").min(), pl.col("quantity").sum(), pl.len().alias("lines"))
              .sort("event_time").group_by("customer_id", "item_id").agg(
                  pl.len().alias("n_orders"), pl.col("lines").sum(),
                  (gap.std() / gap.mean()).alias("gap_cv"),
                  ((gap - gap.median()).abs().median() / gap.median()).alias("gap_mad"),
                  (pl.col("quantity").std() / pl.col("quantity").mean()).alias("quantity_cv")))
    return (orders.join(hint, on="customer_id", how="left").collect()
            .with_columns(pl.col("gap_cv", "gap_mad", "quantity_cv").fill_nan(None)).sort("customer_id", "item_id"))


def machine_series(events: pl.LazyFrame | pl.DataFrame, scores: pl.DataFrame | None = None, threshold: float = 0.5,
                   rule: SeriesRule = SeriesRule()) -> pl.DataFrame:
    """The (customer, item) series that behave like a machine customer, with the ``basis`` of each choice: every
    series of a customer whose ``actor`` says machine (``actor``); none of one whose every row says human; for
    the others, with ``scores`` (``customer_id, machine_score``: a detector's calibrated P(machine)), the series
    with 3 orders or more of customers scoring ``threshold`` or more (``detector``), else the regular series
    (``SeriesRule``: ``regularity``). Labels are a hint, never a requirement."""
    reg = series_regularity(events)
    by_actor = reg.filter(pl.col("actor") == "machine").with_columns(pl.lit("actor").alias("basis"))
    rest = reg.filter(pl.col("actor") == "unknown")
    if scores is not None:
        chosen = rest.join(scores.select("customer_id", "machine_score"), on="customer_id").filter(
            (pl.col("machine_score") >= threshold) & (pl.col("n_orders") >= 3)).with_columns(pl.lit("detector").alias("basis"))
    else:
        regular = ((pl.col("n_orders") >= rule.min_orders) & (pl.col("gap_cv") <= rule.max_gap_cv)
                   & (pl.col("gap_mad") <= rule.max_gap_mad)).fill_null(False)
        share = (pl.col("lines").filter(regular).sum() / pl.col("lines").sum()).over("customer_id")
        chosen = rest.filter(regular & (share >= rule.min_regular_share)).with_columns(pl.lit("regularity").alias("basis"))
    return pl.concat([f.select("customer_id", "item_id", "basis") for f in (by_actor, chosen)]).sort("customer_id", "item_id")


def machine_events(events: pl.LazyFrame | pl.DataFrame, series: pl.DataFrame) -> pl.LazyFrame:
    """The events of the machine ``series`` (``machine_series``), with actor ``machine``: their purchase rows, and
    the other rows (readings, service requests, messages) of their customers that name one of their items or
    none."""
    ev = events.lazy() if isinstance(events, pl.DataFrame) else events
    key = pl.concat_str("customer_id", pl.lit("\x1f"), pl.col("item_id").fill_null(""))
    keys = series.select(key.alias("k"))["k"].implode()
    customers = series["customer_id"].unique().implode()
    other = (pl.col("event_type") != "purchase") & pl.col("item_id").is_null() & pl.col("customer_id").is_in(customers)
    return ev.filter(key.is_in(keys).fill_null(False) | other.fill_null(False)).with_columns(actor=pl.lit("machine"))


def build_machine_twins(events: pl.LazyFrame | pl.DataFrame, as_of: datetime, params: MachineTwinParams | None = None,
                        offers: pl.DataFrame | None = None, series: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (machine, consumable) with at least one order before ``as_of``: ``rate`` with
    ``rate_low/high``, ``stock`` with ``stock_low/high``, ``reorder_point``, ``order_up_to``, ``order_quantity``,
    ``review_days`` (periodic review, else null), ``lead_time``, ``delay_cost_low/high``, ``reservation_price``,
    ``n_orders``, ``last_order``, ``source`` (``orders`` or ``telemetry``) and ``basis`` (why the series is a
    machine's, ``machine_series``; ``series`` default: ``machine_series`` of the events before ``as_of``).
    ``offers`` (the suppliers' feed: ``day, supplier, item_id, unit_price, delivery_days``) enables the delay-cost
    bounds. Stock readings that cannot be used (negative or not finite) are left out and counted in
    ``unusable_readings``."""
    p = params or MachineTwinParams()
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=timezone.utc)
    as_of_us = int(as_of.timestamp() * 1_000_000)
    z = NormalDist().inv_cdf((1 + p.interval) / 2)
    past = (events.lazy() if isinstance(events, pl.DataFrame) else events).filter(
        pl.col("event_time") < pl.lit(as_of, pl.Datetime("us", "UTC")))
    series = machine_series(past) if series is None else series
    ev = machine_events(past, series)
    names = ev.collect_schema().names()
    order_cols = ["customer_id", "item_id", "event_time", "quantity", "unit_price"] + [
        c for c in ("promised_days", "supplier") if c in names]
    orders = ev.filter(pl.col("event_type") == "purchase").select(order_cols).sort("event_time").collect()
    tele = (ev.filter(pl.col("event_type") == "telemetry").select("customer_id", "item_id", "event_time", "text", "quantity")
            .sort("event_time").collect()) if p.use_telemetry else pl.DataFrame()
    usable = (pl.col("text").is_in(["stock", "usage"]) & pl.col("quantity").is_finite()
              & ((pl.col("text") != "stock") | (pl.col("quantity") >= 0))).fill_null(False)
    unusable = (tele.filter(~usable).group_by("customer_id", "item_id").agg(pl.len().alias("unusable_readings"))
                if tele.height else None)
    tele = tele.filter(usable) if tele.height else tele
    counters = (ev.filter((pl.col("event_type") == "message") & (pl.col("text") == "counter"))
                .group_by("customer_id", "item_id").agg(pl.col("unit_price").median().alias("reservation_price")).collect())
    tele_by = _split(tele, ["customer_id", "item_id"])
    choices = _offer_choices(orders, offers) if offers is not None and "supplier" in names else {}

    quoted = ({(c, i): m for c, i, m in orders.group_by("customer_id", "item_id").agg(pl.col("promised_days").median()).iter_rows()}
              if "promised_days" in names else {})  # the median quoted lead time of each series
    rows = []
    for key, g in _split(orders, ["customer_id", "item_id"]).items():
        t, q = _days(g["event_time"], as_of_us), g["quantity"].to_numpy()
        lead = quoted.get(key)
        state = orders_state(t, q, np.nan if lead is None else float(lead), p)
        if key in tele_by:
            state = telemetry_state(state, t, q, tele_by[key], as_of_us, p)
        rate, se, stock, sd = state.pop("rate"), state.pop("rate_se"), state.pop("stock"), state.pop("stock_sd")
        se = se if np.isfinite(se) else np.nan
        low, high = delay_cost_bounds(*choices[key]) if key in choices else (np.nan, np.nan)
        rows.append({"customer_id": key[0], "item_id": key[1], "n_orders": len(t), "last_order": g["event_time"][-1],
                     "rate": rate, "rate_low": max(rate - z * se, 0.0), "rate_high": rate + z * se,
                     "stock": max(stock, 0.0), "stock_low": max(stock - z * sd, 0.0), "stock_high": max(stock + z * sd, 0.0),
                     "order_quantity": float(np.median(q)), **state, "delay_cost_low": low, "delay_cost_high": high})
    if not rows:
        return pl.DataFrame()
    out = pl.DataFrame(rows, schema_overrides={"last_order": pl.Datetime("us", "UTC")}, infer_schema_length=None)
    out = out.with_columns(pl.col(pl.Float64).fill_nan(None)).join(series, on=["customer_id", "item_id"], how="left")
    if unusable is not None and unusable.height:
        out = out.join(unusable, on=["customer_id", "item_id"], how="left")
    else:
        out = out.with_columns(pl.lit(None, pl.UInt32).alias("unusable_readings"))
    out = out.with_columns(pl.col("unusable_readings").fill_null(0).cast(pl.Int64))
    return out.join(counters, on=["customer_id", "item_id"], how="left").with_columns(
        pl.lit(as_of).cast(pl.Datetime("us", "UTC")).alias("as_of"))


def _offer_choices(orders: pl.DataFrame, offers: pl.DataFrame) -> dict[tuple, tuple[np.ndarray, ...]]:
    """Per (machine, item): chosen and alternative (price, delivery days) for every order the feed covers."""
    feed = offers.select(pl.col("day").dt.truncate("1d"), "supplier", "item_id",
                         pl.col("unit_price").alias("price"), pl.col("delivery_days").cast(pl.Float64).alias("days"))
    o = orders.select("customer_id", "item_id", "event_time", pl.col("supplier").alias("chosen"),
                      pl.col("event_time").dt.truncate("1d").alias("day"))
    joined = o.join(feed, on=["day", "item_id"])
    chosen = joined.filter(pl.col("supplier") == pl.col("chosen")).select(
        "customer_id", "item_id", "event_time", pl.col("price").alias("cp"), pl.col("days").alias("cd"))
    pairs = joined.filter(pl.col("supplier") != pl.col("chosen")).join(chosen, on=["customer_id", "item_id", "event_time"])
    return {key: (g["cp"].to_numpy(), g["cd"].to_numpy(), g["price"].to_numpy(), g["days"].to_numpy())
            for key, g in _split(pairs, ["customer_id", "item_id"]).items()}


def _bucket_inputs(events_dir: Path, bucket: int, as_of: datetime) -> pl.LazyFrame:
    """One bucket's events before ``as_of``, in memory as one chunk (``twins.twin.customer.read_bucket``)."""
    from twins.twin.customer import read_bucket

    return read_bucket(scan_events(events_dir, bucket=bucket).filter(pl.col("event_time") < pl.lit(as_of, pl.Datetime("us", "UTC"))))


def bucket_price_counts(job: tuple[Path, int, datetime, int]) -> pl.DataFrame:
    """Phase one of the behaviour twins on one bucket: its ``price_counts`` before ``as_of``."""
    from twins.twin.behaviour import price_counts

    events_dir, bucket, as_of, min_orders = job
    return price_counts(_bucket_inputs(events_dir, bucket, as_of), min_orders)


def fleet_state(detector: str | Path | None, offers: str | Path | None) -> tuple[Any, pl.DataFrame | None]:
    """What every bucket of ``build_store_machines`` shares, made once per worker: the detector and the offer feed."""
    from twins.models.machine_detector import load_detector

    return (None if detector is None else load_detector(detector),
            None if offers is None else pl.read_parquet(offers))


def bucket_machines(state: tuple[Any, pl.DataFrame | None], job: tuple[Path, int, datetime, int, pl.DataFrame, Path | None]
                    ) -> tuple[pl.DataFrame, pl.DataFrame] | tuple[Path | None, Path | None]:
    """(behaviour twins, machine twins) of the customers of one bucket: behaviour features with the log's item
    medians, P(machine) from the detector, the machine series and their twins. With a parts folder ``job[5]``
    they are written there instead (``bucket_parts``) and their files returned."""
    from twins.twin.behaviour import behaviour_features

    detector, offers = state
    events_dir, bucket, as_of, min_orders, medians, parts = job
    past = _bucket_inputs(events_dir, bucket, as_of)
    behaviour = behaviour_features(past, min_orders, medians=medians)
    scores = None
    if detector is not None:
        behaviour = behaviour.with_columns(pl.Series("machine_score", detector.predict_proba(behaviour)[:, 1]
                                                     if behaviour.height else [], pl.Float64))
        scores = behaviour.select("customer_id", "machine_score")
    machine = build_machine_twins(past, as_of, offers=offers, series=machine_series(past, scores))
    return (behaviour, machine) if parts is None else bucket_parts(behaviour, machine, parts, bucket)


def bucket_parts(behaviour: pl.DataFrame, machine: pl.DataFrame, parts: Path, bucket: int) -> tuple[Path | None, Path | None]:
    """One bucket's twins as snapshot parts (``TwinStore.write_parts``) in ``parts``: ``behaviour-NNNNN.parquet``
    sorted by ``customer_id`` and ``machine-NNNNN.parquet`` with ``twin_id`` (``<customer_id>/<item_id>``) sorted by
    it; None for a kind the bucket has no twin of."""
    from twins.twin.customer import PART_ROW_GROUP

    files: list[Path | None] = []
    for kind, twins, key in (("behaviour", behaviour, "customer_id"), ("machine", machine, "twin_id")):
        if twins.is_empty():
            files.append(None)
            continue
        if kind == "machine":
            twins = twins.with_columns(pl.concat_str("customer_id", pl.lit("/"), "item_id").alias("twin_id"))
        file = parts / f"{kind}-{bucket:05d}.parquet"
        twins.sort(key).write_parquet(file, row_group_size=PART_ROW_GROUP)  # small groups: the merge reads ranges
        files.append(file)
    return files[0], files[1]


def build_store_machines(events_dir: str | Path, as_of: datetime, min_orders: int = 3,
                         detector: str | Path | None = None, engine=None, parts: Path | None = None
                         ) -> tuple[pl.DataFrame, pl.DataFrame] | tuple[list[Path], list[Path]]:
    """(behaviour twins sorted by customer, machine twins sorted by customer and item) of a partitioned events
    folder, from the events before ``as_of``, bucket by bucket through ``engine`` (default: local), in two phases
    like the customer build: each bucket's price counts, combined into the log's item medians (``deal_share``'s one
    population-level input, a row per item), then each bucket's twins. The offer feed ``offers.parquet`` beside
    the events, if any, gives the delay-cost bounds. Equal to the twins of the same events in one bucket. With
    ``parts`` (a folder every worker can write to) each bucket's twins are written there instead
    (``bucket_parts``) and the (behaviour, machine) part files returned, buckets without such twins left out, so
    no process holds more than a bucket's twins (``TwinStore.write_parts`` merges them into snapshots)."""
    from functools import partial

    from twins.engine import get_engine
    from twins.twin.behaviour import item_medians

    engine, events_dir = engine or get_engine("local"), Path(events_dir)
    buckets = range(len(bucket_files(events_dir)))
    medians = item_medians(engine.map(bucket_price_counts, [(events_dir, b, as_of, min_orders) for b in buckets]))
    offers = events_dir / "offers.parquet"
    done = engine.map(bucket_machines, [(events_dir, b, as_of, min_orders, medians, parts) for b in buckets],
                      setup=partial(fleet_state, detector, offers if offers.exists() else None))
    if parts is not None:
        return [b for b, _ in done if b is not None], [m for _, m in done if m is not None]
    behaviour = pl.concat([b for b, _ in done], how="vertical_relaxed").sort("customer_id")
    machines = [m for _, m in done if m.height]
    machine = pl.concat(machines, how="vertical_relaxed").sort("customer_id", "item_id") if machines else pl.DataFrame()
    return behaviour, machine
