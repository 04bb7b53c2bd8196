"""Emotion scoring in the twin pipeline (``twins emotions``' ``score_messages``) against the runtime's own batch
throughput, and the int8 bundle's quality through the same pipeline; the table goes to BENCHMARKS.md.

    python -m experiments.bench_emotion_pipeline                  # the trained bundle (python -m experiments.emotion)
    python -m experiments.bench_emotion_pipeline --stand-in       # no trained bundle: a stand-in of the same shape

Messages: the first ``--messages`` GoEmotions test comments as message events (ingested with
configs/sources/goemotions.yaml). One intra-op thread; each figure is the best of ``--repeats`` runs, the paths
interleaved, after one warm-up pass (the machine is shared). Paths, each over the same messages, text in ->
probabilities out:

* runtime, batch 64: ``EmotionBundle.probabilities`` on every text at once (the runtime sorts by token length and
  runs batches of 64) -- the target;
* pipeline, before: the loop ``score_messages`` ran before this benchmark (256-message chunks in log order, each
  sorted and padded by itself, at batch 256), reproduced here as the baseline;
* pipeline: ``twins.twin.emotion.score_messages`` as it is, events in -> scored table out (labels list included).

Quality: macro-F1 of the pipeline's fine labels (the bundle's dev-tuned thresholds) against the labels of every
test comment, fp32 and int8 (``twins.emotion.quantize``), and the pipeline's largest probability difference from the runtime's.

``--stand-in`` (when no trained bundle exists): pretrained all-MiniLM-L6-v2, frozen, with a logistic head per
label fitted on ``--train`` training comments (folded into the exported network's head), blended with TF-IDF
logistic regressions fitted on the same comments, weight and thresholds tuned on dev -- the shipped bundle's
graph (MiniLM + TF-IDF, 64 tokens), so the same speed, but not its quality: its F1 is not a result. Built once
into ``$TWINS_HOME/models/goemotions-standin`` and reused (delete the folder to rebuild).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import polars as pl

from experiments.report import write_section
from twins import api, paths, tracking

SOURCE = "configs/sources/goemotions.yaml"
GOEMOTIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "goemotions"
LEVELS = ("ekman", "sentiment")
STAND_IN_NOTE = (" Measured with the stand-in because no trained bundle exists here (none under $TWINS_HOME/models or in "
                 "MLflow; training it takes about 1 h on 2 free cores): same graph, so the same speed. Its int8 drop is its "
                 "own, not the shipped bundle's (+0.0073, \"Emotion runtime\"): its head is a logistic regression on "
                 "standardised embeddings folded into the network (weights divided by each feature's spread), likely what "
                 "per-tensor int8 rounds coarsely (twins.emotion.quantize warns of heads with extreme weights).")


def stand_in_bundle(out: Path, train, dev, space) -> Path:
    """The stand-in bundle (module docstring) at ``out``."""
    import torch

    from twins.emotion.classifier import EmotionClassifier
    from twins.emotion.encoder import pretrained_dir
    from twins.emotion.ensemble import LevelThresholds, blend_weight
    from twins.emotion.export import export_emotion
    from twins.emotion.frozen import FrozenEncoderLogReg
    from twins.emotion.lexical import TfidfLogReg

    frozen = FrozenEncoderLogReg(max_length=64).fit(train.texts, train.y)
    lexical = TfidfLogReg(C=4.0).fit(train.texts, train.y)
    p_frozen, p_lexical = frozen.predict_proba(dev.texts), lexical.predict_proba(dev.texts)
    weight = blend_weight(dev.y, p_frozen, p_lexical)
    thresholds = LevelThresholds.tune(space, dev.y, weight * p_frozen + (1 - weight) * p_lexical)
    clf = EmotionClassifier(encoder="minilm", max_length=64)
    clf.net_, clf.tokenizer_path_ = clf._build(len(space.labels)), str(pretrained_dir() / "tokenizer.json")
    with torch.no_grad():  # logits = coef @ (x - mean) / scale + intercept, on the mean-pooled embedding x
        coef = torch.as_tensor(frozen.coef_ / frozen.scale_, dtype=torch.float32)
        clf.net_.head.weight.copy_(coef)
        clf.net_.head.bias.copy_(torch.as_tensor(frozen.intercept_, dtype=torch.float32) - coef @ torch.as_tensor(frozen.mean_))
    return export_emotion(clf, space, thresholds, out, lexical=lexical, weight=weight, name="goemotions-standin",
                          overwrite=True)


def chunked_before(events: pl.LazyFrame, bundle, chunk: int = 256) -> dict[str, np.ndarray]:
    """The baseline: probabilities as the pre-fix ``score_messages`` computed them (256-message chunks)."""
    texts = events.filter(pl.col("event_type") == "message").select(pl.col("text").fill_null("")).collect()["text"].to_list()
    parts = [bundle.probabilities(texts[s:s + chunk], batch_size=chunk) for s in range(0, len(texts), chunk)]
    return {level: np.concatenate([p[level] for p in parts]) for level in ("labels", *LEVELS)}


def timed(fn, *args) -> tuple[object, float]:
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def label_matrix(labels: list[list[str]], names: list[str]) -> np.ndarray:
    index = {name: j for j, name in enumerate(names)}
    y = np.zeros((len(labels), len(names)), np.float32)
    for i, row in enumerate(labels):
        y[i, [index[n] for n in row]] = 1.0
    return y


def measure(bundle, events: pl.LazyFrame, texts: list[str], repeats: int, test: pl.DataFrame, y: np.ndarray) -> dict:
    """Throughputs (messages/s, best of ``repeats`` interleaved runs after a warm-up pass) of the three paths over
    ``events`` (their ``texts``), the pipeline's largest difference from the runtime's probabilities there, and its
    macro-F1 over the whole ``test`` split (labels ``y``)."""
    from twins.evaluate.emotion import macro_f1
    from twins.twin.emotion import score_messages

    paths = {"runtime": lambda: bundle.probabilities(texts), "before": lambda: chunked_before(events, bundle),
             "pipeline": lambda: score_messages(events, bundle)}
    runtime = bundle.probabilities(texts)  # warm-up: every batch shape once
    seconds = dict.fromkeys(paths, np.inf)
    for _ in range(repeats):
        for name, path in paths.items():
            out, took = timed(path)
            seconds[name] = min(seconds[name], took)
            if name == "pipeline":
                scored = out
    diff = max(float(np.abs(scored.select(f"{level}_{g}" for g in bundle.groups[level]).to_numpy() - runtime[level]).max())
               for level in LEVELS)
    f1 = macro_f1(y, label_matrix(score_messages(test.lazy(), bundle)["labels"].to_list(), bundle.labels))
    return {name: len(texts) / took for name, took in seconds.items()} | {"macro_f1": f1, "max_diff": diff}


def main() -> None:
    from twins.emotion.data import splits_from_events
    from twins.emotion.labels import load_label_space
    from twins.emotion.quantize import quantize_bundle
    from twins.runtime import load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=paths.models_dir() / "goemotions-ensemble")
    ap.add_argument("--stand-in", action="store_true", help="build and measure the stand-in bundle (docstring)")
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train", type=int, default=8000, help="training comments for the stand-in")
    args = ap.parse_args()
    report = api.ingest(SOURCE, track=False)
    events = pl.read_parquet(report.events_path)
    splits = splits_from_events(events, 28)
    if args.stand_in:
        args.bundle = paths.models_dir() / "goemotions-standin"
        if not args.bundle.exists():
            stand_in_bundle(args.bundle, splits["train"].head(args.train), splits["dev"], load_label_space(GOEMOTIONS))
    elif not args.bundle.exists():
        raise SystemExit(f"error: no bundle at {args.bundle}; train it (python -m experiments.emotion) or pass --stand-in")
    test = events.filter(pl.col("split") == "test")
    timed_events = test.head(args.messages)
    texts = timed_events["text"].fill_null("").to_list()
    int8_dir = quantize_bundle(args.bundle, args.bundle.with_name(args.bundle.name + "-int8"))
    results = {name: measure(load(path, threads=1), timed_events.lazy(), texts, args.repeats, test, splits["test"].y)
               for name, path in (("fp32", args.bundle), ("int8", int8_dir))}
    drop = results["fp32"]["macro_f1"] - results["int8"]["macro_f1"]
    table = [("| bundle | runtime, batch 64 (msg/s) | pipeline before (msg/s) | pipeline (msg/s) | pipeline / runtime | "
              "macro-F1 (pipeline labels) | max abs(pipeline - runtime) |"), "|---|---|---|---|---|---|---|"]
    table += [f"| {name} | {r['runtime']:,.0f} | {r['before']:,.0f} | {r['pipeline']:,.0f} | {r['pipeline'] / r['runtime']:.2f} | "
              f"{r['macro_f1']:.4f} | {r['max_diff']:.1e} |" for name, r in results.items()]
    kind = ("stand-in (frozen MiniLM + TF-IDF, not the trained bundle: its F1 is not a result)" if args.stand_in
            else "trained")
    summary = (f"Bundle `{args.bundle.name}` ({kind}); one intra-op thread; the first {len(texts):,} GoEmotions test "
               f"comments as message events (macro-F1: all {test.height:,}); best of {args.repeats} runs; protocol in "
               "the module docstring.")
    int8 = (f"int8 macro-F1 drop through the pipeline: {drop:+.4f} (limit 0.01). The pipeline's probabilities are the "
            "runtime's (last column), so a bundle's int8 check in \"Emotion runtime\" holds for `twins emotions` unchanged.")
    if args.stand_in:
        int8 += STAND_IN_NOTE
    body = "\n".join([summary, "", *table, "", int8])
    with tracking.run("bench-emotion-pipeline", "emotion-pipeline", tags={"dataset": "goemotions"}) as mlflow:
        mlflow.log_params({"bundle": args.bundle.name, "messages": len(texts), "stand_in": args.stand_in})
        mlflow.log_metrics({f"{name}/{k}": v for name, r in results.items() for k, v in r.items()} | {"int8_f1_drop": drop})
    write_section("emotion-pipeline", "Emotion scoring in the pipeline: throughput against the runtime",
                  "python -m experiments.bench_emotion_pipeline" + (" --stand-in" if args.stand_in else ""),
                  "GoEmotions test split (../shared/data/goemotions)", body)
    print(body)


if __name__ == "__main__":
    main()
