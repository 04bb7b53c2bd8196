"""What the learned models cost at a retailer's size, on generated logs (``experiments.retail_log``): time, peak
memory and bytes only. The logs are synthetic, so nothing here says anything about quality.

    python -m experiments.scale_models /work/big/retail100k /work/big/retail1m

Each step of each log runs in its own process under ``/usr/bin/time -v`` (its peak RSS) at one thread:

* ``nbr``: the log's lines -> each customer's baskets in time order (polars; lines with a null time or quantity or
  a negative price dropped, as ``twins ingest`` quarantines them; a basket is an order), the Reality Check protocol's
  users (>= 2 baskets, the last one the target) split 72/8/20 with seed 0; ``NeuralNextBasket`` (default
  hyper-parameters) on the training users: its setup (vocabulary, neighbour index of at most ``max_users``
  users, examples), ``--steps`` training batches with their features built per batch (``steps_per_epoch``; the
  epoch's time is projected from them), the neighbour features alone for as many batches, the export (bundle
  bytes, ONNX parity checked) and the bundle's top-10 for one test customer (raw history in) p50 / p99 over 500.
* ``outlook``: the customers' purchase days; the training windows at the cut-off 13 weeks before the log's end
  (``twins.models.outlook_net.training_windows``: its time and rows); ``NeuralOutlook`` with one member for one
  epoch on a seeded sample of ``OUTLOOK_ROWS`` windows (``max_rows``; the fit builds the windows again first).
  The default fit is ``n_members`` (5) x up to ``max_epochs`` of these epochs.

Logged to the MLflow experiment ``scale-models`` (a run per log); the table goes to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from experiments.bench_nbr_runtime import times_ms
from experiments.report import write_section

STEPS = 40
N_LATENCY = 500
HORIZON_WEEKS = 13
OUTLOOK_ROWS = 1_000_000
MODELS = ("nbr", "outlook")


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def scan_lines(log: Path):
    """The log's usable lines (polars LazyFrame): a time, a quantity and a non-negative price."""
    import polars as pl

    files = sorted(log.glob("transactions_*.parquet")) or sorted(log.glob("transactions_*.csv"))
    if not files:
        raise FileNotFoundError(f"{log}: no transactions_*.parquet or .csv; write one with experiments.retail_log")
    if files[0].suffix == ".csv":
        lf = pl.scan_csv(files, schema_overrides={"timestamp": pl.String, "qty": pl.Float64, "unit_price": pl.Float64})
        lf = lf.with_columns(pl.col("timestamp").str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False))
    else:
        lf = pl.scan_parquet(files)
    return lf.filter(pl.col("timestamp").is_not_null() & pl.col("qty").is_not_null() & (pl.col("unit_price") >= 0))


def load_baskets(log: Path) -> dict[str, list[list[int]]]:
    """{customer: [basket, ...]} oldest first, an order's distinct items as integer codes."""
    import polars as pl

    orders = (scan_lines(log).with_columns(pl.col("sku").cast(pl.Categorical).to_physical().cast(pl.Int64))
              .group_by("order_id").agg(pl.col("customer_id").first(), pl.col("timestamp").min(),
                                        pl.col("sku").unique(maintain_order=True))
              .sort("customer_id", "timestamp", "order_id")
              .group_by("customer_id", maintain_order=True).agg(pl.col("sku"))).collect()
    return dict(zip(orders["customer_id"].to_list(), orders["sku"].to_list()))


def nbr_step(log: Path, steps: int) -> dict[str, Any]:
    import torch

    from twins.evaluate.next_basket import split_history_target, split_users
    from twins.models.nbr_net import NeuralNextBasket
    from twins.models.nbr_net_export import NEIGHBOURS_FILE, export_nbr_net
    from twins.runtime import load
    from twins.runtime.next_basket_features import network_inputs

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    started = time.perf_counter()
    histories, targets, _ = split_history_target(load_baskets(log))
    split = split_users(histories, 0)
    out["baskets_s"], out["baskets_rss_gib"] = time.perf_counter() - started, _rss_gib()
    train = split["train"]
    model = NeuralNextBasket(seed=0, max_epochs=1, steps_per_epoch=steps)
    started = time.perf_counter()
    model.fit({u: histories[u] for u in train}, {u: targets[u] for u in train})
    fit_s, trained_s = time.perf_counter() - started, model.history_[0]["train_seconds"]
    n_examples = len(train)  # targets_per_user 1: one example per training user
    out |= {"customers": len(histories), "train_users": len(train), "items": len(model.items_),
            "index_users": model.neighbours_.n_users, "index_nnz": len(model.neighbours_.vectors[1]),
            "setup_s": fit_s - trained_s, "step_s": trained_s / steps, "steps": steps,
            "epoch_batches": -(-n_examples // model.batch_size),
            "fit_rss_gib": _rss_gib()}
    out["epoch_projected_s"] = out["step_s"] * out["epoch_batches"]
    rows = model._indices({u: histories[u] for u in train[:steps * model.batch_size]})
    started = time.perf_counter()
    for s in range(0, len(rows), model.batch_size):
        model.neighbours_.context(rows[s:s + model.batch_size])
    out["features_step_s"] = (time.perf_counter() - started) / max(1, -(-len(rows) // model.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = export_nbr_net(model, Path(tmp) / "bundle")
        out["export_s"] = time.perf_counter() - started
        out["bundle_bytes"] = sum(f.stat().st_size for f in path.iterdir())
        out["neighbours_bytes"] = (path / NEIGHBOURS_FILE).stat().st_size
        out["onnx_bytes"] = (path / "model.onnx").stat().st_size
        bundle = load(path, threads=1)
        test = [[[str(i) for i in basket] for basket in histories[u]] for u in split["test"][:N_LATENCY]]
        encoded = [bundle._encode(h) for h in test]
        feeds = [network_inputs([r], len(bundle.vocabulary), bundle.max_baskets) for r in encoded]
        contexts = [bundle.neighbours.context([r]) for r in encoded]
        stages = {"": (bundle.recommend_one, test), "context_": (lambda r: bundle.neighbours.context([r]), encoded),
                  "graph_": (bundle.run, [f | {"context": c} for f, c in zip(feeds, contexts)])}
        for name, (fn, args) in stages.items():
            times = times_ms(fn, args)
            out[f"{name}p50_ms"], out[f"{name}p99_ms"] = float(np.percentile(times, 50)), float(np.percentile(times, 99))
    out["n_latency"] = len(test)
    return out


def outlook_step(log: Path) -> dict[str, Any]:
    import polars as pl
    import torch

    from twins.models.outlook_net import NeuralOutlook, day_table, training_windows

    torch.set_num_threads(1)
    started = time.perf_counter()
    days = (scan_lines(log).group_by("customer_id", pl.col("timestamp").dt.truncate("1d").alias("day"))
            .agg(spend=(pl.col("qty") * pl.col("unit_price")).sum())
            .with_columns(pl.col("day").dt.replace_time_zone("UTC"))).collect()
    cutoff = days["day"].max() + timedelta(days=1) - timedelta(weeks=HORIZON_WEEKS)
    ids, code, age, spend = day_table(days, cutoff)
    del days
    out = {"customers": len(ids), "purchase_days": len(code), "days_s": time.perf_counter() - started,
           "days_rss_gib": _rss_gib()}
    started = time.perf_counter()
    out["windows"] = len(training_windows(code, age, spend, HORIZON_WEEKS).count)
    out |= {"windows_s": time.perf_counter() - started, "windows_rss_gib": _rss_gib()}
    model = NeuralOutlook(n_members=1, max_epochs=1, seasonal=False, max_rows=OUTLOOK_ROWS, seed=0)
    started = time.perf_counter()
    model.fit(code, age, spend, HORIZON_WEEKS)
    out |= {"fit_s": time.perf_counter() - started, "fit_rows": model.n_windows_, "fit_rss_gib": _rss_gib()}
    return out


STEP_FUNCTIONS = {"nbr": lambda log, args: nbr_step(log, args.steps), "outlook": lambda log, args: outlook_step(log)}


def run_step(model: str, log: Path, steps: int) -> dict[str, Any]:
    """``model``'s step on ``log`` in a child process under /usr/bin/time -v: its answer and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        answer = Path(tmp) / "out.json"
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "experiments.scale_models", "--step", model,
               "--steps", str(steps), "--json", str(answer), str(log)]
        env = os.environ | {"OMP_NUM_THREADS": "1", "TWINS_THREADS": "1", "POLARS_MAX_THREADS": "1"}
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - started
        peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
        if done.returncode != 0:  # reported in the table (e.g. killed for memory), the other steps still run
            print(f"step {model} on {log} failed:\n{done.stderr[-4000:]}", file=sys.stderr)
            out = {"failed": f"exit {done.returncode}"}
        else:
            out = json.loads(answer.read_text())
    return out | {"peak_rss_gib": int(peak.group(1)) / 2**20 if peak else float("nan"), "wall_s": wall}


def _size(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def table(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    logs = list(results)
    head = "| | " + " | ".join(f"{results[g]['manifest']['customers']:,} customers" for g in logs) + " |"
    lines = [head, "|---|" + "---|" * len(logs)]

    def row(label: str, fmt) -> None:
        cells = []
        for g in logs:
            try:
                cells.append(fmt(results[g]))
            except KeyError:
                failed = [f"{m} {r['failed']}" for m, r in results[g].items() if isinstance(r, dict) and "failed" in r]
                cells.append("failed: " + ", ".join(failed) if failed else "not run")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("log lines / orders / items", lambda r: f"{r['manifest']['lines']:,} / {r['manifest']['orders']:,} / "
                                                f"{r['manifest']['items']:,}")
    def n(r: dict) -> dict:
        return r["nbr"]

    row("next basket: users (>= 2 baskets) / training / items seen", lambda r: f"{n(r)['customers']:,} / "
        f"{n(r)['train_users']:,} / {n(r)['items']:,}")
    row("next basket: baskets from the log (s)", lambda r: f"{n(r)['baskets_s']:.0f}")
    row("next basket: setup: vocabulary, neighbour index, examples (s)", lambda r: f"{n(r)['setup_s']:.0f}")
    row("next basket: neighbour index users / non-zeros", lambda r: f"{n(r)['index_users']:,} / {n(r)['index_nnz']:,}")
    row("next basket: one training batch of 128 (s; features built in it)", lambda r: f"{n(r)['step_s']:.2f}")
    row("next basket: of which neighbour features (s)", lambda r: f"{n(r)['features_step_s']:.3f}")
    row("next basket: one epoch, projected from the batches (min)",
        lambda r: f"{n(r)['epoch_projected_s'] / 60:,.0f} ({n(r)['epoch_batches']:,} batches)")
    row("next basket: peak RSS of the step (GiB)", lambda r: f"{n(r)['peak_rss_gib']:.1f}")
    row("next basket: bundle (model.onnx + neighbours.npz + manifest)",
        lambda r: f"{_size(n(r)['bundle_bytes'])} ({_size(n(r)['onnx_bytes'])} + {_size(n(r)['neighbours_bytes'])})")
    row("next basket: export with parity check (s)", lambda r: f"{n(r)['export_s']:.0f}")
    row("next basket: runtime top-10, one customer, p50 / p99 (ms)",
        lambda r: f"{n(r)['p50_ms']:.2f} / {n(r)['p99_ms']:.2f}")
    row("next basket: of which neighbour context / ONNX graph, p50 (ms)",
        lambda r: f"{n(r)['context_p50_ms']:.2f} / {n(r)['graph_p50_ms']:.2f}")
    def o(r: dict) -> dict:
        return r["outlook"]

    row("outlook: customers / purchase days", lambda r: f"{o(r)['customers']:,} / {o(r)['purchase_days']:,}")
    row("outlook: purchase days from the log (s)", lambda r: f"{o(r)['days_s']:.0f}")
    row("outlook: training windows / building them (s)", lambda r: f"{o(r)['windows']:,} / {o(r)['windows_s']:.0f}")
    row("outlook: fit: windows, then 1 member x 1 epoch on a sample (s)",
        lambda r: f"{o(r)['fit_s']:.0f} ({o(r)['fit_rows']:,} rows)")
    row("outlook: peak RSS of the step (GiB)", lambda r: f"{o(r)['peak_rss_gib']:.1f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", type=Path, help="folders written by experiments.retail_log")
    ap.add_argument("--steps", type=int, default=STEPS, help="next-basket training batches timed")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {MODELS}")
    ap.add_argument("--outlook-logs", nargs="+", type=Path,
                    help="logs for the outlook step instead of LOGS (where the largest does not fit)")
    ap.add_argument("--step", choices=MODELS, help=argparse.SUPPRESS)  # one step in this process (the child)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        args.json.write_text(json.dumps(STEP_FUNCTIONS[args.step](args.logs[0], args)))
        return
    from twins import tracking

    results: dict[str, dict[str, Any]] = {}
    models = args.models.split(",")
    logs = list(dict.fromkeys([*args.logs, *(args.outlook_logs or [])]))
    for log in logs:
        manifest = json.loads((log / "manifest.json").read_text())
        results[str(log)] = {"manifest": manifest}
        with tracking.run("scale-models", f"scale-{log.name}", tags={"dataset": log.name, "protocol": "cost only"}) as mlflow:
            mlflow.log_params({"log": str(log), "customers": manifest["customers"], "lines": manifest["lines"],
                               "items": manifest["items"], "steps": args.steps})
            for model in models:
                if log not in ((args.outlook_logs or args.logs) if model == "outlook" else args.logs):
                    continue
                got = run_step(model, log, args.steps)
                results[str(log)][model] = got
                print(model, log, json.dumps(got), flush=True)
                tracking.log_metrics(mlflow, {f"{model}/{k}": float(v) for k, v in got.items()
                                              if isinstance(v, (int, float))})
    lines = table(results)
    growth = ""
    if len(args.logs) >= 2 and "nbr" in models and not any("failed" in results[str(g)]["nbr"] for g in args.logs[:2]):
        a, b = (results[str(g)] for g in args.logs[:2])
        ratio = b["manifest"]["customers"] / a["manifest"]["customers"]
        growth = (f"From {a['manifest']['customers']:,} to {b['manifest']['customers']:,} customers (x{ratio:.0f}): "
                  f"next-basket peak RSS x{b['nbr']['peak_rss_gib'] / a['nbr']['peak_rss_gib']:.1f}, setup "
                  f"x{b['nbr']['setup_s'] / a['nbr']['setup_s']:.1f}, one batch x{b['nbr']['step_s'] / a['nbr']['step_s']:.1f}, "
                  f"bundle x{b['nbr']['bundle_bytes'] / a['nbr']['bundle_bytes']:.2f}, runtime p50 "
                  f"x{b['nbr']['p50_ms'] / a['nbr']['p50_ms']:.2f}. One customer's top-10 p50 <= 2 ms (issue 21): "
                  f"{'met' if b['nbr']['p50_ms'] <= 2.0 else '**NOT met**'} at {b['nbr']['items']:,} items.")
    done = [str(g) for g in (args.outlook_logs or args.logs) if "windows" in results[str(g)].get("outlook", {})]
    if len(done) >= 2:
        a, b = results[done[0]]["outlook"], results[done[-1]]["outlook"]
        largest = max(results[str(g)]["manifest"]["customers"] for g in args.logs)
        per = (b["peak_rss_gib"] - a["peak_rss_gib"]) / max(1, b["customers"] - a["customers"])
        growth += (f" Outlook from {a['customers']:,} to {b['customers']:,} customers: windows "
                   f"x{b['windows'] / a['windows']:.1f}, peak RSS x{b['peak_rss_gib'] / a['peak_rss_gib']:.1f}; "
                   f"linear in the customers that is ~{b['windows'] / b['customers'] * largest / 1e6:.0f}M windows and "
                   f"~{b['peak_rss_gib'] + per * (largest - b['customers']):.0f} GiB at {largest:,} customers"
                   + ("" if any("outlook" in results[str(g)] and results[str(g)]["manifest"]["customers"] == largest
                                for g in done) else " (not run there: the windows are built whole before sampling)")
                   + ".")
    body = "\n".join([
        ("Cost only: the logs are generated (`experiments.retail_log`, seed 0), so no quality is claimed. Protocol "
         "and steps: the module docstring of `experiments.scale_models`; each step is a separate process at one "
         "thread, peak RSS from `/usr/bin/time -v`. The next-basket epoch is projected from the timed batches (time "
         "per batch x batches in an epoch), not run whole."), "", *lines, "", growth])
    command = "python -m experiments.scale_models " + " ".join(str(g) for g in args.logs) + (
        "" if args.steps == STEPS else f" --steps {args.steps}") + (
        "" if args.models == ",".join(MODELS) else f" --models {args.models}") + (
        " --outlook-logs " + " ".join(str(g) for g in args.outlook_logs) if args.outlook_logs else "")
    write_section("scale-models", "Models at a retailer's size: cost on generated logs", command,
                  "; ".join(f"{g}: {results[str(g)]['manifest']['customers']:,} customers, "
                            f"{results[str(g)]['manifest']['lines']:,} lines, "
                            f"{results[str(g)]['manifest']['items']:,} items" for g in logs), body)
    print(body)


if __name__ == "__main__":
    main()
