"""Next-basket pipeline: ingest -> twins -> baselines per seed -> evaluate -> export the chosen model to ONNX.

Protocol (DESIGN §4, Reality Check): per user the last basket is the target and the earlier ones the history;
users split at random 72/8/20 per seed; models fit on the training users; metrics on the test users.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from twins import api, paths
from twins.data.events import baskets_by_customer, scan_events
from twins.data.ingest import IngestReport
from twins.data.source import SourceConfig
from twins.evaluate.metrics import evaluate_rankings
from twins.evaluate.next_basket import split_history_target, split_users
from twins.models.nbr_net import NeuralNextBasket
from twins.models.rerank import CandidateReranker
from twins.models.tifuknn import TIFUKNN, tune_tifuknn
from twins.models.upcf import UPCF, tune_upcf
from twins.models.topfreq import GPTopFreq, GTopFreq, PTopFreq
from twins.pipeline import Pipeline, node
from twins.provenance import last_event, provenance
from twins.twin.customer import TwinParams
from twins.twin.store import Snapshot

from pipelines.common import ingest_events, merge_params

TAGS = {"protocol": "next-basket: last basket target"}  # the parent run's; log_results sets the full one
#: name -> estimator factory. "_rc" variants break ties between a user's items by first purchase, as the
#: Reality Check code does; the others by global popularity (the exportable form).
MODELS = {"g_topfreq": GTopFreq, "p_topfreq": PTopFreq, "gp_topfreq": GPTopFreq,
          "p_topfreq_rc": lambda: PTopFreq(tie_break="first"), "gp_topfreq_rc": lambda: GPTopFreq(tie_break="first"),
          "tifuknn": TIFUKNN}
#: models that use the validation users: TIFU-KNN's and UP-CF@r's grids (DEFAULT_GRID in their modules), the neural model's
#: epoch and early stopping; the re-ranker is listed for its TIFU-KNN candidates' defaults
TUNED = {"tifuknn_tuned", "upcf_tuned", "reranker", "neural"}
EXPORTABLE = {"gp_topfreq", "neural"}
#: ``split: column`` keeps a source's own user split: its ``split`` column (train / validate / test), as the DNNTSP
#: Ta-Feng file ships; the seeds then vary only the models' randomness
SPLIT_NAMES = {"train": "train", "validate": "valid", "valid": "valid", "validation": "valid", "test": "test"}
DEFAULTS: dict[str, Any] = {"seeds": [0, 1, 2], "fractions": [0.72, 0.08, 0.20], "ks": [10, 20], "split": "random",
                            "models": list(MODELS), "neural": {},
                            "export": {"model": "gp_topfreq", "seed": 0, "k": 100, "max_history_items": 1024}}


#: keys of a result row that are not metrics: the fitted model's hyper-parameters and the neural model's epochs
NOT_METRICS = ("model", "seed", "n_users", "params", "history")


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    p = merge_params(params, DEFAULTS, "next_basket")
    bad = [m for m in p["models"] if m not in MODELS and m not in TUNED]
    if bad:
        raise ValueError(f"params.models: unknown {bad}; available {sorted([*MODELS, *TUNED])}")
    p["export"] = DEFAULTS["export"] | (params.get("export") or {})
    p["neural"] = dict(params.get("neural") or {})
    if p["split"] not in ("random", "column"):
        raise ValueError(f"params.split: {p['split']!r}; use 'random' (72/8/20 per seed) or 'column' (the source's split column)")
    if p["export"]["model"] not in EXPORTABLE:
        raise ValueError(f"params.export.model: {p['export']['model']!r} cannot be exported; exportable: {sorted(EXPORTABLE)}")
    return p


def protocol(p: dict[str, Any]) -> str:
    """The protocol of a run with resolved params ``p``, as its tables and MLflow tags state it."""
    if p["split"] == "column":
        return ("next-basket: last basket target, the source's own train / validate / test users (fixed; the seeds "
                "vary the models' randomness only)")
    return f"next-basket: last basket target, users random {'/'.join(f'{100 * f:g}' for f in p['fractions'])} per seed"


def _split_all(baskets: dict[str, list[list[str]]], seed: int, fractions,
               fixed: dict[str, str] | None = None) -> dict[str, tuple[dict, dict]]:
    """{train|valid|test: (histories, targets)} for one seed, or for the source's own split when ``fixed``
    ({customer: train|valid|test}) is given."""
    histories, targets, _ = split_history_target(baskets)
    if fixed:
        users = {name: [u for u in histories if fixed.get(u) == name] for name in ("train", "valid", "test")}
    else:
        users = split_users(histories, seed, fractions)
    return {name: ({u: histories[u] for u in group}, {u: targets[u] for u in group}) for name, group in users.items()}


def _fit(name: str, parts: dict[str, tuple[dict, dict]], seed: int, neural: dict[str, Any]):
    """Fit model ``name`` on the training users; tuned models pick hyper-parameters on the validation users.
    ``neural``: NeuralNextBasket hyper-parameters from the config (the seed is the split's)."""
    train = parts["train"][0]
    if name == "neural":
        return NeuralNextBasket(**{"seed": seed, **neural}).fit(*parts["train"], *parts["valid"])
    if name == "tifuknn_tuned":
        best, _ = tune_tifuknn(train, *parts["valid"])
        return TIFUKNN(**best).fit(train)
    if name == "upcf_tuned":
        best, _ = tune_upcf(train, *parts["valid"])
        return UPCF(**best).fit(train)
    if name == "reranker":
        return CandidateReranker().fit(*parts["train"])
    return MODELS[name]().fit(train)


# --------------------------------------------------------------------------------------------- edge nodes

def build_twins(source: SourceConfig, as_of, twin_params: TwinParams, report: IngestReport) -> Snapshot:
    return api.build(source, as_of, twin_params, track=False)


def load_baskets(source: SourceConfig, report: IngestReport) -> dict[str, list[list[str]]]:
    return baskets_by_customer(scan_events(paths.events_dir(source.name)))


def load_user_split(source: SourceConfig, report: IngestReport, params: dict[str, Any]) -> dict[str, str]:
    """{customer: train|valid|test} from the events' ``split`` column when ``params.split`` is ``column``, else {}."""
    import polars as pl

    if resolve_params(params)["split"] != "column":
        return {}
    events = scan_events(paths.events_dir(source.name))
    if "split" not in events.collect_schema().names():
        raise ValueError(f"params.split is 'column' but source {source.name!r} has no 'split' column; add it to the "
                         "source's extra_columns or use split: random")
    pairs = events.select("customer_id", "split").unique().collect()
    bad = sorted(set(pairs["split"].to_list()) - set(SPLIT_NAMES))
    if bad:
        raise ValueError(f"source {source.name!r}: split column values {bad} unknown; use {sorted(SPLIT_NAMES)}")
    if pairs["customer_id"].n_unique() != pairs.height:
        raise ValueError(f"source {source.name!r}: a customer is in more than one split; fix the split column")
    return {c: SPLIT_NAMES[v] for c, v in pairs.select("customer_id", pl.col("split")).iter_rows()}


# --------------------------------------------------------------------------------------------- pure nodes

def evaluate_baselines(baskets: dict[str, list[list[str]]], user_split: dict[str, str],
                       params: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """One row per (model, seed): test metrics of each model fitted on that seed's training users (and, for
    tuned models, with hyper-parameters chosen on its validation users). Also returns the fitted export model
    (``params.export``: model and seed), or ``None`` when that pair is not among the runs."""
    p = resolve_params(params)
    rows, exported = [], None
    for seed in p["seeds"]:
        parts = _split_all(baskets, seed, p["fractions"], user_split)
        test, targets = parts["test"]
        for name in p["models"]:
            started = time.perf_counter()
            model = _fit(name, parts, seed, p["neural"])
            fit_seconds = time.perf_counter() - started
            metrics = evaluate_rankings(model.recommend(test, max(p["ks"])), targets, test, ks=p["ks"])
            rows.append({"model": name, "seed": seed, **metrics, "fit_seconds": fit_seconds, "params": model.get_params(),
                         **({"best_epoch": model.best_epoch_, "history": model.history_, "seconds_per_epoch":
                             statistics.fmean(h["train_seconds"] for h in model.history_)} if name == "neural" else {})})
            if (name, seed) == (p["export"]["model"], p["export"]["seed"]):
                exported = model
    return rows, exported


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and (sample) std over seeds per model and metric."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        metrics = [k for k in mine[0] if k not in NOT_METRICS and all(k in r for r in mine)]
        out[model] = {k: (statistics.fmean(r[k] for r in mine),
                          statistics.stdev(r[k] for r in mine) if len(mine) > 1 else 0.0) for k in metrics}
    return out


def format_table(summary: dict[str, dict[str, tuple[float, float]]], ks: list[int], seeds: int = 2) -> list[str]:
    """Markdown lines: mean ± std per model and metric (the mean alone for one seed)."""
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "ndcg_min", "phr", "repeat_recall", "explore_recall")]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for model, metrics in summary.items():
        lines.append(f"| {model} | " + " | ".join(f"{metrics[c][0]:.4f}" + (f" ± {metrics[c][1]:.4f}" if seeds > 1 else "")
                                                  for c in cols) + " |")
    return lines


# --------------------------------------------------------------------------------------------- export + logging

def export_model(source: SourceConfig, baskets: dict[str, list[list[str]]], user_split: dict[str, str], fitted: Any,
                 params: dict[str, Any]) -> dict[str, Any]:
    """Export the fitted export model (refitted here if the evaluation did not run it) and check that the
    torch-free runtime's test Recall@K equals the estimator's on the same input (the ranking half of DESIGN §6;
    value parity runs in the export). The bundles know the training items only and ignore others in a history, so
    the estimator is fed the histories without unknown items too; its recall on full histories is reported beside
    it."""
    from twins.models.nbr_net_export import export_nbr_net
    from twins.models.topfreq_torch import export_gp_topfreq
    from twins.runtime import load

    p = resolve_params(params)
    e = p["export"]
    parts = _split_all(baskets, e["seed"], p["fractions"], user_split)
    test, targets = parts["test"]
    model = fitted if fitted is not None else _fit(e["model"], parts, e["seed"], p["neural"])
    k = min(p["ks"])
    full = evaluate_rankings(model.recommend(test, k), targets, test, ks=[k])
    vocabulary = set(model.items_) if e["model"] == "neural" else model.popularity_
    known = {u: [[i for i in b if i in vocabulary] for b in h] for u, h in test.items()}
    expected = evaluate_rankings(model.recommend(known, k), targets, test, ks=[k])
    out = paths.models_dir() / f"{source.name}-{e['model']}"
    metrics = {f"test/recall@{k}": expected[f"recall@{k}"]}
    fitted_on = provenance(source.name, last_event(scan_events(paths.events_dir(source.name))))  # every event
    if e["model"] == "neural":
        export_nbr_net(model, out, k=e["k"], name=out.name, metrics=metrics, overwrite=True, provenance=fitted_on)
    else:
        export_gp_topfreq(model, out, k=e["k"], max_history_items=e["max_history_items"], name=out.name,
                          metrics=metrics, overwrite=True, provenance=fitted_on)
    users = list(test)
    got = load(out).recommend([test[u] for u in users], k=k)
    onnx_metrics = evaluate_rankings({u: [i for i, _ in r] for u, r in zip(users, got)}, targets, test, ks=[k])
    if onnx_metrics[f"recall@{k}"] != expected[f"recall@{k}"]:
        raise AssertionError(f"ONNX recall@{k} {onnx_metrics[f'recall@{k}']} != the estimator's "
                             f"{expected[f'recall@{k}']} on the same histories: the bundle does not reproduce the model")
    return {"bundle": str(out), "model": e["model"], "seed": e["seed"], f"recall@{k}": expected[f"recall@{k}"],
            f"onnx_recall@{k}": onnx_metrics[f"recall@{k}"], f"full_history_recall@{k}": full[f"recall@{k}"]}


def log_results(rows: list[dict[str, Any]], exported: dict[str, Any], report: IngestReport, snapshot: Snapshot,
                source: SourceConfig, params: dict[str, Any], mlflow) -> list[str]:
    """Log ingest counts, twins, per-(model, seed) child runs (test metrics under the same names on each, the events
    linked as their dataset), the mean ± std table and the ONNX bundle."""
    from twins import registry, tracking

    p = resolve_params(params)
    events = api.log_ingest(mlflow, source, report)
    mlflow.log_metric("twins", snapshot.manifest["rows"])
    mlflow.log_dict(snapshot.manifest, "twins/manifest.json")
    for r in rows:
        tuned = ", hyper-parameters chosen on its validation users" if r["model"] in TUNED else ""
        with tracking.run("", f"{r['model']}-seed{r['seed']}", nested=True,
                          tags={"model": r["model"], "seed": str(r["seed"]), "dataset": source.name,
                                "protocol": protocol(p)},
                          description=f"`{r['model']}` on `{source.name}`, seed {r['seed']}: fitted on the seed's "
                                      f"training users{tuned}; `test/...` metrics on its {r['n_users']:,} test users "
                                      f"({protocol(p)})."):
            mlflow.log_input(events, context="train+test")
            # the fitted model's hyper-parameters: for tuned models, what the validation users chose
            mlflow.log_params({"model": r["model"], "seed": r["seed"], "fractions": str(p["fractions"]),
                               **{f"{r['model']}.{k}": v for k, v in r["params"].items()}})
            timing = ("fit_seconds", "seconds_per_epoch", "best_epoch")
            tracking.log_metrics(mlflow, {(f"train/{k}" if k in timing else f"test/{k}"): v for k, v in r.items()
                                          if k not in ("model", "seed", "params", "history")})
            for epoch in r.get("history", []):  # learning curves, one step per epoch
                tracking.log_metrics(mlflow, {"train/loss": epoch["train_loss"], "train/epoch_seconds": epoch["train_seconds"],
                                              "valid/recall@10": epoch["valid_recall@10"]}, step=epoch["epoch"])
    summary = summarise(rows)
    table = format_table(summary, p["ks"], len(p["seeds"]))
    mlflow.set_tag("protocol", protocol(p))
    mlflow.log_text("\n".join([f"protocol: {protocol(p)}; seeds {p['seeds']}", "", *table]), "results/table.md")
    bundle = Path(exported["bundle"])
    registered = registry.log_bundle(bundle, bundle.name)  # mlflow.onnx model + bundle files, a new registered version
    tracking.log_metrics(mlflow, {f"export/{k}": v for k, v in exported.items() if "recall" in k})
    k = min(p["ks"])
    return [report.summary(), f"twins: {snapshot.manifest['rows']:,} -> {snapshot.path}",
            (f"test metrics, mean ± std over seeds {p['seeds']}" if len(p["seeds"]) > 1 else
             f"test metrics, seed {p['seeds'][0]}") + f" ({protocol(p)}):", *table,
            f"ONNX bundle ({exported['model']}, seed {exported['seed']}): {bundle}, registered as {registered.uri}; "
            f"runtime recall@{k} {exported['onnx_recall@' + str(k)]:.4f} = estimator's"]


def pipeline() -> Pipeline:
    return Pipeline("next_basket", [
        node(ingest_events, "source", "report"),
        node(build_twins, ("source", "as_of", "twin_params", "report"), "snapshot"),
        node(load_baskets, ("source", "report"), "baskets"),
        node(load_user_split, ("source", "report", "params"), "user_split"),
        node(evaluate_baselines, ("baskets", "user_split", "params"), ("rows", "fitted")),
        node(export_model, ("source", "baskets", "user_split", "fitted", "params"), "exported"),
        node(log_results, ("rows", "exported", "report", "snapshot", "source", "params", "mlflow"), "summary_lines"),
    ])
