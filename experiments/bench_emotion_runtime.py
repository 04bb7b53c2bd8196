"""Emotion runtime speed and the int8 check; the table goes to BENCHMARKS.md.

    python -m experiments.bench_emotion_runtime      # after python -m experiments.emotion

Scores the GoEmotions test split with the exported bundle (fp32), builds its dynamic-int8 variant and keeps it
only if its test macro-F1 (same dev-tuned thresholds) drops by <= 0.01. Latency per message at batch 1 on one
thread (p50, p99 over the first 1,000 test messages, text in -> probabilities out: cleaning, tokenisation,
TF-IDF features and onnxruntime) and throughput at batch 64 (messages grouped by length, as batch scoring does), against PyTorch eager running the fine-tuned
MiniLM (tokenisation + encoder + head, no TF-IDF branch) from its checkpoint on one thread.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from experiments.report import write_section
from twins import api, paths

SOURCE = "configs/sources/goemotions.yaml"


def latency(score, texts: list[str]) -> tuple[float, float, float]:
    """(p50 ms, p99 ms) at batch 1 over the first 1,000 texts, and messages/s at batch 64 over all, texts
    grouped by length."""
    for t in texts[:20]:
        score([t])
    times = []
    for t in texts[:1000]:
        started = time.perf_counter()
        score([t])
        times.append((time.perf_counter() - started) * 1000)
    by_length = sorted(texts, key=len)  # batch scoring groups similar lengths (less padding), as the runtime does
    started = time.perf_counter()
    for i in range(0, len(by_length), 64):
        score(by_length[i:i + 64])
    rate = len(texts) / (time.perf_counter() - started)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), rate


def torch_scorer(checkpoint: Path, max_length: int):
    import torch

    from twins.emotion.classifier import EmotionNet
    from twins.emotion.encoder import Encoder, pretrained_dir
    from twins.emotion.tokenize import encode, load_tokenizer
    from twins.runtime.text import pad

    torch.set_num_threads(1)
    net = EmotionNet(Encoder.pretrained(), 28, 0.1)
    net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["net"])
    net.eval()
    tokenizer = load_tokenizer(pretrained_dir() / "tokenizer.json", max_length)

    def score(texts: list[str]) -> np.ndarray:
        ids, mask = pad(encode(tokenizer, texts))
        with torch.no_grad():
            return torch.sigmoid(net(torch.from_numpy(ids), torch.from_numpy(mask))).numpy()
    return score


def main() -> None:
    import polars as pl

    from twins.emotion.data import splits_from_events
    from twins.emotion.quantize import quantize_bundle
    from twins.evaluate.emotion import macro_f1
    from twins.runtime import load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=paths.models_dir() / "goemotions-ensemble")
    ap.add_argument("--checkpoint", type=Path,
                    default=paths.twins_home() / "checkpoints/goemotions_emotion/minilm_finetuned_seed0/best.pt")
    args = ap.parse_args()
    report = api.ingest(SOURCE, track=False)
    test = splits_from_events(pl.read_parquet(report.events_path), 28)["test"]
    fp32 = load(args.bundle, threads=1)
    int8_dir = quantize_bundle(args.bundle, args.bundle.with_name(args.bundle.name + "-int8"))
    int8 = load(int8_dir, threads=1)
    rows, f1 = [], {}
    for name, bundle in (("onnxruntime fp32 (bundle)", fp32), ("onnxruntime int8", int8)):
        p = bundle.probabilities(test.texts)["labels"]
        f1[name] = macro_f1(test.y, (p >= bundle.thresholds["labels"]).astype(np.float32))
        rows.append((name, f1[name], *latency(lambda t, b=bundle: b.probabilities(t), test.texts)))
    rows.append(("PyTorch eager (MiniLM part only)", None,
                 *latency(torch_scorer(args.checkpoint, fp32.max_length), test.texts)))
    drop = f1["onnxruntime fp32 (bundle)"] - f1["onnxruntime int8"]
    keep = drop <= 0.01
    if not keep:
        shutil.rmtree(int8_dir)
    table = ["| runtime | test macro-F1 | p50 ms (batch 1) | p99 ms (batch 1) | messages/s (batch 64) |", "|---|---|---|---|---|"]
    table += [f"| {n} | {'' if f is None else f'{f:.4f}'} | {p50:.2f} | {p99:.2f} | {rate:,.0f} |" for n, f, p50, p99, rate in rows]
    body = "\n".join([
        f"Bundle `{args.bundle.name}` ({fp32.manifest['preprocessing']['max_length']}-token truncation); one intra-op "
        f"thread; {len(test.texts):,} GoEmotions test messages, latency over the first 1,000 (text in, probabilities out).",
        "", *table, "",
        f"int8 macro-F1 drop {drop:+.4f}: " + (f"kept (≤ 0.01) as `{int8_dir.name}`." if keep else "over 0.01, not shipped (folder removed)."),
    ])
    write_section("emotion-runtime", "Emotion runtime: latency, throughput, int8 check", "python -m experiments.bench_emotion_runtime",
                  "GoEmotions test split (../shared/data/goemotions)", body)
    print(body)


if __name__ == "__main__":
    main()
