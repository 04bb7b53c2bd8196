"""The purchase outlook of every customer twin as of a date: expected purchase days and spend in a horizon,
P(alive) and churn risk, and the time to the next purchase with an interval, from BG/NBD + Gamma-Gamma
(``model="bgnbd"``) or the neural outlook (``model="neural"``, ``twins.models.outlook_net``).

Time to next purchase, given the customer is alive: with the purchase rate's posterior Gamma(r + x, α + T), the
waiting time W is Lomax-distributed, P(W > w) = ((α+T)/(α+T+w))^(r+x), so its q-quantile is
(α+T)((1−q)^(−1/(r+x)) − 1). The twin carries the median and the 10%–90% interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from twins.evaluate.outlook import purchase_days, summarise

if TYPE_CHECKING:  # the models import torch: only the fit needs them (a fresh process of outlook_inputs never)
    from twins.models.btyd import BetaGeoModel, GammaGammaModel, ModifiedBetaGeoModel

    CountModel = BetaGeoModel | ModifiedBetaGeoModel

#: Shrinkage used when the unpenalised BG/NBD is not identified by the data (few customers, no sign of dropout).
FALLBACK_PENALIZER = 0.01


@dataclass(frozen=True)
class OutlookParams:
    horizon_days: float = 91.0    # 13 weeks
    unit_days: float = 7.0        # the models' time unit
    interval: float = 0.8         # central probability of the time-to-next-purchase interval
    model: str = "bgnbd"          # bgnbd | neural
    neural_members: int = 3       # networks averaged by the neural outlook
    neural_max_rows: int | None = 1_000_000  # training windows the neural outlook samples (None: all)


MODELS = ("bgnbd", "neural")


def check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"outlook model must be one of {MODELS}, got {model!r}")


def waiting_time_quantile(q: float | np.ndarray, r: float, alpha: float, x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """q-quantile of the time to the next purchase of an alive customer (model time units)."""
    return (alpha + T) * ((1.0 - np.asarray(q)) ** (-1.0 / (r + x)) - 1.0)


def fit_outlook(summary: pl.DataFrame, count_model: type[CountModel] | None = None
                ) -> tuple[CountModel, GammaGammaModel | None]:
    """Fit a BTYD count model (default ``BetaGeoModel``) on a calibration summary
    (``twins.evaluate.outlook.summarise``), with a small penalty when the data leave it unidentified, and
    Gamma-Gamma on the repeat buyers, with the same penalty when their spend leaves it unidentified (None when they
    are too few for it)."""
    from twins.models.btyd import BetaGeoModel, ConvergenceError, GammaGammaModel

    count_model = count_model or BetaGeoModel
    x, t_x, T = (summary[c].to_numpy() for c in ("x", "t_x", "T"))
    if not (x > 0).any():
        raise ValueError("no repeat purchases in the calibration period: purchase rates cannot be estimated")
    try:
        counts = count_model().fit(x, t_x, T)
    except ConvergenceError:
        counts = count_model(penalizer=FALLBACK_PENALIZER).fit(x, t_x, T)
    m = summary["m"].fill_null(0.0).to_numpy()
    repeat = (x > 0) & (m > 0)
    try:
        try:
            return counts, GammaGammaModel().fit(x[repeat], m[repeat])
        except ConvergenceError:  # spend too uniform between customers for a finite q: the penalty keeps it finite
            return counts, GammaGammaModel(penalizer=FALLBACK_PENALIZER).fit(x[repeat], m[repeat])
    except (ValueError, ConvergenceError):
        return counts, None


def predict_outlook(summary: pl.DataFrame, counts: CountModel, spend: GammaGammaModel | None,
                    t: float, per_day: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(expected purchase days, expected spend, P(>= 1 purchase), P(alive)) over ``t`` model time units. Spend
    per purchase day is Gamma-Gamma's (the population mean where the repeat mean m <= 0), or without a Gamma-Gamma
    model ``per_day`` (default: the calibration mean spend per purchase day of ``summary``'s customers)."""
    x, t_x, T = (summary[c].to_numpy() for c in ("x", "t_x", "T"))
    m = summary["m"].fill_null(0.0).to_numpy()
    count = np.asarray(counts.expected_purchases(t, x, t_x, T), float)
    if spend is None:
        per_day = summary["spend_cal"].sum() / summary["n_days"].sum() if per_day is None else per_day
        per_day = np.full(len(x), per_day)
    else:
        per_day = np.asarray(spend.expected_spend_per_transaction(np.where(m > 0, x, 0), np.maximum(m, 0.0)), float)
    return (count, count * per_day, np.asarray(counts.p_at_least_one(t, x, t_x, T), float),
            np.asarray(counts.p_alive(x, t_x, T), float))


SUMMARY_COLUMNS = ("customer_id", "x", "t_x", "T", "m", "spend_cal", "n_days")


@dataclass(frozen=True)
class OutlookFit:
    """The population-level part of the outlook, fitted once on every customer's summary: BG/NBD and Gamma-Gamma
    (``model="bgnbd"``, with ``per_day``, the mean spend per purchase day, for want of Gamma-Gamma), or the neural
    outlook's answers for every customer (``model="neural"``: its networks learn from the whole population)."""

    as_of: datetime
    params: OutlookParams
    counts: CountModel | None = None
    spend: GammaGammaModel | None = None
    per_day: float = float("nan")
    answers: pl.DataFrame | None = None


def outlook_inputs(events: pl.LazyFrame, as_of: datetime, params: OutlookParams | None = None) -> pl.DataFrame:
    """Per customer of ``events`` with a purchase before ``as_of``: the summary the outlook is fitted on and applied
    to (``SUMMARY_COLUMNS``), or for the neural outlook the purchase days (``customer_id, day, spend``); sorted, so
    that the inputs of buckets concatenated and sorted are those of the whole log."""
    p = params or OutlookParams()
    check_model(p.model)
    as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=timezone.utc)
    # purchase days in order before any sum: the same values whatever the threads or the bucketing
    # (collected: polars drops a sort that only feeds a group-by)
    days = purchase_days(events.filter(pl.col("event_time") < as_of)).sort("customer_id", "day").collect(engine="in-memory")
    if p.model == "neural":
        return days.select("customer_id", "day", "spend")
    return summarise(days.lazy(), as_of, p.horizon_days, p.unit_days).select(SUMMARY_COLUMNS)


def fit_population(inputs: list[pl.DataFrame], as_of: datetime, params: OutlookParams | None = None) -> OutlookFit:
    """The outlook's population-level fit from every bucket's ``outlook_inputs`` (in any order: they are sorted
    by customer first, so the fit does not depend on how the customers were split)."""
    p = params or OutlookParams()
    as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=timezone.utc)
    key = ["customer_id", "day"] if p.model == "neural" else ["customer_id"]
    frames = [f for f in inputs if f.height]
    data = pl.concat(frames).sort(key) if frames else inputs[0] if inputs else pl.DataFrame()
    if data.height == 0:
        raise ValueError(f"no purchases before {as_of.isoformat()}: nothing to fit the outlook on")
    if p.model == "neural":
        customers = data.select("customer_id").unique(maintain_order=True)
        return OutlookFit(as_of, p, answers=_neural_outlook(data, customers, as_of, p))
    counts, spend = fit_outlook(data)
    fit = OutlookFit(as_of, p, counts, spend, float(data["spend_cal"].sum() / data["n_days"].sum()))
    apply_outlook(data.head(1), fit)  # a fit that cannot answer (Gamma-Gamma's q <= 1, say) fails here, once
    return fit


def apply_outlook(inputs: pl.DataFrame, fit: OutlookFit) -> pl.DataFrame:
    """``customer_outlook``'s columns for the customers of ``inputs`` (one bucket's ``outlook_inputs``)."""
    p, as_of = fit.params, fit.as_of
    if p.model == "neural":
        return inputs.select("customer_id").unique(maintain_order=True).join(fit.answers, on="customer_id", how="left")
    count, expected_spend, p_any, p_alive = predict_outlook(inputs, fit.counts, fit.spend, p.horizon_days / p.unit_days,
                                                            fit.per_day)
    x, T = inputs["x"].to_numpy(), inputs["T"].to_numpy()
    r, alpha = fit.counts.params_["r"], fit.counts.params_["alpha"]
    lo, mid, hi = (waiting_time_quantile(q, r, alpha, x, T) for q in ((1 - p.interval) / 2, 0.5, (1 + p.interval) / 2))
    out = {"expected_purchases": count, "expected_spend": expected_spend, "p_alive": p_alive, "p_alive_end": p_alive,
           "p_any_purchase": p_any, "next_low": lo, "next_median": mid, "next_high": hi}
    return _columns(inputs.select("customer_id"), out, as_of, p.unit_days, p.horizon_days)


def customer_outlook(events: pl.LazyFrame, as_of: datetime, params: OutlookParams | None = None) -> pl.DataFrame:
    """Per customer with a purchase before ``as_of``: ``expected_purchases``, ``expected_spend``, ``p_alive``,
    ``churn_risk`` (gone by the end of the horizon: 1 − P(alive) for BG/NBD, whose customers drop out only right
    after a purchase), ``p_any_purchase`` in the horizon, and ``next_purchase`` (median, given alive) with
    ``next_purchase_low`` / ``next_purchase_high`` (null beyond 100 years). Models are fitted on events before
    ``as_of`` only: ``outlook_inputs``, ``fit_population`` and ``apply_outlook`` on one bucket, the whole log."""
    p = params or OutlookParams()
    inputs = outlook_inputs(events, as_of, p)
    return apply_outlook(inputs, fit_population([inputs], as_of, p))


def _neural_outlook(days: pl.DataFrame, customers: pl.DataFrame, as_of: datetime, p: OutlookParams) -> pl.DataFrame:
    """``customer_outlook``'s columns from ``NeuralOutlook`` fitted on the purchase days before ``as_of``."""
    from twins.models.outlook_net import NeuralOutlook, day_table, features_at, horizon_weeks

    ids, code, age, spend = day_table(days, as_of)
    weeks = horizon_weeks(p.horizon_days)
    model = NeuralOutlook(n_members=p.neural_members, max_rows=p.neural_max_rows).fit(code, age, spend, weeks)
    rows = customers["customer_id"].cast(pl.Enum(ids)).to_physical().to_numpy()
    out = model.predict(features_at(code, age, spend, rows), weeks)
    return _columns(customers, out, as_of, 7.0, 7.0 * weeks)


def _columns(customers: pl.DataFrame, out: dict[str, np.ndarray], as_of: datetime, unit_days: float,
             horizon_days: float) -> pl.DataFrame:
    """The twin's outlook columns from a model's answers (waiting times in ``unit_days``; churn risk is
    1 − ``p_alive_end``); a next purchase further than 100 years out (or never) is null."""
    def times(waits: np.ndarray) -> pl.Series:
        return pl.Series([as_of + timedelta(days=float(v) * unit_days) if v * unit_days <= 36_525 else None for v in waits],
                         dtype=pl.Datetime("us", "UTC"))

    return customers.with_columns(
        expected_purchases=pl.Series(out["expected_purchases"]), expected_spend=pl.Series(out["expected_spend"]),
        p_alive=pl.Series(out["p_alive"]), churn_risk=pl.Series(1.0 - out["p_alive_end"]),
        p_any_purchase=pl.Series(out["p_any_purchase"]), next_purchase=times(out["next_median"]),
        next_purchase_low=times(out["next_low"]), next_purchase_high=times(out["next_high"]),
        outlook_horizon_days=pl.lit(horizon_days),
    )
