"""Emotion pipeline: ingest GoEmotions as message events -> baselines and fine-tuned encoders -> blend ->
thresholds per level on dev -> test metrics -> ONNX bundle with its tokenizer, checked against PyTorch.

Protocol (DESIGN §4): the official train/dev/test split; every model fits on train; the blend weight and all
thresholds (per label, per Ekman group, per sentiment group) are tuned on dev only; test is scored once.
Ekman and sentiment scores roll the 28 label probabilities up through the official mappings (a group's
probability is its members' max; its truth is "any member present").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from twins import api, paths
from twins.data.ingest import IngestReport
from twins.data.source import SourceConfig
from twins.emotion.data import TextSplit, splits_from_events
from twins.emotion.ensemble import LEVELS, LevelThresholds, blend_weight
from twins.emotion.labels import LabelSpace, load_label_space, roll_up
from twins.pipeline import Pipeline, node

from pipelines.common import merge_params

TAGS = {"protocol": "GoEmotions official train/dev/test; thresholds and blend weights tuned on dev only"}
NEURAL = {"small_scratch", "minilm_finetuned"}
BASELINES = {"tfidf_logreg", "frozen_minilm_logreg"}
DEFAULTS: dict[str, Any] = {"rows": None, "seed": 0, "models": {}, "ensemble": [], "export": None,
                            "min_label_agreement": 0.999}


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    p = merge_params(params, DEFAULTS, "emotion")
    bad = [m for m in p["models"] if m not in NEURAL | BASELINES]
    if bad:
        raise ValueError(f"params.models: unknown {bad}; available {sorted(NEURAL | BASELINES)}")
    if p["ensemble"] and (len(p["ensemble"]) != 2 or p["ensemble"][0] not in NEURAL or p["ensemble"][1] != "tfidf_logreg"
                          or any(m not in p["models"] for m in p["ensemble"])):
        raise ValueError("params.ensemble: [<a neural model in params.models>, tfidf_logreg] or []")
    if p["export"] not in (None, "ensemble", *NEURAL) or (p["export"] == "ensemble" and not p["ensemble"]):
        raise ValueError(f"params.export: 'ensemble' (needs params.ensemble), a neural model {sorted(NEURAL)}, or null")
    return p


def _fit(name: str, options: dict[str, Any], splits: dict[str, TextSplit], seed: int, experiment: str):
    train, dev = splits["train"], splits["dev"]
    if name == "tfidf_logreg":
        from twins.emotion.lexical import TfidfLogReg
        return TfidfLogReg(**options).fit(train.texts, train.y, dev.texts, dev.y)
    if name == "frozen_minilm_logreg":
        from twins.emotion.frozen import FrozenEncoderLogReg
        return FrozenEncoderLogReg(**options).fit(train.texts, train.y)
    from twins.emotion.classifier import EmotionClassifier
    checkpoints = paths.twins_home() / "checkpoints" / experiment / f"{name}_seed{seed}"
    return EmotionClassifier(**{"seed": seed, "checkpoint_dir": str(checkpoints), "progress": True, **options}).fit(
        train.texts, train.y, dev.texts, dev.y)


# --------------------------------------------------------------------------------------------- nodes

def ingest_messages(source: SourceConfig) -> IngestReport:
    return api.ingest(source, track=False)  # the parent run logs the report in log_results


def load_splits(source: SourceConfig, report: IngestReport, params: dict[str, Any]) -> tuple[dict[str, TextSplit], LabelSpace]:
    """Texts and label matrices per split from the ingested message events; the label space (emotions.txt and
    the official Ekman/sentiment mappings) from the folder of the source's first file."""
    import polars as pl

    space = load_label_space(source.resolve(source.files[0].path).parent)
    splits = splits_from_events(pl.read_parquet(report.events_path), len(space.labels))
    for split, n in (resolve_params(params)["rows"] or {}).items():
        splits[split] = splits[split].head(int(n))
    return splits, space


def fit_models(splits: dict[str, TextSplit], params: dict[str, Any], experiment: str) -> tuple[dict, dict]:
    """Fit every configured model on train; returns ({name: model}, {name: {dev, test, fit_seconds}})."""
    p = resolve_params(params)
    models, outputs = {}, {}
    for name, options in p["models"].items():
        started = time.perf_counter()
        models[name] = _fit(name, dict(options or {}), splits, p["seed"], experiment)
        fit_seconds = time.perf_counter() - started
        outputs[name] = {"dev": models[name].predict_proba(splits["dev"].texts),
                         "test": models[name].predict_proba(splits["test"].texts), "fit_seconds": fit_seconds}
    if p["ensemble"]:
        a, b = p["ensemble"]
        w = blend_weight(splits["dev"].y, outputs[a]["dev"], outputs[b]["dev"])
        outputs["ensemble"] = {split: w * outputs[a][split] + (1 - w) * outputs[b][split] for split in ("dev", "test")}
        outputs["ensemble"] |= {"weight": w, "fit_seconds": outputs[a]["fit_seconds"] + outputs[b]["fit_seconds"]}
    return models, outputs


def evaluate_models(splits: dict[str, TextSplit], space: LabelSpace, outputs: dict) -> tuple[dict, dict]:
    """Test metrics per model with thresholds tuned on dev: ({name: metrics}, {name: LevelThresholds})."""
    results, thresholds = {}, {}
    for name, out in outputs.items():
        thresholds[name] = LevelThresholds.tune(space, splits["dev"].y, out["dev"])
        results[name] = thresholds[name].evaluate(space, splits["test"].y, out["test"])
    return results, thresholds


def export_model(models: dict, outputs: dict, thresholds: dict, results: dict, splits: dict[str, TextSplit],
                 space: LabelSpace, source: SourceConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Export the chosen model as an ONNX bundle and check it: the torch-free runtime's test labels must equal
    the Python models' on at least ``min_label_agreement`` of the messages, at every level."""
    from twins.emotion.export import export_emotion
    from twins.runtime import load

    p = resolve_params(params)
    if p["export"] is None:
        return {}
    chosen = p["export"]
    neural = p["ensemble"][0] if chosen == "ensemble" else chosen
    lexical = models["tfidf_logreg"] if chosen == "ensemble" else None
    weight = outputs["ensemble"]["weight"] if chosen == "ensemble" else 1.0
    out = paths.models_dir() / f"{source.name}-{chosen}"
    metrics = {k: v for k, v in results[chosen].items() if k.startswith("macro_f1")}
    export_emotion(models[neural], space, thresholds[chosen], out, lexical=lexical, weight=weight,
                   name=f"{source.name}-{chosen}", metrics={f"test/{k}": v for k, v in metrics.items()}, overwrite=True)
    bundle = load(out)
    started = time.perf_counter()
    got = bundle.probabilities(splits["test"].texts)
    seconds = time.perf_counter() - started
    want = outputs[chosen]["test"]
    check = {"bundle": str(out), "model": chosen, "max_abs_diff/labels": float(np.abs(got["labels"] - want).max()),
             "runtime_seconds/test": seconds}
    for level in LEVELS:
        m = space.group_matrix(level)
        th = thresholds[chosen].thresholds[level]
        same = ((got[level] >= th) == (roll_up(want, m) >= th)).all(1).mean()
        check[f"label_agreement/{level}"] = float(same)
        if same < p["min_label_agreement"]:
            raise AssertionError(f"ONNX bundle {out}: {level} labels equal the Python model's on {same:.4%} of test "
                                 f"messages, below {p['min_label_agreement']:.1%}: the bundle does not reproduce the model")
    return check


def log_results(results: dict, outputs: dict, thresholds: dict, models: dict, exported: dict, report: IngestReport,
                splits: dict[str, TextSplit], space: LabelSpace, source: SourceConfig, params: dict[str, Any],
                mlflow) -> list[str]:
    """Child run per model (params, test metrics, per-label F1 table, training history), the comparison table,
    a label co-occurrence plot (truth vs prediction) and the bundle."""
    import json

    from twins import tracking
    from matplotlib.pyplot import close as plt_close

    from twins.emotion.plots import cooccurrence_png

    p = resolve_params(params)
    events = api.log_ingest(mlflow, source, report)
    for name, metrics in results.items():
        with tracking.run("", name, nested=True, tags={"model": name, "seed": str(p["seed"]), "dataset": source.name, **TAGS},
                          description=f"`{name}` on `{source.name}`, seed {p['seed']}: trained on "
                                      f"{len(splits['train'].texts):,} messages, thresholds tuned on dev; `test/...` "
                                      f"metrics on {len(splits['test'].texts):,} test messages ({TAGS['protocol']})."):
            mlflow.log_input(events, context="train+test")
            options = p["models"].get(name) or ({"blend": p["ensemble"], "weight": outputs[name].get("weight")})
            tracking.log_params(mlflow, {"model": name, "seed": p["seed"], "train_rows": len(splits["train"].texts),
                                         "test_rows": len(splits["test"].texts), **options})
            tracking.log_metrics(mlflow, {f"test/{k}": v for k, v in metrics.items()} | {"fit_seconds": outputs[name]["fit_seconds"]})
            mlflow.log_text("\n".join(per_label_table(space, metrics)), "results/per_label_f1.md")
            mlflow.log_dict({level: [float(t) for t in th] for level, th in thresholds[name].thresholds.items()},
                            "thresholds.json")
            history = getattr(models.get(name), "history_", None)
            if history:
                mlflow.log_text(json.dumps(history, indent=2), "history.json")
                for h in history:
                    mlflow.log_metrics({"dev/macro_f1": h["dev_macro_f1"], "train/loss": h["train_loss"],
                                        "train/epoch_seconds": h["train_seconds"]}, step=h["epoch"])
            th = thresholds[name].thresholds["labels"]
            fig = cooccurrence_png(space, splits["test"].y, (outputs[name]["test"] >= th).astype(np.float32))
            mlflow.log_figure(fig, "plots/label_cooccurrence.png")
            plt_close(fig)
    table = format_table(results, outputs)
    mlflow.log_text("\n".join([f"protocol: {TAGS['protocol']}", "", *table]), "results/table.md")
    lines = [report.summary(), f"test macro-F1 ({TAGS['protocol']}):", *table]
    if exported:
        import onnx
        bundle = Path(exported["bundle"])
        mlflow.log_artifacts(str(bundle), "bundle")
        mlflow.onnx.log_model(onnx.load(str(bundle / "model.onnx")), name="model")
        tracking.log_metrics(mlflow, {f"export/{k}": v for k, v in exported.items() if k not in ("bundle", "model")})
        lines.append(f"ONNX bundle ({exported['model']}): {bundle}; runtime labels = Python's on "
                     f"{exported['label_agreement/labels']:.2%} of test messages (max prob diff {exported['max_abs_diff/labels']:.1e})")
    return lines


def format_table(results: dict, outputs: dict) -> list[str]:
    lines = ["| model | macro-F1 (28 labels) | Ekman | sentiment | fit (s) |", "|---|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {m['macro_f1/labels']:.4f} | {m['macro_f1/ekman']:.4f} | {m['macro_f1/sentiment']:.4f} | "
                     f"{outputs[name]['fit_seconds']:.0f} |")
    return lines


def per_label_table(space: LabelSpace, metrics: dict) -> list[str]:
    return ["| label | test F1 |", "|---|---|", *[f"| {label} | {metrics[f'f1/{label}']:.4f} |" for label in space.labels]]


def pipeline() -> Pipeline:
    return Pipeline("emotion", [
        node(ingest_messages, "source", "report"),
        node(load_splits, ("source", "report", "params"), ("splits", "space")),
        node(fit_models, ("splits", "params", "experiment"), ("models", "outputs")),
        node(evaluate_models, ("splits", "space", "outputs"), ("results", "thresholds")),
        node(export_model, ("models", "outputs", "thresholds", "results", "splits", "space", "source", "params"), "exported"),
        node(log_results, ("results", "outputs", "thresholds", "models", "exported", "report", "splits", "space", "source",
                           "params", "mlflow"), "summary_lines"),
    ])
