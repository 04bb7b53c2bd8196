"""Purchase-outlook pipeline: ingest -> purchase days -> holdout evaluation -> refit on everything -> ONNX bundles.

Protocol (DESIGN §4, calibration-holdout): the models are fitted on the purchase days before ``params.cutoff`` and
scored on the customers first seen before it, over the next ``params.horizon_days``; persistence and rate
extrapolation in the same table. Then the exported models (``params.export``) are refitted on every purchase day
before the run's ``as_of`` (default: after the last one) and written as ONNX bundles whose torch-free runtime, fed
each customer's raw purchase days, must reproduce the models' answers; they are registered in MLflow.

Calendar: with a year or more of history before a fit's cut-off, ``seasonal_bgnbd`` and the neural outlook learn
a week-of-year profile (``params.calendar_order`` harmonics) and the ``params.holidays`` spans from the log, and
extrapolate them over the horizon; with less they stay flat and the run says so. Per-customer predictions are
written as Parquet (``$TWINS_HOME/outlook/<source>/holdout_predictions.parquet`` beside the actuals, and
``predictions.parquet`` from the exported models as of ``as_of``) and logged to MLflow. When ``as_of`` equals the
cut-off, the neural outlook of the holdout table is the one exported (trained once).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from twins import api, paths
from twins.data.events import bucket_files, bucket_of, scan_events
from twins.data.ingest import IngestReport
from twins.data.source import SourceConfig
from twins.evaluate.outlook import (COUNT_BY, SPEND, outlook_metrics, persistence, purchase_days, purchase_lines, rate_extrapolation,
                                    summarise)
from twins.models.btyd import BetaGeoModel, ModifiedBetaGeoModel, SeasonalBetaGeoModel
from twins.models.outlook_net import NeuralOutlook, day_table, horizon_weeks
from twins.pipeline import Pipeline, node
from twins.provenance import last_event, provenance
from twins.runtime.outlook import MAX_HORIZON_WEEKS
from twins.runtime.outlook_features import N_FEATURES, covariate_features, covariate_names, covariate_spec, holiday_spans
from twins.twin.outlook import fit_outlook, predict_outlook

from pipelines.common import check_hyper_parameters, ingest_events, merge_params, required_date

TAGS = {"protocol": "calibration-holdout: fit before the cut-off, score the horizon after it (purchase days)"}
BTYD = {"bgnbd": BetaGeoModel, "mbgnbd": ModifiedBetaGeoModel}
MODELS = ("persistence", "rate_extrapolation", *BTYD, "seasonal_bgnbd", "neural")
EXPORTABLE = ("bgnbd", "seasonal_bgnbd", "neural")
BUNDLE_SUFFIX = {"bgnbd": "", "seasonal_bgnbd": "-seasonal", "neural": "-net"}
DEFAULTS: dict[str, Any] = {"cutoff": None, "horizon_days": 91.0, "models": list(MODELS), "neural": {},
                            "export": ["bgnbd", "neural"], "holidays": [], "calendar_order": 3, "predictions": True,
                            "spend": "net", "covariates": [], "count_by": "day"}


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    p = merge_params(params, DEFAULTS, "outlook")
    p["cutoff"] = required_date(p["cutoff"], "cutoff", "the date the holdout starts (e.g. 2017-10-01); the models "
                                "are fitted on the purchase days before it and scored on the horizon after it")
    weeks = float(p["horizon_days"]) / 7.0
    if "neural" in [*p["models"], *p["export"]] and not (1 <= weeks <= MAX_HORIZON_WEEKS and weeks == round(weeks)):
        near = min(max(round(weeks), 1), MAX_HORIZON_WEEKS)
        raise ValueError(f"params.horizon_days must be whole weeks from 7 to {7 * MAX_HORIZON_WEEKS} days (1 to "
                         f"{MAX_HORIZON_WEEKS} weeks) for the neural outlook, got {p['horizon_days']} (e.g. {7 * near}); "
                         "or drop neural from params.models and params.export")
    if not float(p["horizon_days"]) > 0:
        raise ValueError(f"params.horizon_days must be > 0, got {p['horizon_days']}")
    for key, allowed in (("models", MODELS), ("export", EXPORTABLE)):
        bad = [m for m in p[key] if m not in allowed]
        if bad:
            raise ValueError(f"params.{key}: unknown {bad}; available {list(allowed)}")
    check_hyper_parameters(NeuralOutlook, p["neural"], "neural")
    bad = {"holidays", "calendar_order", "seasonal"} & set(p["neural"])
    if bad:
        raise ValueError(f"params.neural: set {sorted(bad)} as params.holidays / params.calendar_order (shared by "
                         "the calendar models)")
    holiday_spans(p["holidays"])
    if p["spend"] not in SPEND:
        raise ValueError(f"params.spend must be one of {list(SPEND)} (returns subtracted or left out), got {p['spend']!r}")
    if p["count_by"] not in COUNT_BY:
        raise ValueError(f"params.count_by must be one of {list(COUNT_BY)} (purchase days, or orders: basket ids), got {p['count_by']!r}")
    p["neural"] = {"verbose": True, **p["neural"], "holidays": tuple(p["holidays"]), "calendar_order": int(p["calendar_order"])}
    return p


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """The params checked before anything is read (a horizon the neural outlook cannot answer, unknown keys)."""
    return resolve_params(params)


# --------------------------------------------------------------------------------------------- edge nodes

def load_days(source: SourceConfig, report: IngestReport, params: dict[str, Any]) -> pl.DataFrame:
    """One row per customer and UTC day with purchases (or per order, ``params.count_by: order``): ``customer_id``,
    ``day``, ``spend`` (net of returns, or gross with ``params.spend: gross``)."""
    p = resolve_params(params)
    return purchase_days(scan_events(paths.events_dir(source.name)), p["spend"], p["count_by"]).collect()


# --------------------------------------------------------------------------------------------- pure nodes

def btyd(model_cls, summary: pl.DataFrame, horizon_days: float) -> tuple[tuple[np.ndarray, ...], tuple]:
    """((expected purchase days, expected spend, P(>= 1 purchase)), (count model, Gamma-Gamma)) of a BTYD count
    model with Gamma-Gamma, fitted on ``summary``'s calibration columns."""
    counts, spend = fit_outlook(summary, model_cls)
    count, expected_spend, p_any, _ = predict_outlook(summary, counts, spend, horizon_days / 7.0)
    return (count, expected_spend, p_any), (counts, spend)


def btyd_params(counts, gg) -> dict[str, float]:
    """A BTYD fit's parameters (weeks) for logging: r, alpha, a, b and Gamma-Gamma's as gg_p, gg_q, gg_gamma."""
    return {**counts.params_, **({f"gg_{k}": v for k, v in gg.params_.items()} if gg is not None else {})}


def day_number(when: datetime) -> float:
    """Days since 1970-01-01 (UTC)."""
    return when.timestamp() / 86_400


def load_attributes(source: SourceConfig, report: IngestReport, params: dict[str, Any]) -> dict[str, dict]:
    """``{customer_id: {covariate: value}}`` of ``params.covariates`` from the source's customer attribute tables
    (``customer_attributes`` in its config); empty without covariates."""
    names = resolve_params(params)["covariates"]
    if not names:
        return {}
    path = paths.events_dir(source.name) / "customers.parquet"
    table = pl.read_parquet(path) if path.exists() else pl.DataFrame({"customer_id": []})
    known = {c.removeprefix("customer_"): c for c in table.columns if c != "customer_id"}  # ingest prefixes them
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"params.covariates: {missing} not among the customer attributes of source {source.name!r} "
                         f"({sorted(known)}); add them to its customer_attributes")
    table = table.select("customer_id", *(pl.col(known[n]).alias(n) for n in names))
    return {r["customer_id"]: {n: r[n] for n in names} for r in table.iter_rows(named=True)}


def fit_neural(days: pl.DataFrame, summary: pl.DataFrame, cutoff: datetime, p: dict[str, Any],
               attributes: dict[str, dict]) -> tuple[NeuralOutlook, tuple, list[dict]]:
    """The neural outlook fitted on the purchase days before ``cutoff`` (with its calendar when a year of history
    precedes it, and the ``params.covariates`` of each customer), ``predict``'s inputs for ``summary``'s customers
    at ``cutoff``, and the covariates' encoding (``covariate_spec``)."""
    ids, code, age, spend = day_table(days, cutoff)
    rows = summary["customer_id"].cast(pl.Enum(ids)).to_physical().to_numpy()
    spec, covariates = [], None
    if p["covariates"]:
        spec = covariate_spec(p["covariates"], [attributes.get(c) or {} for c in ids])
        covariates = covariate_features(spec, [attributes.get(c) for c in ids])
    print(f"outlook: training the neural outlook on the purchase days before {cutoff:%Y-%m-%d}", flush=True)
    model = NeuralOutlook(**p["neural"]).fit(code, age, spend, horizon_weeks(float(p["horizon_days"])), day_number(cutoff),
                                             covariates)
    print(f"outlook: neural outlook trained; calendar {model.calendar_['status']}", flush=True)
    return model, model.inputs_at(code, age, spend, rows, day_number(cutoff), None if covariates is None else covariates[rows]), spec


def covariate_effects(model: NeuralOutlook, inputs: tuple, spec: list[dict], weeks: int) -> dict[str, float]:
    """Per covariate: the relative change of the mean expected purchase days when it is unknown for everyone
    (its columns set as missing), and the mean absolute relative change per customer."""
    x = inputs[0]
    base = model.predict(x, weeks, *inputs[1:])["expected_purchases"]
    out, start = {}, N_FEATURES
    for c in spec:
        width = len(covariate_names([c]))
        blank = x.copy()
        blank[:, start:start + width] = covariate_features([c], [None] * len(x))
        pred = model.predict(blank, weeks, *inputs[1:])["expected_purchases"]
        out[f"effect.{c['name']}.mean"] = float(base.mean() / max(pred.mean(), 1e-12) - 1)
        out[f"effect.{c['name']}.abs"] = float(np.mean(np.abs(base - pred) / np.maximum(pred, 1e-9)))
        start += width
    return out


def seasonal_btyd(days: pl.DataFrame, summary: pl.DataFrame, cutoff: datetime, p: dict[str, Any]) -> tuple[tuple, SeasonalBetaGeoModel]:
    """((count, spend, P(>= 1)), model) of BG/NBD + Gamma-Gamma on the calendar, for ``summary``'s customers."""
    ids, code, age, spend = day_table(days, cutoff)
    day = np.round(day_number(cutoff) - age).astype(np.int64)
    model = SeasonalBetaGeoModel(int(p["calendar_order"]), tuple(p["holidays"])).fit(code, day, spend, day_number(cutoff))
    index = np.full(len(ids), -1)
    rows = summary["customer_id"].cast(pl.Enum(ids)).to_physical().to_numpy()
    index[rows] = np.arange(len(rows))
    keep = index[code] >= 0
    out = model.predict(index[code[keep]], day[keep], spend[keep], len(rows), day_number(cutoff), float(p["horizon_days"]))
    return (out["expected_purchases"], out["expected_spend"], out["p_any_purchase"]), model


def evaluate_holdout(days: pl.DataFrame, params: dict[str, Any], attributes: dict[str, dict]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per model: count, spend and P(>= 1) metrics on the holdout, and each model's fitted parameters.
    Also the predictions ``{model: (count, spend)}`` and the ``actual`` counts and spend, for the plots."""
    p = resolve_params(params)
    cutoff, horizon = p["cutoff"], float(p["horizon_days"])
    summary = summarise(days.lazy(), cutoff, horizon)
    if summary.is_empty() or summary["actual_count"].sum() == 0:
        raise ValueError(f"params.cutoff {cutoff:%Y-%m-%d}: no customer buys both before it and in the {horizon:g} "
                         "days after it; choose a cut-off inside the data with a full horizon after it")
    preds: dict[str, tuple[np.ndarray, ...]] = {}
    fitted: dict[str, dict[str, Any]] = {}
    models: dict[str, Any] = {}
    for name in p["models"]:
        print(f"outlook: holdout, {name}", flush=True)
        if name == "persistence":
            preds[name] = (*persistence(summary), None)
        elif name == "rate_extrapolation":
            preds[name] = (*rate_extrapolation(summary, horizon), None)
        elif name in BTYD:
            preds[name], pair = btyd(BTYD[name], summary, horizon)
            fitted[name] = btyd_params(*pair)
        elif name == "seasonal_bgnbd":
            preds[name], seasonal = seasonal_btyd(days, summary, cutoff, p)
            fitted[name] = {**btyd_params(seasonal.counts_, seasonal.spend_), "calendar": seasonal.calendar_["status"],
                            **_calendar_effects(seasonal.calendar_)}
        else:
            model, inputs, spec = fit_neural(days, summary, cutoff, p, attributes)
            models[name] = (model, spec)
            out = model.predict(inputs[0], horizon_weeks(horizon), *inputs[1:])
            preds[name] = (out["expected_purchases"], out["expected_spend"], out["p_any_purchase"])
            fitted[name] = {**model.get_params(), "epochs": [len(h) for h in model.history_], "windows": model.n_windows_,
                            "calendar": model.calendar_["status"],
                            **covariate_effects(model, inputs, spec, horizon_weeks(horizon))}
    rows = [{"model": name, "customers": summary.height, **outlook_metrics(count, spend, summary, p_any),
             "params": fitted.get(name, {})} for name, (count, spend, p_any) in preds.items()]
    actual = (summary["actual_count"].to_numpy(), summary["actual_spend"].to_numpy())
    table = summary.select("customer_id", "actual_count", "actual_spend").with_columns(
        *(pl.Series(f"{name}_{kind}", v[i]) for name, v in preds.items() for i, kind in enumerate(("count", "spend"))))
    return rows, {"predictions": {k: v[:2] for k, v in preds.items()}, "actual": actual, "table": table, "models": models}


def _calendar_effects(spec: dict) -> dict[str, float]:
    """The fitted holiday effects (multipliers of the purchase rate and of the spend per day), for logging."""
    if "count" not in spec:
        return {}
    k = 2 * int(spec["order"])
    out = {}
    for i, h in enumerate(spec["holidays"]):
        out[f"holiday.{h['date']}.rate_x"] = float(np.exp(spec["count"][k + i]))
        out[f"holiday.{h['date']}.spend_x"] = float(np.exp(spec["spend"][k + i]))
    return out


def _as_of(days: pl.DataFrame, as_of: datetime | None) -> datetime:
    """The export fit's date: ``as_of``, or the start of the day after the last purchase day."""
    return as_of if as_of is not None else days["day"].max() + timedelta(days=1)


def fit_for_export(days: pl.DataFrame, as_of: datetime | None, params: dict[str, Any], holdout: dict[str, Any],
                   attributes: dict[str, dict]) -> dict[str, Any]:
    """The exported models refitted on every purchase day before ``as_of``: ``{"bgnbd": (BG/NBD, Gamma-Gamma),
    "neural": NeuralOutlook}`` (those in ``params.export``), with ``as_of`` and the summary they score. When
    ``as_of`` is the cut-off, the holdout's neural outlook is reused rather than trained again."""
    p = resolve_params(params)
    when = _as_of(days, as_of)
    summary = summarise(days.lazy(), when, float(p["horizon_days"]))
    out: dict[str, Any] = {"as_of": when, "summary": summary}
    if "bgnbd" in p["export"]:
        counts, gg = fit_outlook(summary, BetaGeoModel)
        if gg is None:
            raise ValueError("Gamma-Gamma could not be fitted (too few repeat buyers with spend, or all alike): no "
                             "BG/NBD + Gamma-Gamma bundle; drop bgnbd from params.export")
        out["bgnbd"] = (counts, gg)
    if "seasonal_bgnbd" in p["export"]:
        out["seasonal_bgnbd_answers"], out["seasonal_bgnbd"] = seasonal_btyd(days, summary, when, p)
        if out["seasonal_bgnbd"].spend_ is None:
            raise ValueError("Gamma-Gamma could not be fitted (too few repeat buyers with spend, or all alike): no "
                             "seasonal BG/NBD bundle; drop seasonal_bgnbd from params.export")
    if "neural" in p["export"]:
        if when == p["cutoff"] and "neural" in holdout["models"]:
            print("outlook: as_of is the cut-off: exporting the holdout's neural outlook (trained once)", flush=True)
            ids, code, age, spend = day_table(days, when)
            rows = summary["customer_id"].cast(pl.Enum(ids)).to_physical().to_numpy()
            out["neural"], out["covariates"] = holdout["models"]["neural"]
            covariates = covariate_features(out["covariates"], [attributes.get(c) for c in summary["customer_id"]]) if out["covariates"] else None
            out["neural_inputs"] = out["neural"].inputs_at(code, age, spend, rows, day_number(when), covariates)
        else:
            out["neural"], out["neural_inputs"], out["covariates"] = fit_neural(days, summary, when, p, attributes)
    return out


def raw_histories(source: SourceConfig, before: datetime, customers: list[str], bucket: int | None = None) -> list[list[tuple]]:
    """Each customer's lines before ``before`` as a caller of the runtime sends them: (time, amount), returns
    negative (``twins.evaluate.outlook.purchase_lines``); ``bucket``: read that bucket of the event store only."""
    events = scan_events(paths.events_dir(source.name), bucket=bucket).filter(
        pl.col("event_time") < pl.lit(before, pl.Datetime("us", "UTC")))
    by_id = purchase_lines(events.filter(pl.col("customer_id").is_in(customers)))
    return [by_id.get(c, []) for c in customers]


def export_bundles(source: SourceConfig, days: pl.DataFrame, fitted: dict[str, Any], params: dict[str, Any],
                   attributes: dict[str, dict]) -> dict[str, str]:
    """Write the ONNX bundles (``$TWINS_HOME/models/<source>-outlook[-net]``) and check that each, fed every scored
    customer's raw purchase days, gives the model's expected purchases, spend and P(>= 1 purchase) (rtol 1e-6).
    The raw lines are read bucket by bucket of the event store (a customer's all lie in one), so memory holds one
    bucket's lines as the runtime takes them, not the whole log's; the bundles' answers are kept as columns."""
    from twins.models.outlook_export import export_neural_outlook, export_outlook
    from twins.runtime import load

    p = resolve_params(params)
    when, summary, horizon = fitted["as_of"], fitted["summary"], float(p["horizon_days"])
    before = scan_events(paths.events_dir(source.name)).filter(pl.col("event_time") < pl.lit(when, pl.Datetime("us", "UTC")))
    fitted_on = provenance(source.name, last_event(before))  # the manifests' data_source, data_until
    bundles, wanted = {}, {}
    for name in p["export"]:
        out = paths.models_dir() / f"{source.name}-outlook{BUNDLE_SUFFIX[name]}"
        if name == "bgnbd":
            counts, gg = fitted["bgnbd"]
            want = dict(zip(("expected_purchases", "expected_spend", "p_any_purchase"),
                            predict_outlook(summary, counts, gg, horizon / 7.0)[:3]))
            export_outlook(counts, gg, out, horizon_days=horizon, name=out.name, overwrite=True, spend=p["spend"],
                           provenance=fitted_on, count_by=p["count_by"])
        elif name == "seasonal_bgnbd":
            model = fitted["seasonal_bgnbd"]
            want = dict(zip(("expected_purchases", "expected_spend", "p_any_purchase"), fitted["seasonal_bgnbd_answers"]))
            export_outlook(model.counts_, model.spend_, out, horizon_days=horizon, name=out.name, overwrite=True,
                           spend=p["spend"], calendar=model.calendar_, provenance=fitted_on, count_by=p["count_by"])
        else:
            model = fitted["neural"]
            want = model.predict(fitted["neural_inputs"][0], horizon_weeks(horizon), *fitted["neural_inputs"][1:])
            export_neural_outlook(model, out, horizon_days=horizon, name=out.name, overwrite=True, spend=p["spend"],
                                  provenance=fitted_on, covariates=fitted["covariates"], count_by=p["count_by"])
        bundles[name], wanted[name] = out, want
    loaded = {name: load(out) for name, out in bundles.items()}
    customers = summary["customer_id"]
    n_buckets = len(bucket_files(paths.events_dir(source.name)))
    where = bucket_of(customers, n_buckets).to_numpy()
    parts: dict[str, list[pl.DataFrame]] = {name: [] for name in bundles}
    for b in range(n_buckets):
        rows = np.flatnonzero(where == b)
        if not len(rows):
            continue
        ids = customers.gather(rows).to_list()
        histories = raw_histories(source, when, ids, bucket=b)
        for name, bundle in loaded.items():
            extra = {"attributes": [attributes.get(c) for c in ids]} if name == "neural" else {}
            got = pl.DataFrame(bundle.score(histories, when, **extra), infer_schema_length=None)
            parts[name].append(got.with_columns(_row=pl.Series(rows, dtype=pl.Int64)))
        del histories
    for name, out in bundles.items():
        got = pl.concat(parts.pop(name), how="vertical_relaxed").sort("_row").drop("_row")
        for key in ("expected_purchases", "expected_spend", "p_any_purchase"):
            if not np.allclose(got[key].to_numpy(), wanted[name][key], rtol=1e-6):
                raise AssertionError(f"{out}: the runtime's {key} differs from the model's: the bundle does not "
                                     "reproduce it")
        fitted.setdefault("answers", {})[name] = got
    return {name: str(out) for name, out in bundles.items()}


def calibration_plot(pred: np.ndarray, actual: np.ndarray, title: str, path: Path) -> Path:
    """Mean predicted vs mean actual by decile of the prediction, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(pred, kind="mergesort")
    bins = [b for b in np.array_split(order, 10) if len(b)]
    p = [pred[b].mean() for b in bins]
    a = [actual[b].mean() for b in bins]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(p, a, "o-", label="deciles")
    hi = max(max(p), max(a))
    ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="y = x")
    ax.set(xlabel="mean predicted", ylabel="mean actual", title=title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | count MAE | count RMSE | Σpred/Σactual | Spearman | spend MAE | spend RMSE | spend Σ ratio | AUC P(≥1) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['count/mae']:.4f} | {r['count/rmse']:.4f} | {r['count/sum_ratio']:.3f} | "
                     f"{r['count/spearman']:.3f} | {r['spend/mae']:.3f} | {r['spend/rmse']:.3f} | "
                     f"{r['spend/sum_ratio']:.3f} | {r['any/auc']:.3f} |")
    return lines


def write_predictions(source: SourceConfig, holdout: dict[str, Any], fitted: dict[str, Any], params: dict[str, Any]) -> dict[str, str]:
    """Per-customer predictions as Parquet under ``$TWINS_HOME/outlook/<source>/``: ``holdout_predictions.parquet``
    (actual count and spend in the horizon after the cut-off and each model's predictions) and
    ``predictions.parquet`` (each exported model's answers from its bundle as of ``as_of``: columns
    ``<model>_<answer>``); none when ``params.predictions`` is false."""
    if not resolve_params(params)["predictions"]:
        return {}
    out = paths.twins_home() / "outlook" / source.name
    out.mkdir(parents=True, exist_ok=True)
    files = {"holdout": out / "holdout_predictions.parquet", "predictions": out / "predictions.parquet"}
    holdout["table"].write_parquet(files["holdout"])
    answers = fitted.get("answers", {})
    table = fitted["summary"].select("customer_id").with_columns(as_of=pl.lit(fitted["as_of"], pl.Datetime("us", "UTC")))
    for name, answered in answers.items():
        frame = answered.drop("horizon_days")
        table = table.with_columns(frame.rename({c: f"{name}_{c}" for c in frame.columns}))
    table.write_parquet(files["predictions"])
    print(f"outlook: per-customer predictions written: {files['holdout']}, {files['predictions']}", flush=True)
    return {k: str(v) for k, v in files.items()}


# --------------------------------------------------------------------------------------------- logging edge

def log_results(rows: list[dict[str, Any]], holdout: dict[str, Any], bundles: dict[str, str], fitted: dict[str, Any],
                predictions: dict[str, str], report: IngestReport, source: SourceConfig, params: dict[str, Any],
                mlflow) -> list[str]:
    """Log the ingest, one child run per model (fitted parameters, holdout metrics, calibration plots), the table
    and the bundles (registered as ``<source>-outlook``, ``-outlook-seasonal``, ``-outlook-net``)."""
    import tempfile

    from twins import registry, tracking

    p = resolve_params(params)
    events = api.log_ingest(mlflow, source, report)
    protocol = (f"{TAGS['protocol']}; cut-off {p['cutoff']:%Y-%m-%d}, horizon {float(p['horizon_days']):g} days, "
                f"{rows[0]['customers']:,} customers first seen before the cut-off")
    with tempfile.TemporaryDirectory() as tmp:
        for r in rows:
            with tracking.run("", r["model"], nested=True, tags={"model": r["model"], "dataset": source.name, **TAGS},
                              description=f"`{r['model']}` on `{source.name}`: `test/...` metrics of the horizon "
                                          f"after the cut-off ({protocol})."):
                mlflow.log_input(events, context="train+test")
                mlflow.log_params({"model": r["model"], "cutoff": p["cutoff"].isoformat(), "horizon_days": p["horizon_days"],
                                   **{f"{r['model']}.{k}": v for k, v in r["params"].items()}})
                tracking.log_metrics(mlflow, {f"test/{k}": v for k, v in r.items() if isinstance(v, float)})
                for kind, pred, actual in zip(("count", "spend"), holdout["predictions"][r["model"]], holdout["actual"]):
                    png = calibration_plot(pred, actual, f"{source.name} {r['model']} {kind}", Path(tmp) / f"{r['model']}-{kind}.png")
                    mlflow.log_artifact(str(png), "calibration")
    table = format_table(rows)
    mlflow.log_text("\n".join([protocol, "", *table]), "results/table.md")
    for path in predictions.values():
        mlflow.log_artifact(path, "predictions")
    registered = [registry.log_bundle(path, Path(path).name).uri for path in bundles.values()]
    return [report.summary(), f"holdout metrics ({protocol}):", *table,
            *(f"ONNX bundle ({name}, fitted on the purchase days before {fitted['as_of']:%Y-%m-%d}): {path}, registered as {uri}; "
              "the runtime reproduces the model's answers" for (name, path), uri in zip(bundles.items(), registered)),
            *(f"per-customer predictions ({kind}): {path}" for kind, path in predictions.items())]


def pipeline() -> Pipeline:
    return Pipeline("outlook", [
        node(check_params, "params", "checked_params"),
        node(ingest_events, "source", "report"),
        node(load_days, ("source", "report", "params"), "days"),
        node(load_attributes, ("source", "report", "params"), "attributes"),
        node(evaluate_holdout, ("days", "params", "attributes"), ("rows", "holdout")),
        node(fit_for_export, ("days", "as_of", "params", "holdout", "attributes"), "fitted"),
        node(export_bundles, ("source", "days", "fitted", "params", "attributes"), "bundles"),
        node(write_predictions, ("source", "holdout", "fitted", "params"), "predictions"),
        node(log_results, ("rows", "holdout", "bundles", "fitted", "predictions", "report", "source", "params", "mlflow"),
             "summary_lines"),
    ])
