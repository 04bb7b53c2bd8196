"""Replenishment pipeline: a machine-order log -> next-order forecasts of every machine -> ONNX bundle.

Protocol (DESIGN §4, replenishment, on a time split): the forecaster (``twins.models.replenishment_torch``) learns
from every machine's history at cut-offs every ``cutoff_step_days`` before ``params.cutoff`` (a seeded sample of
``max_training_rows`` of these (machine, cut-off) pairs when there are more), its targets watched
up to the cut-off only (a later order is censored there); it is scored, beside the naive baselines (last and mean
interval, Croston, TSB, (s, S) inference), on each machine with 3 or more orders before the cut-off: its next order
within ``horizon_days`` after it, censoring-aware (``twins.evaluate.replenishment``). Then it is refitted on every
cut-off before the run's ``as_of`` (default: after the last event) and exported; the torch-free runtime, fed each
machine's raw orders and readings, must answer as the model does. Machines need no labels: every (customer, item)
series that behaves like a machine's is one (``twins.twin.machine.machine_series``; ``actor`` is a hint).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from twins import api, paths
from twins.data.events import scan_events
from twins.data.ingest import IngestReport
from twins.data.source import SourceConfig
from twins.evaluate.replenishment import coverage, replenishment_metrics
from twins.models.replenishment import (EPOCH, UNUSABLE, History, Samples, baseline_predictions, histories,
                                       pair_samples, runtime_inputs, sample_pairs, samples)
from twins.models.replenishment_torch import ReplenishmentForecaster
from twins.pipeline import Pipeline, node
from twins.provenance import last_event, provenance

from pipelines.common import check_hyper_parameters, ingest_events, merge_params, required_date

TAGS = {"protocol": "replenishment: train before the cut-off (targets censored there), score each machine's next order after it"}
MODEL = "forecaster"
DAY_S = 86_400
DEFAULTS: dict[str, Any] = {"cutoff": None, "horizon_days": 120.0, "cutoff_step_days": 5, "warmup_days": 60,
                            "max_training_rows": 200_000, "forecaster": {}, "export": True, "detector": None,
                            "detector_threshold": 0.5}


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    p = merge_params(params, DEFAULTS, "replenishment")
    p["cutoff"] = required_date(p["cutoff"], "cutoff", "the forecast date of the holdout (e.g. 2025-09-01); the "
                                "forecaster learns from before it and is scored on the next orders after it")
    for key in ("horizon_days", "cutoff_step_days"):
        if not float(p[key]) > 0:
            raise ValueError(f"params.{key} must be > 0, got {p[key]}")
    rows = p["max_training_rows"]
    if rows is not None and not (isinstance(rows, int) and not isinstance(rows, bool) and rows >= 1):
        raise ValueError(f"params.max_training_rows must be a whole number >= 1 (or null: every (machine, cut-off) "
                         f"pair), got {rows!r}")
    check_hyper_parameters(ReplenishmentForecaster, p["forecaster"], "forecaster")
    return p


def days(when: datetime) -> float:
    """Days since the Unix epoch, the time unit of the histories."""
    return when.timestamp() / DAY_S


# --------------------------------------------------------------------------------------------- edge nodes

def load_histories(source: SourceConfig, report: IngestReport, params: dict[str, Any]) -> dict[str, History]:
    """Each machine's orders and readings (``twins.models.replenishment.histories``): the series that behave like a
    machine's (``twins.twin.machine.machine_series``: actor hints, else a detector's scores with ``params.detector``,
    else each series' regularity); at least one is needed. Readings that cannot be used are counted and printed."""
    events = scan_events(paths.events_dir(source.name))
    series = _series(events, resolve_params(params))
    skipped: dict[str, int] = {}
    hist = histories(events, series, skipped)
    if not hist:
        raise ValueError(f"source {source.name!r}: no machine orders: no row says actor 'machine' and no (customer, "
                         "item) series orders regularly enough to be a machine's (twins.twin.machine.SeriesRule); map "
                         "the actor column, set `constants: {actor: machine}` in the source config or give "
                         "params.detector (a file from `twins detect`)")
    bases = series.group_by("basis").len().sort("basis").rows()
    print(f"machine series: {len(hist):,} (" + ", ".join(f"{b} {n:,}" for b, n in bases) + ")")
    if skipped:
        print("readings left out: " + ", ".join(f"{n:,} {why} ({UNUSABLE[why]})" for why, n in sorted(skipped.items())))
    return hist


def _series(events, p: dict[str, Any]):
    """The machine series: by the detector's scores with ``params.detector``, else by actor hints and regularity."""
    from twins.twin.machine import machine_series

    if not p["detector"]:
        return machine_series(events)
    from twins.models.machine_detector import load_detector, machine_likeness

    scores = machine_likeness(load_detector(p["detector"]), events)
    return machine_series(events, scores, float(p["detector_threshold"]))


# --------------------------------------------------------------------------------------------- pure nodes

def feature_cache(hist: dict[str, History]) -> dict:
    """Features by (machine, cut-off), filled by the holdout's training rows and reused by the refit's: the same
    cut-offs give the same features (they read only what came before each)."""
    return {}


def _training_rows(hist: dict[str, History], until: float, p: dict[str, Any], cache: dict | None = None) -> Samples:
    """Every machine at cut-offs every ``cutoff_step_days`` from ``warmup_days`` after the first order to ``until``,
    targets watched up to ``until`` only; with more (machine, cut-off) pairs than ``max_training_rows``, a seeded
    uniform sample of that many (``sample_pairs``), so a large fleet's features and fit stay bounded."""
    start = min(float(h.t[0]) for h in hist.values()) + float(p["warmup_days"])
    cuts = np.arange(start, until, float(p["cutoff_step_days"]))
    machines = list(hist)
    m, c = sample_pairs(len(machines), len(cuts), p["max_training_rows"], seed=0)
    rows = pair_samples(hist, [machines[i] for i in m], cuts[c].tolist(), float(p["horizon_days"]), until=until,
                        cache=cache)
    if len(rows.T) == 0:
        raise ValueError(f"no training row before {EPOCH + timedelta(days=until):%Y-%m-%d}: no machine has 3 orders "
                         f"by then, {p['warmup_days']} days after the first order; choose a later cut-off")
    return rows


def evaluate_holdout(hist: dict[str, History], params: dict[str, Any],
                     cache: dict | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per model (the baselines and the forecaster): censoring-aware next-order metrics at the cut-off."""
    p = resolve_params(params)
    cut, horizon = days(p["cutoff"]), float(p["horizon_days"])
    last = max(float(h.t[-1]) for h in hist.values())
    if cut + horizon > last + 1:
        raise ValueError(f"params.cutoff {p['cutoff']:%Y-%m-%d} + {horizon:g} days runs past the data (last order "
                         f"{EPOCH + timedelta(days=last):%Y-%m-%d}); choose an earlier cut-off or a shorter horizon")
    test = samples(hist, list(hist), [cut], horizon)
    if len(test.T) == 0:
        raise ValueError(f"no machine has 3 orders before params.cutoff {p['cutoff']:%Y-%m-%d}; choose a later one")
    fit = _training_rows(hist, cut, p, cache)
    model = ReplenishmentForecaster(**p["forecaster"]).fit(fit.X, fit.T, fit.Q, fit.censored, fit.bound)
    out = model.predict(test.X)
    preds = {**baseline_predictions(hist, test), MODEL: (out["time"], out["quantity"])}
    rows = [{"model": name, **replenishment_metrics(t, q, test.T, test.Q, test.censored, horizon)}
            for name, (t, q) in preds.items()]
    seen = ~test.censored
    rows[-1] |= {"time_coverage": coverage(out["time_low"], out["time_high"], test.T, test.censored, horizon),
                 "quantity_coverage": coverage(out["quantity_low"][seen], out["quantity_high"][seen], test.Q[seen],
                                               test.censored[seen], horizon),
                 "training_rows": float(len(fit.T))}
    return rows, {"machines": len(test.T), "training_rows": len(fit.T)}


def fit_for_export(hist: dict[str, History], as_of: datetime | None, params: dict[str, Any],
                   cache: dict | None = None) -> dict[str, Any]:
    """The forecaster refitted on every cut-off before ``as_of`` (default: just after the last order), and its
    answers for every machine at ``as_of``."""
    p = resolve_params(params)
    last = max(float(h.t[-1]) for h in hist.values())
    when = as_of if as_of is not None else EPOCH + timedelta(days=last, microseconds=1)
    fit = _training_rows(hist, days(when), p, cache)
    model = ReplenishmentForecaster(**p["forecaster"]).fit(fit.X, fit.T, fit.Q, fit.censored, fit.bound)
    now = samples(hist, list(hist), [days(when)], float(p["horizon_days"]))
    return {"model": model, "as_of": when, "machines": now.machine, "answers": model.predict(now.X)}


def runtime_gap(bundle, hist: dict[str, History], machines: np.ndarray, as_of: datetime, out: dict[str, np.ndarray]) -> float:
    """Largest relative difference (``|a - b| / max(|b|, 1)``) between the runtime's answers, from each machine's
    raw orders and readings rebuilt as plain tuples (to the microsecond), and the model's ``out``."""
    orders, readings = runtime_inputs(hist, list(machines))
    got = bundle.forecast(orders, as_of, readings)
    pairs = {"days": "time", "days_low": "time_low", "days_high": "time_high", "quantity": "quantity",
             "quantity_low": "quantity_low", "quantity_high": "quantity_high"}
    return max(float(np.max(np.abs(np.array([a[k] for a in got]) - out[v]) / np.maximum(np.abs(out[v]), 1.0)))
               for k, v in pairs.items())


def export_bundle(source: SourceConfig, hist: dict[str, History], fitted: dict[str, Any], params: dict[str, Any]) -> str | None:
    """Write ``$TWINS_HOME/models/<source>-replenishment`` and check that the runtime, fed every machine's raw orders
    and readings, answers as the model (relative difference <= 1e-4)."""
    from twins.models.replenishment_export import export_replenishment
    from twins.runtime import load

    if not resolve_params(params)["export"]:
        return None
    out = paths.models_dir() / f"{source.name}-replenishment"
    events = scan_events(paths.events_dir(source.name)).filter(
        pl.col("event_time") < pl.lit(fitted["as_of"], pl.Datetime("us", "UTC")))
    export_replenishment(fitted["model"], out, name=out.name, overwrite=True,
                         provenance=provenance(source.name, last_event(events)))
    gap = runtime_gap(load(out), hist, fitted["machines"], fitted["as_of"], fitted["answers"])
    if gap > 1e-4:
        raise AssertionError(f"{out}: the runtime's answers differ from the model's by up to {gap:.2g} (relative)")
    return str(out)


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | time MAE (days, censoring-aware) | time MAE, observed orders | quantity MAE | censored |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['time_mae']:.2f} | {r['time_mae_observed']:.2f} | {r['quantity_mae']:.2f} | "
                     f"{r['censored_share']:.1%} |")
    return lines


# --------------------------------------------------------------------------------------------- logging edge

def log_results(rows: list[dict[str, Any]], holdout: dict[str, Any], bundle: str | None, fitted: dict[str, Any],
                report: IngestReport, source: SourceConfig, params: dict[str, Any], mlflow) -> list[str]:
    """Log the ingest, one child run per model, the table, and the bundle (registered as ``<source>-replenishment``)."""
    from pathlib import Path

    from twins import registry, tracking

    p = resolve_params(params)
    events = api.log_ingest(mlflow, source, report)
    protocol = (f"{TAGS['protocol']}; cut-off {p['cutoff']:%Y-%m-%d}, horizon {float(p['horizon_days']):g} days, "
                f"{holdout['machines']:,} machines, {holdout['training_rows']:,} training rows")
    for r in rows:
        with tracking.run("", r["model"], nested=True, tags={"model": r["model"], "dataset": source.name, **TAGS},
                          description=f"`{r['model']}` on `{source.name}`: `test/...` metrics of each machine's next "
                                      f"order after the cut-off ({protocol})."):
            mlflow.log_input(events, context="train+test")
            mlflow.log_params({"model": r["model"], "cutoff": p["cutoff"].isoformat(), "horizon_days": p["horizon_days"],
                               **({f"forecaster.{k}": v for k, v in fitted["model"].get_params().items()}
                                  if r["model"] == MODEL else {})})
            tracking.log_metrics(mlflow, {f"test/{k}": v for k, v in r.items() if isinstance(v, float)})
    table = format_table(rows)
    forecaster = rows[-1]
    mlflow.log_text("\n".join([protocol, "", *table]), "results/table.md")
    lines = [report.summary(), f"next-order metrics ({protocol}):", *table,
             f"forecaster 80 % intervals cover {forecaster['time_coverage']:.1%} of next-order times and "
             f"{forecaster['quantity_coverage']:.1%} of quantities"]
    if bundle:
        uri = registry.log_bundle(bundle, Path(bundle).name).uri
        lines.append(f"ONNX bundle (fitted on the orders before {fitted['as_of']:%Y-%m-%d}): {bundle}, registered as "
                     f"{uri}; the runtime reproduces the model's answers")
    return lines


def pipeline() -> Pipeline:
    return Pipeline("replenishment", [
        node(ingest_events, "source", "report"),
        node(load_histories, ("source", "report", "params"), "hist"),
        node(feature_cache, "hist", "cache"),
        node(evaluate_holdout, ("hist", "params", "cache"), ("rows", "holdout")),
        node(fit_for_export, ("hist", "as_of", "params", "cache"), "fitted"),
        node(export_bundle, ("source", "hist", "fitted", "params"), "bundle"),
        node(log_results, ("rows", "holdout", "bundle", "fitted", "report", "source", "params", "mlflow"), "summary_lines"),
    ])
