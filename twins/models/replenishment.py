"""Replenishment: each machine's order history (and readings) as numpy arrays, the features a forecaster of its
next order sees at a cut-off, the next order after it, and the naive baselines (last interval, mean interval,
Croston, TSB, direct (s, S) inference). The features themselves live in ``twins.runtime.replenishment_features``
(numpy only), shared with the ONNX runtime.

Times are in days (float) since the Unix epoch; ``horizon`` days after the cut-off bound what is observed: no order
by then is a censored target (``T = nan``, ``censored = True``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

from twins.data.events import bucket_files
from twins.runtime.replenishment_features import FEATURES, History, features, features_many
from twins.twin.machine import machine_events, machine_series

DAY_US = 86_400_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


#: why a reading is left out of a history (counted by ``histories``)
UNUSABLE = {"not_finite": "its value is missing or not finite", "negative_stock": "a stock reading below 0",
            "unknown_kind": "text is neither 'stock' nor 'usage'", "no_item": "no item_id, and the machine orders "
            "several items", "no_orders": "its machine and item have no order"}


def histories(events: pl.DataFrame | pl.LazyFrame, series: pl.DataFrame | None = None,
              skipped: dict[str, int] | None = None) -> dict[str, History]:
    """Machine orders and readings per machine and consumable, keyed as ``machine_keys`` says. The machines are
    ``series`` (default: ``twins.twin.machine.machine_series``: actor hints, else the series' own regularity).
    Readings go to the consumable their ``item_id`` names (one without goes to a single-item machine's only
    consumable); a stock reading and a usage reading at the same time are one reading, and a machine may send
    either kind or both (``History`` completes the usage counter). A reading that cannot be used is counted in
    ``skipped`` by reason (``UNUSABLE``), never dropped silently."""
    events = events.lazy() if isinstance(events, pl.DataFrame) else events
    ev = machine_events(events, machine_series(events) if series is None else series)
    single = _single_item(_order_pairs(ev))
    machine = _machine(single)
    days = (pl.col("event_time").cast(pl.Int64) / DAY_US).alias("t")
    has_promised = "promised_days" in ev.collect_schema().names()
    orders = (ev.filter(pl.col("event_type") == "purchase")
              .select(machine, days, "quantity",
                      (pl.col("promised_days").cast(pl.Float64) if has_promised else pl.lit(np.nan)).alias("promised"))
              .sort("t").group_by("machine", maintain_order=True).agg(pl.all()).collect())
    known = orders["machine"].implode()
    value = pl.col("quantity")
    reason = (pl.when(~value.is_finite().fill_null(False)).then(pl.lit("not_finite"))
              .when(~pl.col("text").is_in(["stock", "usage"]).fill_null(False)).then(pl.lit("unknown_kind"))
              .when((pl.col("text") == "stock") & (value < 0)).then(pl.lit("negative_stock"))
              .when(pl.col("item_id").is_null() & ~pl.col("customer_id").is_in(list(single))).then(pl.lit("no_item"))
              .when(~pl.col("machine").is_in(known)).then(pl.lit("no_orders")))
    tele = ev.filter(pl.col("event_type") == "telemetry").select(machine, days, "text", "quantity", "item_id",
                                                                  "customer_id").with_columns(reason.alias("why"))
    if skipped is not None:
        for why, n in tele.filter(pl.col("why").is_not_null()).group_by("why").len().collect().iter_rows():
            skipped[why] = skipped.get(why, 0) + n
    tele = (tele.filter(pl.col("why").is_null()).group_by("machine", "t").agg(
                pl.col("quantity").filter(pl.col("text") == "stock").first().alias("stock"),
                pl.col("quantity").filter(pl.col("text") == "usage").first().alias("usage"))
            .sort("t").group_by("machine").agg("t", "stock", "usage").collect())
    readings = {m: rest for m, *rest in tele.iter_rows()}
    out = {}
    for m, t, q, promised in orders.iter_rows():
        tel_t, stock, usage = (np.asarray([np.nan if v is None else v for v in col], float) for col in readings.get(m, ([], [], [])))
        out[m] = History(np.asarray(t), np.asarray(q, float), np.asarray(promised, float), tel_t, stock, usage)
    return out


def machine_keys(events: pl.DataFrame | pl.LazyFrame, series: pl.DataFrame | None = None) -> pl.DataFrame:
    """``machine`` (the key of ``histories``), ``customer_id``, ``item_id``: one row per machine and consumable. The
    key is the customer id when the machine orders one item (the simulated market's machines), ``<customer>/<item>``
    when it orders several (a printer's four toners), as the machine twins are keyed."""
    events = events.lazy() if isinstance(events, pl.DataFrame) else events
    pairs = _order_pairs(machine_events(events, machine_series(events) if series is None else series))
    return pairs.select(_machine(_single_item(pairs)), "customer_id", "item_id")


def _order_pairs(machine_events: pl.LazyFrame) -> pl.DataFrame:
    """The distinct (customer_id, item_id) of the machine orders, in first-seen order."""
    return (machine_events.filter(pl.col("event_type") == "purchase").select("customer_id", "item_id")
            .unique(maintain_order=True).collect())


def _single_item(pairs: pl.DataFrame) -> set[str]:
    """Customers whose machine orders one item only (keyed by the customer id alone)."""
    n_items = pairs.group_by("customer_id").agg(pl.col("item_id").n_unique())
    return set(n_items.filter(pl.col("item_id") == 1)["customer_id"].to_list())


def _machine(single: set[str]) -> pl.Expr:
    """The ``machine`` key of a row: its customer id for a single-item machine, else ``<customer>/<item>``."""
    return (pl.when(pl.col("customer_id").is_in(list(single))).then(pl.col("customer_id"))
            .otherwise(pl.concat_str("customer_id", pl.lit("/"), pl.col("item_id").fill_null(""))).alias("machine"))


def runtime_inputs(hist: dict[str, History], machines: list[str]) -> tuple[list[list[tuple]], list[list[tuple]]]:
    """The runtime's ``forecast`` inputs for ``machines``: each one's orders as (time, quantity, promised days) and
    readings as (time, stock, usage), times as UTC datetimes to the microsecond; a machine without a history gets
    empty lists (the runtime answers it with ``known`` False)."""
    when = lambda days: EPOCH + timedelta(microseconds=round(days * DAY_US))  # noqa: E731
    empty = History(np.zeros(0), np.zeros(0), np.zeros(0))
    hs = [hist.get(m, empty) for m in machines]
    return ([[(when(t), q, p) for t, q, p in zip(h.t, h.q, h.promised)] for h in hs],
            [[(when(t), s, u) for t, s, u in zip(h.tel_t, h.stock, h.usage)] for h in hs])


def next_order(h: History, cutoff: float, horizon: float) -> tuple[float, float, bool]:
    """Days from ``cutoff`` to the first order at or after it and its quantity; (nan, nan, True) when none
    within ``horizon`` days."""
    k = np.searchsorted(h.t, cutoff)
    if k < len(h.t) and h.t[k] - cutoff <= horizon:
        return float(h.t[k] - cutoff), float(h.q[k]), False
    return np.nan, np.nan, True


@dataclass
class Samples:
    """Feature rows with their machine, cut-off and target (time, quantity, censored); ``bound``: the days after
    the cut-off that were watched for the target (a censored time is at least that)."""

    machine: np.ndarray
    cutoff: np.ndarray
    X: np.ndarray
    T: np.ndarray
    Q: np.ndarray
    censored: np.ndarray
    bound: np.ndarray


def samples(hist: dict[str, History], machines: list[str], cutoffs: list[float], horizon: float,
            until: float | None = None, cache: dict | None = None) -> Samples:
    """One row per (machine, cut-off) where the machine has >= 3 orders before the cut-off. Targets are watched for
    ``horizon`` days, and only up to ``until`` when given (training rows must not see past the forecast date:
    an order after it counts as unseen, and the row is censored at ``until``); cut-offs at or after ``until``
    give no rows. ``cache``: features by (machine, cut-off), shared by calls on the same histories (a machine's
    features at a cut-off read only what came before it, whatever ``until`` is)."""
    return pair_samples(hist, [m for m in machines for _ in cutoffs], [c for _ in machines for c in cutoffs], horizon,
                        until, cache)


def pair_samples(hist: dict[str, History], machines: list[str], cutoffs: list[float], horizon: float,
                 until: float | None = None, cache: dict | None = None) -> Samples:
    """``samples`` of the (machine, cut-off) pairs ``zip(machines, cutoffs)``, in that order; the features of
    those not in ``cache`` computed together (``features_many``)."""
    watched = [(m, c, horizon if until is None else min(horizon, until - c)) for m, c in zip(machines, cutoffs)]
    watched = [(m, c, w) for m, c, w in watched if w > 0]
    missing = list(dict.fromkeys((m, c) for m, c, _ in watched if cache is None or (m, c) not in cache))
    new = dict(zip(missing, features_many([hist[m] for m, _ in missing], [c for _, c in missing])))
    if cache is not None:
        cache.update(new)
    rows, ids, cuts, targets, bounds = [], [], [], [], []
    for m, c, watch in watched:
        x = new[(m, c)] if (m, c) in new else cache[(m, c)]
        if x is not None:
            rows.append(x)
            ids.append(m)
            cuts.append(c)
            targets.append(next_order(hist[m], c, watch))
            bounds.append(watch)
    T, Q, cens = (np.array(v) for v in zip(*targets)) if targets else (np.empty(0),) * 3
    return Samples(np.asarray(ids), np.asarray(cuts), np.asarray(rows).reshape(-1, len(FEATURES)), T, Q,
                   np.asarray(cens, bool), np.asarray(bounds, float))


def sample_pairs(n_machines: int, n_cutoffs: int, max_rows: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(machine index, cut-off index) of every pair of ``n_machines`` x ``n_cutoffs``, or of a seeded uniform sample
    of ``max_rows`` of them without replacement (when there are more), by machine then cut-off."""
    total = n_machines * n_cutoffs
    pick = (np.arange(total) if max_rows is None or total <= max_rows
            else np.sort(np.random.default_rng(seed).choice(total, int(max_rows), replace=False)))
    return np.divmod(pick, n_cutoffs)


def bucket_histories(events_dir: str | Path, skipped: dict[str, int] | None = None) -> Iterator[dict[str, History]]:
    """``histories`` of each bucket of an event store in turn, so that memory holds one bucket's machines: a
    machine's events all sit in its customer's bucket, and its series are told per customer."""
    for path in bucket_files(events_dir):
        yield histories(pl.scan_parquet(path), skipped=skipped)


# --- naive baselines: (time to next order, quantity) from a history at a cut-off ----------------------------------

def last_interval(h: History, cutoff: float) -> tuple[float, float]:
    t, q = h.t[h.t < cutoff], h.q[h.t < cutoff]
    return max(t[-1] + (t[-1] - t[-2]) - cutoff, 0.0), float(q[-1])


def mean_interval(h: History, cutoff: float) -> tuple[float, float]:
    t, q = h.t[h.t < cutoff], h.q[h.t < cutoff]
    return max(t[-1] + np.diff(t).mean() - cutoff, 0.0), float(q.mean())


def croston(h: History, cutoff: float, alpha: float = 0.1) -> tuple[float, float]:
    """Croston: exponentially smoothed intervals and sizes; the next order one smoothed interval after the last."""
    t, q = h.t[h.t < cutoff], h.q[h.t < cutoff]
    gap, size = t[1] - t[0], q[0]
    for g in np.diff(t)[1:]:
        gap += alpha * (g - gap)
    for s in q[1:]:
        size += alpha * (s - size)
    return max(t[-1] + gap - cutoff, 0.0), float(size)


def tsb(h: History, cutoff: float, alpha: float = 0.1, beta: float = 0.05) -> tuple[float, float]:
    """Teunter-Syntetos-Babai on daily buckets: smoothed order probability p (every day) and size (order days);
    time to the next order is the geometric median log(0.5) / log(1 - p).

    Its large time MAE (about 40 days where the others have 4-7, BENCHMARKS.md) is what TSB is, not a bug: it
    forecasts a constant daily order probability, so the time to the next order ignores the time since the last
    one (a machine ordering every 14 days is told 6.7 days on every day of its cycle), and p decays by ``beta`` on
    every day without an order, so a machine late in a long interval is told several intervals (one ordering every
    33 days, already 33 days after its last order, is told 69 days; it ordered 4 days later). It is kept as the
    intermittent-demand reference; Croston is the same smoothing measured per order and has no such bias."""
    t, q = h.t[h.t < cutoff], h.q[h.t < cutoff]
    days = np.floor(t - t[0]).astype(int)
    daily = np.zeros(int(np.floor(cutoff - t[0])) + 1)
    np.add.at(daily, days, q)
    p, size = 1.0 / max(np.diff(t).mean(), 1.0), q[0]
    for d in daily[1:]:
        p += beta * ((d > 0) - p)
        if d > 0:
            size += alpha * (d - size)
    p = min(max(p, 1e-4), 0.999)
    return float(np.log(0.5) / np.log1p(-p)), float(size)


def s_S_inference(h: History, cutoff: float) -> tuple[float, float]:
    """Direct (s, S) inference: the twin's position and reorder point when readings exist (time until the
    position falls to s at the usage rate; quantity S - s), else the order-up-to identity (quantity = consumption
    since the last order: the next order comes when the typical quantity has been used)."""
    x = features(h, cutoff)
    f = dict(zip(FEATURES, x))
    rate = np.exp(f["log_usage_rate"])
    if f["has_telemetry"]:
        return max(f["above_s_days"], 0.0), float(np.exp(f["log_median_q"]))
    if f["period_left"] != f["mean_gap_left"]:
        return max(f["period_left"], 0.0), float(rate * np.median(np.diff(h.t[h.t < cutoff])))
    return max(np.exp(f["log_median_q"]) / rate - f["since_last"], 0.0), float(np.exp(f["log_median_q"]))


BASELINES = {"last_interval": last_interval, "mean_interval": mean_interval, "croston": croston, "tsb": tsb,
             "s_S_inference": s_S_inference}


def baseline_predictions(hist: dict[str, History], s: Samples) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each baseline's (time, quantity) for every sample row."""
    return {name: tuple(np.array(v) for v in zip(*[fn(hist[m], c) for m, c in zip(s.machine, s.cutoff)]))
            for name, fn in BASELINES.items()}
