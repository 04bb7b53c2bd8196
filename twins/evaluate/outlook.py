"""The calibration-holdout protocol for "when, how many, how much" (DESIGN §4, the BTYD convention).

Fit on events before a cut-off; predict, per customer seen before the cut-off, the number of purchase days
and the spend in the following horizon. Purchases on the same (UTC) day count once, as in the BG/NBD
literature. Customers first seen after the cut-off are not scored (their count is reported).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl

DAY_US = 86_400 * 1_000_000


SPEND = ("net", "gross")
COUNT_BY = ("day", "order")


def purchase_days(events: pl.LazyFrame, spend: str = "net", count_by: str = "day") -> pl.LazyFrame:
    """One row per (customer, UTC day) with purchases, or with ``count_by="order"`` per (customer, order: the
    basket id, or the line's time where it has none) with a purchase: the (first) day and the spend, ``net`` of
    returns (purchases − returns) or ``gross`` (purchases only)."""
    if spend not in SPEND or count_by not in COUNT_BY:
        raise ValueError(f"spend must be one of {SPEND} and count_by one of {COUNT_BY}, got {spend!r}, {count_by!r}")
    buy = pl.col("event_type") == "purchase"
    returned = pl.lit(0.0) if spend == "gross" else -pl.col("amount")
    lines = (events.filter(pl.col("customer_id").is_not_null() & pl.col("event_type").is_in(["purchase", "return"]))
             .with_columns(day=pl.col("event_time").dt.truncate("1d")))
    if count_by == "order":
        key = pl.coalesce(pl.col("basket_id").cast(pl.String), pl.col("event_time").cast(pl.String)).alias("order")
        grouped = lines.group_by("customer_id", key).agg(pl.col("day").min(), spend=pl.when(buy).then(pl.col("amount"))
                                                          .otherwise(returned).sum(), buys=buy.any()).drop("order")
    else:
        grouped = lines.group_by("customer_id", "day").agg(spend=pl.when(buy).then(pl.col("amount")).otherwise(returned).sum(),
                                                             buys=buy.any())
    return grouped.filter(pl.col("buys")).drop("buys")


def purchase_lines(events: pl.LazyFrame) -> dict[str, list[tuple]]:
    """Each customer's purchase and return lines as the outlook runtime takes them: (time, amount, order id),
    returns negative (``twins.runtime.outlook.purchase_units`` turns them into the purchase days or orders counted
    here)."""
    lines = (events.filter(pl.col("customer_id").is_not_null() & pl.col("event_type").is_in(["purchase", "return"]))
             .select("customer_id", "event_time",
                     pl.when(pl.col("event_type") == "return").then(-pl.col("amount")).otherwise(pl.col("amount"))
                     .fill_null(0.0).alias("amount"), pl.col("basket_id").cast(pl.String))
             .group_by("customer_id").agg("event_time", "amount", "basket_id").collect())
    return {c: list(zip(t, a, b)) for c, t, a, b in lines.iter_rows()}


def summarise(days: pl.LazyFrame, cutoff: datetime, horizon_days: float, unit_days: float = 7.0) -> pl.DataFrame:
    """Per customer first seen before ``cutoff``: BTYD calibration summary and holdout actuals.

    Columns: ``x`` repeat purchase days, ``t_x`` time of the last purchase day since the first, ``T`` age at the
    cut-off (all in ``unit_days`` units); ``n_days`` purchase days in calibration; ``m`` mean spend of the
    repeat purchase days (null for x = 0); ``spend_cal``; ``last_window_count`` / ``last_window_spend``
    in [cutoff − horizon, cutoff) for the persistence baseline; ``actual_count`` / ``actual_spend`` in
    [cutoff, cutoff + horizon), and ``actual_first_day``, the first purchase day there in days from the cut-off
    (0 = the cut-off's day; null: none)."""
    cutoff = cutoff if cutoff.tzinfo else cutoff.replace(tzinfo=timezone.utc)
    c = pl.lit(cutoff, pl.Datetime("us", "UTC"))
    end = pl.lit(cutoff + timedelta(days=horizon_days), pl.Datetime("us", "UTC"))
    start_last = pl.lit(cutoff - timedelta(days=horizon_days), pl.Datetime("us", "UTC"))
    units = lambda e: e.dt.total_microseconds() / (DAY_US * unit_days)  # noqa: E731
    cal, hold = pl.col("day") < c, (pl.col("day") >= c) & (pl.col("day") < end)
    last = (pl.col("day") >= start_last) & cal
    out = (days.group_by("customer_id").agg(
        first=pl.col("day").filter(cal).min(), last=pl.col("day").filter(cal).max(),
        n_days=cal.sum().cast(pl.Int64), spend_cal=pl.col("spend").filter(cal).sum(),
        repeat_spend=pl.col("spend").filter(cal & (pl.col("day") > pl.col("day").filter(cal).min())).sum(),
        first_spend=pl.col("spend").filter(cal & (pl.col("day") == pl.col("day").filter(cal).min())).sum(),
        n_first=(cal & (pl.col("day") == pl.col("day").filter(cal).min())).sum(),
        last_window_count=last.sum().cast(pl.Int64), last_window_spend=pl.col("spend").filter(last).sum(),
        actual_count=hold.sum().cast(pl.Int64), actual_spend=pl.col("spend").filter(hold).sum(),
        actual_first_day=(pl.col("day").filter(hold).min() - c).dt.total_days(),
    ).filter(pl.col("n_days") > 0).with_columns(
        x=(pl.col("n_days") - 1).cast(pl.Float64),
        t_x=units(pl.col("last") - pl.col("first")),
        T=units(c - pl.col("first")),
    ).with_columns(  # orders on the first day beyond one (count_by="order") are repeats worth that day's mean
        repeat_spend=pl.col("repeat_spend") + pl.col("first_spend") * (pl.col("n_first") - 1) / pl.col("n_first"),
    ).with_columns(m=pl.when(pl.col("x") > 0).then(pl.col("repeat_spend") / pl.col("x")))
        .drop("repeat_spend", "first_spend", "n_first").sort("customer_id"))
    return out.collect()


# ------------------------------------------------------------------------------------------------ baselines

def persistence(summary: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Predict the last horizon-length window again: (count, spend)."""
    return summary["last_window_count"].to_numpy().astype(float), summary["last_window_spend"].to_numpy()


def rate_extrapolation(summary: pl.DataFrame, horizon_days: float, unit_days: float = 7.0) -> tuple[np.ndarray, np.ndarray]:
    """Repeat-purchase rate since the first purchase (x / T) times the horizon; spend = count x mean day spend."""
    t = horizon_days / unit_days
    x, T = summary["x"].to_numpy(), summary["T"].to_numpy()
    count = np.where(T > 0, x / np.maximum(T, 1e-9), 0.0) * t
    day_spend = summary["spend_cal"].to_numpy() / summary["n_days"].to_numpy()
    return count, count * day_spend


def blend_weight(a: np.ndarray, b: np.ndarray, actual: np.ndarray, steps: int = 21) -> float:
    """The weight w in [0, 1] (on a grid of ``steps``) whose blend w·a + (1−w)·b has the lowest MAE against
    ``actual``; ties go to the smaller w. Fit it on a window that ends before the evaluation cut-off."""
    grid = np.linspace(0.0, 1.0, steps)
    maes = [np.abs(w * a + (1 - w) * b - actual).mean() for w in grid]
    return float(grid[int(np.argmin(maes))])


def count_median_from_mean(mean: np.ndarray, p_any: np.ndarray) -> np.ndarray:
    """The median count of a model that answers only the mean m and P(>= 1) = p: a hurdle count, 0 with
    probability 1 − p, else 1 + Poisson(m/p − 1). No parameter is chosen, so no data are needed: 0 where p <= 1/2,
    else 1 + the Poisson's (p − 1/2)/p quantile."""
    from scipy.stats import poisson

    mean, p = np.asarray(mean, float), np.clip(np.asarray(p_any, float), 0.0, 1.0)
    positive = p > 0.5
    safe = np.where(positive, p, 1.0)
    rate = np.maximum(mean / safe - 1, 0.0)
    return np.where(positive, 1 + poisson.ppf(np.where(positive, (safe - 0.5) / safe, 0.5), rate), 0.0)


# ------------------------------------------------------------------------------------------------ metrics

def interval_coverage(low: np.ndarray, high: np.ndarray, first_day: np.ndarray, horizon_days: float,
                      unit_days: float = 7.0) -> dict[str, float]:
    """Coverage of intervals [low, high] (``unit_days`` units from the cut-off) for the time to the next purchase,
    censoring-aware: a purchase on day d after the cut-off (0-based; NaN: none in the horizon) came within
    (d + 1) days; an interval holding it is a hit. With no purchase in the horizon, an interval ending inside it
    is a miss, and one reaching past it is undecided and left out. Returns ``coverage`` over the decided rows,
    ``decided`` (their count) and ``undecided_share``."""
    low, high, first_day = (np.asarray(v, float) for v in (low, high, first_day))
    wait = (first_day + 1.0) / unit_days
    seen = np.isfinite(first_day)
    hit = seen & (low <= wait) & (wait <= high)
    decided = seen | (high * unit_days < horizon_days)
    n = int(decided.sum())
    return {"coverage": float(hit.sum() / n) if n else float("nan"), "decided": n,
            "undecided_share": float(1 - n / len(low)) if len(low) else float("nan")}


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing their mean rank."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    sv = v[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sv)) + 1]
    ends = np.r_[starts[1:], len(v)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2
    return ranks


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney statistic (ties count one half); NaN when only one class is present."""
    label = np.asarray(label, bool)
    n_pos, n_neg = label.sum(), (~label).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(np.asarray(score, float))
    return float((r[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def regression_metrics(pred: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, Pearson, Spearman and sum(pred)/sum(actual)."""
    pred, actual = np.asarray(pred, float), np.asarray(actual, float)
    if pred.shape != actual.shape or not np.isfinite(pred).all():
        raise ValueError("predictions must be finite and one per customer")
    err = pred - actual
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
            "pearson": _pearson(pred, actual), "spearman": _pearson(_ranks(pred), _ranks(actual)),
            "sum_ratio": float(pred.sum() / actual.sum()) if actual.sum() else float("nan")}


def outlook_metrics(count: np.ndarray, spend: np.ndarray, summary: pl.DataFrame, p_any: np.ndarray | None = None,
                    count_median: np.ndarray | None = None) -> dict[str, float]:
    """Count and spend metrics against the holdout, and the AUC for P(>= 1 purchase) (the count when no
    probability is given). ``count`` is the mean forecast (its MAE is ``count/mae``, its Σ ratio ``count/sum_ratio``);
    ``count_median`` the median of the model's predictive distribution, the point forecast an absolute loss asks
    for: ``count/mae_median`` (the mean's MAE where a model has no distribution)."""
    actual_count = summary["actual_count"].to_numpy()
    out = {f"count/{k}": v for k, v in regression_metrics(count, actual_count).items()}
    median = count if count_median is None else np.asarray(count_median, float)
    out["count/mae_median"] = float(np.abs(median - actual_count).mean())
    out |= {f"spend/{k}": v for k, v in regression_metrics(spend, summary["actual_spend"].to_numpy()).items()}
    out["any/auc"] = auc(count if p_any is None else p_any, actual_count > 0)
    return out
