"""Next-basket pipeline: ingest -> twins -> baselines per seed -> evaluate -> export the chosen model to ONNX.

Protocol (DESIGN §4, Reality Check): per user the last basket is the target and the earlier ones the history;
users split at random 72/8/20 per seed; models fit on the training users; metrics on the test users.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from twins import paths
from twins.data.events import baskets_by_customer, scan_events
from twins.data.ingest import IngestReport, ingest
from twins.data.source import SourceConfig
from twins.evaluate.metrics import evaluate_rankings
from twins.evaluate.next_basket import split_history_target, split_users
from twins.models.topfreq import GPTopFreq, GTopFreq, PTopFreq
from twins.pipeline import Pipeline, node
from twins.twin.customer import TwinParams, build_customer_twins
from twins.twin.store import Snapshot, TwinStore

TAGS = {"protocol": "next-basket: last basket target, users random 72/8/20 per seed"}
MODELS = {"g_topfreq": GTopFreq, "p_topfreq": PTopFreq, "gp_topfreq": GPTopFreq}
DEFAULTS: dict[str, Any] = {"seeds": [0, 1, 2], "fractions": [0.72, 0.08, 0.20], "ks": [10, 20],
                            "models": list(MODELS), "export": {"model": "gp_topfreq", "seed": 0, "max_history_items": 1024}}


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"params: unknown key(s) {sorted(unknown)}; next_basket takes {sorted(DEFAULTS)}")
    p = DEFAULTS | params
    bad = [m for m in p["models"] if m not in MODELS]
    if bad:
        raise ValueError(f"params.models: unknown {bad}; available {sorted(MODELS)}")
    return p


# --------------------------------------------------------------------------------------------- edge nodes

def ingest_events(source: SourceConfig) -> IngestReport:
    return ingest(source, paths.events_dir(source.name))


def build_twins(source: SourceConfig, as_of, twin_params: TwinParams, report: IngestReport) -> Snapshot:
    twins = build_customer_twins(scan_events(paths.events_dir(source.name), with_attributes=bool(twin_params.category_column)),
                                 as_of, twin_params)
    return TwinStore(paths.store_dir()).write(twins, source.name, "customer", as_of, params=vars(twin_params))


def load_baskets(source: SourceConfig, report: IngestReport) -> dict[str, list[list[str]]]:
    return baskets_by_customer(scan_events(paths.events_dir(source.name)))


# --------------------------------------------------------------------------------------------- pure nodes

def evaluate_baselines(baskets: dict[str, list[list[str]]], params: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, seed): test metrics of each baseline fitted on that seed's training users."""
    p = resolve_params(params)
    histories, targets, _ = split_history_target(baskets)
    rows = []
    for seed in p["seeds"]:
        split = split_users(histories, seed, p["fractions"])
        train = {u: histories[u] for u in split["train"]}
        test = {u: histories[u] for u in split["test"]}
        for name in p["models"]:
            model = MODELS[name]().fit(train)
            recs = model.recommend(test, max(p["ks"]))
            metrics = evaluate_rankings(recs, {u: targets[u] for u in test}, test, ks=p["ks"])
            rows.append({"model": name, "seed": seed, **metrics})
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and (sample) std over seeds per model and metric."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        metrics = [k for k in mine[0] if k not in ("model", "seed", "n_users")]
        out[model] = {k: (statistics.fmean(r[k] for r in mine),
                          statistics.stdev(r[k] for r in mine) if len(mine) > 1 else 0.0) for k in metrics}
    return out


def format_table(summary: dict[str, dict[str, tuple[float, float]]], ks: list[int]) -> list[str]:
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "phr")]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for model, metrics in summary.items():
        lines.append(f"| {model} | " + " | ".join(f"{metrics[c][0]:.4f} ± {metrics[c][1]:.4f}" for c in cols) + " |")
    return lines
