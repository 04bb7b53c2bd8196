"""What the learned models cost at a retailer's size, on generated logs (``experiments.retail_log``): time, peak
memory and bytes only. The logs are synthetic, so nothing here says anything about quality.

    python -m experiments.scale_models /work/big/retail100k /work/big/retail1m --sims SIM_100K SIM_1M

Each step of each log runs in its own process under ``/usr/bin/time -v`` (its peak RSS) at one thread:

* ``nbr``: the log's lines -> each customer's baskets in time order (polars; lines with a null time or quantity or
  a negative price dropped, as ``twins ingest`` quarantines them; a basket is an order), the Reality Check protocol's
  users (>= 2 baskets, the last one the target) split 72/8/20 with seed 0; ``NeuralNextBasket`` (default
  hyper-parameters but the full softmax, ``sampled_items=None``) on the training users: its setup (vocabulary,
  neighbour index of at most ``max_users`` users, examples), ``--steps`` training batches with their features
  built per batch (``steps_per_epoch``; the epoch's time is projected from them), the neighbour features alone for
  as many batches, the export (bundle bytes, ONNX parity checked) and the bundle's top-10 for one test customer
  (raw history in) p50 / p99 over 500.
* ``nbr_auto``: the same users and ``NeuralNextBasket`` with every default (``sampled_items="auto"``) in a process
  of its own: what it chose, its setup and ``--steps`` batches (the epoch projected), its peak RSS.
* ``outlook``: the customers' purchase days; at the cut-off 13 weeks before the log's end, the training windows
  counted (``twins.models.outlook_net.count_windows``) and a seeded sample of ``OUTLOOK_ROWS`` of them built
  (``training_windows(max_rows=...)``: only the sample is built); ``NeuralOutlook`` with one member for one epoch
  on that sample (``max_rows``; the fit builds the sample again first; the default fit is ``n_members`` (5) x up
  to ``max_epochs`` of these epochs); every customer scored as the twin build does (``features_at``, then
  ``predict``), the export with its parity check, the bundle's graph on every customer's features (and its largest
  gap to the network), and the bundle's answer from raw (time, amount) histories for ``N_LATENCY`` customers, one
  at a time (p50 / p99) and as one batch.
* ``replenishment`` (``--sims``: ``twins sim`` market folders, weekly readings, nothing after ``market.json``'s
  as_of): the machine keys (``machine_keys``) and the first order, bucket by bucket; then bucket by
  bucket (``bucket_histories``: one bucket's machines in memory) the training rows of a seeded uniform sample of
  ``REPL_ROWS`` (machine, cut-off) pairs of the pipeline's grid (``pipelines.replenishment`` defaults: cut-offs
  every 5 days from 60 days after the first order to as_of, targets watched 120 days but not past as_of; a pair
  whose machine has < 3 orders gives no row) and every machine's features at as_of (both by ``features_many``:
  the runtime's features of a block of machines, their seasonal fits solved together); ``ReplenishmentForecaster``
  (default hyper-parameters: 60 epochs, seed 0) on those rows; the export with its parity check; the bundle's graph
  on every machine's features (its largest gap to the network); the bundle's ``forecast`` from raw orders and
  readings for ``N_LATENCY`` machines, one at a time (p50 / p99).

Logged to the MLflow experiment ``scale-models`` (a run per input); the tables go to BENCHMARKS.md. A model left out
of ``--models`` keeps the row of the latest run that measured it on that input (the text names the run).
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
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from experiments.bench_nbr_runtime import times_ms
from experiments.report import write_section

STEPS = 40
N_LATENCY = 500
HORIZON_WEEKS = 13
OUTLOOK_ROWS = 1_000_000
CHUNK = 65_536  # rows a bundle's graph scores at once
REPL_ROWS = 100_000
REPL_HORIZON_DAYS, REPL_STEP_DAYS, REPL_WARMUP_DAYS = 120.0, 5.0, 60.0  # pipelines.replenishment's defaults
MODELS = ("nbr", "nbr_auto", "outlook", "replenishment")
EXPERIMENT = "scale-models"


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

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    started = time.perf_counter()
    histories, targets, _ = split_history_target(load_baskets(log))
    split = split_users(histories, 0)
    out["baskets_s"], out["baskets_rss_gib"] = time.perf_counter() - started, _rss_gib()
    train = split["train"]
    model = NeuralNextBasket(seed=0, max_epochs=1, steps_per_epoch=steps, sampled_items=None)
    out |= _fit_batches(model, histories, targets, train, steps)
    out |= {"customers": len(histories), "train_users": len(train), "items": len(model.items_),
            "index_users": model.neighbours_.n_users, "index_nnz": len(model.neighbours_.vectors[1]),
            "steps": steps, "fit_rss_gib": _rss_gib()}
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
        index = bundle.neighbours
        feeds = [bundle.inputs([r], [index.signal(index.neighbour_rows([r])[0])])[0] for r in encoded]
        stages = {"": (bundle.recommend_one, test),
                  "context_": (lambda r: index.signal(index.neighbour_rows([r])[0]), encoded),
                  "graph_": (bundle.run, feeds)}
        for name, (fn, args) in stages.items():
            times = times_ms(fn, args)
            out[f"{name}p50_ms"], out[f"{name}p99_ms"] = float(np.percentile(times, 50)), float(np.percentile(times, 99))
    out["n_latency"] = len(test)
    return out


def nbr_auto_step(log: Path, steps: int) -> dict[str, Any]:
    """The default ``NeuralNextBasket`` (``sampled_items="auto"``) alone: what it chose, its batches and peak."""
    import torch

    from twins.evaluate.next_basket import split_history_target, split_users
    from twins.models.nbr_net import NeuralNextBasket

    torch.set_num_threads(1)
    histories, targets, _ = split_history_target(load_baskets(log))
    train = split_users(histories, 0)["train"]
    model = NeuralNextBasket(seed=0, max_epochs=1, steps_per_epoch=steps)
    timed = _fit_batches(model, histories, targets, train, steps)
    return timed | {"sampled_items": model.sampled_items_ or 0, "items": len(model.items_)}


def _fit_batches(model, histories: dict, targets: dict, train: list, steps: int) -> dict[str, float]:
    """Fit ``model`` (``steps_per_epoch`` = ``steps``, one epoch) on the training users: its setup, one batch, and
    the epoch projected from the batches (one example per training user: ``targets_per_user`` 1)."""
    started = time.perf_counter()
    model.fit({u: histories[u] for u in train}, {u: targets[u] for u in train})
    fit_s, trained_s = time.perf_counter() - started, model.history_[0]["train_seconds"]
    batches = -(-len(train) // model.batch_size)
    return {"setup_s": fit_s - trained_s, "step_s": trained_s / steps, "epoch_batches": batches,
            "epoch_projected_s": trained_s / steps * batches}


def outlook_step(log: Path) -> dict[str, Any]:
    import polars as pl
    import torch

    from twins.models.outlook_export import export_neural_outlook
    from twins.models.outlook_net import NeuralOutlook, count_windows, day_table, features_at, training_windows
    from twins.runtime import load
    from twins.runtime.outlook_features import Calendar, calendar_inputs

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
    out["windows"] = count_windows(code, age, HORIZON_WEEKS)
    out["count_s"] = time.perf_counter() - started
    started = time.perf_counter()
    sample = training_windows(code, age, spend, HORIZON_WEEKS, max_rows=OUTLOOK_ROWS, seed=0)
    out |= {"sample_s": time.perf_counter() - started, "sample_rows": len(sample.count), "windows_rss_gib": _rss_gib()}
    del sample
    model = NeuralOutlook(n_members=1, max_epochs=1, seasonal=False, max_rows=OUTLOOK_ROWS, seed=0)
    started = time.perf_counter()
    model.fit(code, age, spend, HORIZON_WEEKS)
    out |= {"fit_s": time.perf_counter() - started, "fit_rows": model.n_windows_, "fit_rss_gib": _rss_gib()}
    started = time.perf_counter()
    x = features_at(code, age, spend, np.arange(len(ids)))
    out["features_s"] = time.perf_counter() - started
    started = time.perf_counter()
    want = model.predict(x, HORIZON_WEEKS)
    out |= {"predict_s": time.perf_counter() - started, "score_rss_gib": _rss_gib()}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = export_neural_outlook(model, Path(tmp) / "bundle", horizon_days=7.0 * HORIZON_WEEKS)
        out["export_s"] = time.perf_counter() - started
        out["bundle_bytes"] = sum(f.stat().st_size for f in path.iterdir())
        bundle = load(path, threads=1)
        started = time.perf_counter()
        got = []
        for s in range(0, len(x), CHUNK):  # by chunks: the weekly multipliers are [rows, CAL_WEEKS] float64 each
            part, cal, spend_cal = calendar_inputs(Calendar(model.calendar_), x[s:s + CHUNK], 0.0)
            got.append(bundle.run({"x": part.astype(np.float64), "h": np.full(len(part), float(HORIZON_WEEKS)),
                                   "cal": cal, "spend_cal": spend_cal})["expected_purchases"])
        got = np.concatenate(got)
        out["graph_s"] = time.perf_counter() - started
        out["graph_gap"] = _gap(got, want["expected_purchases"])
        as_of = cutoff.replace(tzinfo=timezone.utc) if cutoff.tzinfo is None else cutoff
        histories = _outlook_histories(code, age, spend, as_of, N_LATENCY)
        times = times_ms(lambda h: bundle.score([h], as_of), histories)
        out["p50_ms"], out["p99_ms"] = float(np.percentile(times, 50)), float(np.percentile(times, 99))
        started = time.perf_counter()
        bundle.score(histories, as_of)
        out["raw_per_s"] = len(histories) / (time.perf_counter() - started)
    out["n_latency"] = len(histories)
    return out


def _outlook_histories(code: np.ndarray, age: np.ndarray, spend: np.ndarray, as_of: datetime, n: int) -> list[list[tuple]]:
    """Raw (time, amount) histories of customer codes 0..n-1 from their purchase days before ``as_of``."""
    n = min(n, int(code.max()) + 1)
    keep = (code < n) & (age > 0)
    out: list[list[tuple]] = [[] for _ in range(n)]
    for c, a, s in zip(code[keep], age[keep], spend[keep]):
        out[c].append((as_of - timedelta(days=float(a)), float(s)))
    return out


def _gap(got: np.ndarray, want: np.ndarray) -> float:
    """Largest ``|got - want| / max(|want|, 1)``."""
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0), initial=0.0))


def replenishment_step(sim: Path) -> dict[str, Any]:
    import polars as pl
    import torch

    from twins.data.events import bucket_files
    from twins.models.replenishment import (EPOCH, Samples, bucket_histories, machine_keys, pair_samples,
                                           runtime_inputs, sample_pairs)
    from twins.models.replenishment_export import export_replenishment
    from twins.models.replenishment_torch import ReplenishmentForecaster
    from twins.runtime import load
    from twins.runtime.replenishment import INPUT, MAX_DAYS
    from twins.runtime.replenishment_features import features_many

    torch.set_num_threads(1)
    as_of = datetime.fromisoformat(json.loads((sim / "market.json").read_text())["as_of"])
    until = (as_of - EPOCH).total_seconds() / 86_400
    started = time.perf_counter()
    keys, first = [], as_of
    for path in bucket_files(sim):  # a machine's events all sit in its customer's bucket
        events = pl.scan_parquet(path)
        keys += machine_keys(events)["machine"].to_list()
        start, end = events.select(pl.col("event_time").filter(pl.col("event_type") == "purchase").min().alias("first"),
                                   pl.col("event_time").max().alias("last")).collect().row(0)
        if end is not None and end >= as_of:
            raise ValueError(f"{path}: events up to {end}, at or after the market's as_of {as_of}; simulate with "
                             "--set horizon_days=0")
        first = min(first, start or as_of)
    keys.sort()
    out: dict[str, Any] = {"machines": len(keys), "keys_s": time.perf_counter() - started}
    cuts = np.arange((first - EPOCH).total_seconds() / 86_400 + REPL_WARMUP_DAYS, until, REPL_STEP_DAYS)
    m, c = sample_pairs(len(keys), len(cuts), REPL_ROWS, seed=0)
    wanted: dict[str, list[float]] = {}
    for i, j in zip(m, c):
        wanted.setdefault(keys[i], []).append(float(cuts[j]))
    parts, now_x, now_machines, latency = [], [], [], {}
    clock = {"histories_s": 0.0, "train_features_s": 0.0, "score_features_s": 0.0}
    tick = time.perf_counter()
    for buckets, hist in enumerate(bucket_histories(sim), 1):  # the sim has no events from as_of on (horizon_days=0)
        clock["histories_s"] += time.perf_counter() - tick
        tick = time.perf_counter()
        picked = [(k, t) for k in hist if k in wanted for t in wanted[k]]
        parts.append(pair_samples(hist, [k for k, _ in picked], [t for _, t in picked], REPL_HORIZON_DAYS, until))
        clock["train_features_s"] += time.perf_counter() - tick
        tick = time.perf_counter()
        for k, x in zip(hist, features_many(list(hist.values()), [until] * len(hist))):
            if x is not None:
                now_x.append(x)
                now_machines.append(k)
        clock["score_features_s"] += time.perf_counter() - tick
        if not latency:
            latency = {k: hist[k] for k in list(hist)[:N_LATENCY]}
        del hist
        tick = time.perf_counter()
    rows = Samples(*(np.concatenate([getattr(p, f) for p in parts]) for f in Samples.__dataclass_fields__))
    out |= clock | {"buckets": buckets, "pairs": len(m), "train_rows": len(rows.T), "scored": len(now_machines),
                    "features_rss_gib": _rss_gib()}
    model = ReplenishmentForecaster(seed=0)
    started = time.perf_counter()
    model.fit(rows.X, rows.T, rows.Q, rows.censored, rows.bound)
    out |= {"fit_s": time.perf_counter() - started, "epochs": model.epochs}
    X = np.asarray(now_x, np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = export_replenishment(model, Path(tmp) / "bundle")
        out["export_s"] = time.perf_counter() - started
        out["bundle_bytes"] = sum(f.stat().st_size for f in path.iterdir())
        bundle = load(path, threads=1)
        started = time.perf_counter()
        got = np.concatenate([bundle.run({INPUT: X[s:s + CHUNK]})["log1p_time"] for s in range(0, len(X), CHUNK)])
        out["graph_s"] = time.perf_counter() - started
        out["graph_gap"] = _gap(np.clip(np.expm1(np.minimum(got.astype(np.float64), np.log1p(MAX_DAYS))), 0.0, None),
                                model.predict(X)["time"])
        orders, readings = runtime_inputs(latency, list(latency))
        times = times_ms(lambda i: bundle.forecast([orders[i]], as_of, [readings[i]]), list(range(len(orders))))
        out["p50_ms"], out["p99_ms"] = float(np.percentile(times, 50)), float(np.percentile(times, 99))
    out["n_latency"] = len(latency)
    return out


STEP_FUNCTIONS = {"nbr": lambda path, args: nbr_step(path, args.steps),
                  "nbr_auto": lambda path, args: nbr_auto_step(path, args.steps),
                  "outlook": lambda path, args: outlook_step(path),
                  "replenishment": lambda path, args: replenishment_step(path)}


def run_step(model: str, path: Path, steps: int) -> dict[str, Any]:
    """``model``'s step on ``path`` in a child process under /usr/bin/time -v: its answer and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        answer = Path(tmp) / "out.json"
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "experiments.scale_models", "--step", model,
               "--steps", str(steps), "--json", str(answer), str(path)]
        env = os.environ | {"OMP_NUM_THREADS": "1", "TWINS_THREADS": "1", "POLARS_MAX_THREADS": "1"}
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - started
        peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
        if done.returncode != 0:  # reported in the table (e.g. killed for memory), the other steps still run
            print(f"step {model} on {path} failed:\n{done.stderr[-4000:]}", file=sys.stderr)
            out = {"failed": f"exit {done.returncode}"}
        else:
            out = json.loads(answer.read_text())
    return out | {"peak_rss_gib": int(peak.group(1)) / 2**20 if peak else float("nan"), "wall_s": wall}


def previous(path: Path, model: str) -> dict[str, Any] | None:
    """``model``'s metrics from the latest MLflow run of this experiment on ``path`` that measured it (a step not
    rerun keeps its row), with that run's id and date; None when none did."""
    import mlflow

    from twins import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri())
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    for run in mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.dataset = '{path.name}'",
                                  order_by=["attributes.start_time DESC"], output_format="list"):
        got = {k.split("/", 1)[1]: int(v) if float(v).is_integer() else v for k, v in run.data.metrics.items()
               if k.startswith(model + "/")}
        if got:
            when = datetime.fromtimestamp(run.info.start_time / 1e3, tz=timezone.utc)
            return got | {"from_run": run.info.run_id, "from_date": f"{when:%Y-%m-%d %H:%M} UTC"}
    return None


def _size(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _table(results: dict[str, dict[str, Any]], head: str, rows: list[tuple[str, str, Any]]) -> list[str]:
    """A markdown table: a column per result (``head`` formats its title from the manifest), a row per (label,
    model, format of that model's result); a cell whose model failed or did not run says so."""
    keys = list(results)
    lines = ["| | " + " | ".join(head.format(**results[k]["manifest"]) for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for label, model, fmt in rows:
        cells = []
        for k in keys:
            got = results[k].get(model)
            if got is None:
                cells.append("not run")
            elif "failed" in got:
                cells.append(f"failed: {got['failed']}")
            else:
                cells.append(fmt(got))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


LOG_ROWS = [
    ("log lines / orders / items", "manifest", lambda m: f"{m['lines']:,} / {m['orders']:,} / {m['items']:,}"),
    ("next basket: users (>= 2 baskets) / training / items seen", "nbr",
     lambda n: f"{n['customers']:,} / {n['train_users']:,} / {n['items']:,}"),
    ("next basket: baskets from the log (s)", "nbr", lambda n: f"{n['baskets_s']:.0f}"),
    ("next basket: setup: vocabulary, neighbour index, examples (s)", "nbr", lambda n: f"{n['setup_s']:.0f}"),
    ("next basket: neighbour index users / non-zeros", "nbr", lambda n: f"{n['index_users']:,} / {n['index_nnz']:,}"),
    ("next basket: one training batch of 128 (s; features built in it)", "nbr", lambda n: f"{n['step_s']:.2f}"),
    ("next basket: of which neighbour features (s)", "nbr", lambda n: f"{n['features_step_s']:.3f}"),
    ("next basket: one epoch, projected from the batches (min)", "nbr",
     lambda n: f"{n['epoch_projected_s'] / 60:,.0f} ({n['epoch_batches']:,} batches)"),
    ("next basket: peak RSS of the step (GiB)", "nbr", lambda n: f"{n['peak_rss_gib']:.1f}"),
    ("next basket, default `sampled_items='auto'`: what it chose", "nbr_auto",
     lambda n: f"{n['sampled_items']:,} of {n['items']:,} items" if n["sampled_items"] else "every item"),
    ("next basket, default: setup / one training batch (s); an epoch, projected (min)", "nbr_auto",
     lambda n: f"{n['setup_s']:.0f} / {n['step_s']:.2f}; {n['epoch_projected_s'] / 60:,.0f}"),
    ("next basket, default: peak RSS of its own step (GiB)", "nbr_auto", lambda n: f"{n['peak_rss_gib']:.1f}"),
    ("next basket: bundle (model.onnx + neighbours.npz + manifest)", "nbr",
     lambda n: f"{_size(n['bundle_bytes'])} ({_size(n['onnx_bytes'])} + {_size(n['neighbours_bytes'])})"),
    ("next basket: export with parity check (s)", "nbr", lambda n: f"{n['export_s']:.0f}"),
    ("next basket: runtime top-10, one customer, p50 / p99 (ms)", "nbr", lambda n: f"{n['p50_ms']:.2f} / {n['p99_ms']:.2f}"),
    ("next basket: of which neighbour search and signal / ONNX graph, p50 (ms)", "nbr",
     lambda n: f"{n['context_p50_ms']:.2f} / {n['graph_p50_ms']:.2f}"),
    ("outlook: customers / purchase days", "outlook", lambda o: f"{o['customers']:,} / {o['purchase_days']:,}"),
    ("outlook: purchase days from the log (s)", "outlook", lambda o: f"{o['days_s']:.0f}"),
    ("outlook: training windows, all (counted, not built; s)", "outlook", lambda o: f"{o['windows']:,} ({o['count_s']:.1f})"),
    ("outlook: a seeded sample of them built (rows; s)", "outlook", lambda o: f"{o['sample_rows']:,} ({o['sample_s']:.0f})"),
    ("outlook: fit: the sample, then 1 member x 1 epoch (s)", "outlook", lambda o: f"{o['fit_s']:.0f}"),
    ("outlook: scoring every customer: features / network (s)", "outlook",
     lambda o: f"{o['features_s']:.0f} / {o['predict_s']:.0f}"),
    ("outlook: export with parity check (s) / bundle", "outlook", lambda o: f"{o['export_s']:.0f} / {_size(o['bundle_bytes'])}"),
    ("outlook: bundle's graph on every customer's features (s; largest gap to the network)", "outlook",
     lambda o: f"{o['graph_s']:.0f} ({o['graph_gap']:.0e})"),
    ("outlook: runtime from raw histories, one customer p50 / p99 (ms); a batch (customers/s)", "outlook",
     lambda o: f"{o['p50_ms']:.2f} / {o['p99_ms']:.2f}; {o['raw_per_s']:,.0f}"),
    ("outlook: peak RSS of the step (GiB)", "outlook", lambda o: f"{o['peak_rss_gib']:.1f}"),
]

SIM_ROWS = [
    ("machines (ordering before as_of) / buckets", "replenishment", lambda r: f"{r['machines']:,} / {r['buckets']}"),
    ("machine keys and first order, bucket by bucket (s)", "replenishment", lambda r: f"{r['keys_s']:.0f}"),
    ("histories, bucket by bucket (s)", "replenishment", lambda r: f"{r['histories_s']:.0f}"),
    ("training: (machine, cut-off) pairs sampled / rows with >= 3 orders / their features (s)", "replenishment",
     lambda r: f"{r['pairs']:,} / {r['train_rows']:,} / {r['train_features_s']:.0f}"),
    ("fit: the rows x epochs (s)", "replenishment", lambda r: f"{r['fit_s']:.0f} ({r['epochs']} epochs)"),
    ("export with parity check (s) / bundle", "replenishment", lambda r: f"{r['export_s']:.1f} / {_size(r['bundle_bytes'])}"),
    ("scoring every machine at as_of: machines / features (s) / graph (s)", "replenishment",
     lambda r: f"{r['scored']:,} / {r['score_features_s']:.0f} / {r['graph_s']:.1f}"),
    ("largest gap, graph to the network (relative)", "replenishment", lambda r: f"{r['graph_gap']:.0e}"),
    ("runtime from raw orders and readings, one machine p50 / p99 (ms)", "replenishment",
     lambda r: f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}"),
    ("peak RSS of the step (GiB)", "replenishment", lambda r: f"{r['peak_rss_gib']:.1f}"),
]


def _growth(results: dict[str, dict[str, Any]], logs: list[Path], sims: list[Path]) -> str:
    """How the costs grow between the smallest and the largest input of each model."""
    text = []
    nbr = [results[str(g)] for g in logs if "customers" in results[str(g)].get("nbr", {})]
    if len(nbr) >= 2:
        a, b = nbr[0], nbr[-1]
        ratio = b["manifest"]["customers"] / a["manifest"]["customers"]
        a, b = a["nbr"], b["nbr"]
        text.append(f"Next basket from {nbr[0]['manifest']['customers']:,} to {nbr[-1]['manifest']['customers']:,} customers "
                    f"(x{ratio:.0f}): peak RSS x{b['peak_rss_gib'] / a['peak_rss_gib']:.1f}, setup "
                    f"x{b['setup_s'] / a['setup_s']:.1f}, one batch x{b['step_s'] / a['step_s']:.1f}, bundle "
                    f"x{b['bundle_bytes'] / a['bundle_bytes']:.2f}, runtime p50 x{b['p50_ms'] / a['p50_ms']:.2f}. One "
                    f"customer's top-10 p50 <= 2 ms (issue 21): {'met' if b['p50_ms'] <= 2.0 else '**NOT met**'} at "
                    f"{b['items']:,} items.")
    outlook = sorted((results[str(g)]["outlook"] for g in logs if "customers" in results[str(g)].get("outlook", {})),
                     key=lambda o: o["customers"])
    if len(outlook) >= 2:
        a, b = outlook[0], outlook[-1]
        total = lambda o: o["days_s"] + o["fit_s"] + o["features_s"] + o["predict_s"] + o["export_s"]  # noqa: E731
        text.append(f"Outlook from {a['customers']:,} to {b['customers']:,} customers (x{b['customers'] / a['customers']:.1f}): "
                    f"windows x{b['windows'] / a['windows']:.1f} (counted), the built sample "
                    f"x{b['sample_rows'] / a['sample_rows']:.1f}, fit x{b['fit_s'] / a['fit_s']:.1f}, scoring x{(b['features_s'] + b['predict_s']) / (a['features_s'] + a['predict_s']):.1f}, "
                    f"peak RSS x{b['peak_rss_gib'] / a['peak_rss_gib']:.1f}; days + fit + scoring + export "
                    f"{total(a):.0f} s -> {total(b):.0f} s (BG/NBD fits 1M customers in 7 s).")
    repl = sorted((results[str(g)]["replenishment"] for g in sims if "machines" in results[str(g)].get("replenishment", {})),
                  key=lambda r: r["machines"])
    if len(repl) >= 2:
        a, b = repl[0], repl[-1]
        per = lambda r: r["score_features_s"] / r["scored"] * 1e3  # noqa: E731
        text.append(f"Replenishment from {a['machines']:,} to {b['machines']:,} machines (x{b['machines'] / a['machines']:.0f}): "
                    f"histories x{b['histories_s'] / a['histories_s']:.1f}, scoring features x"
                    f"{b['score_features_s'] / a['score_features_s']:.1f} ({per(a):.2f} -> {per(b):.2f} ms a machine), "
                    f"fit x{b['fit_s'] / a['fit_s']:.1f} ({a['train_rows']:,} -> {b['train_rows']:,} rows), peak RSS "
                    f"x{b['peak_rss_gib'] / a['peak_rss_gib']:.1f}.")
    return " ".join(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="*", type=Path, help="folders written by experiments.retail_log")
    ap.add_argument("--steps", type=int, default=STEPS, help="next-basket training batches timed")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {MODELS}")
    ap.add_argument("--outlook-logs", nargs="+", type=Path,
                    help="logs for the outlook step instead of LOGS (where the largest does not fit)")
    ap.add_argument("--sims", nargs="+", type=Path, default=[],
                    help="`twins sim` market folders (weekly readings) for the replenishment step")
    ap.add_argument("--only", nargs="+", type=Path, default=[],
                    help="run the steps on these inputs only; the others keep their latest MLflow rows")
    ap.add_argument("--step", choices=MODELS, help=argparse.SUPPRESS)  # one step in this process (the child)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        args.json.write_text(json.dumps(STEP_FUNCTIONS[args.step](args.logs[0], args)))
        return
    from twins import tracking

    models = args.models.split(",")
    inputs = {"nbr": args.logs, "nbr_auto": args.logs, "outlook": args.outlook_logs or args.logs, "replenishment": args.sims}
    logs = sorted(dict.fromkeys([*args.logs, *(args.outlook_logs or [])]),
                  key=lambda g: json.loads((g / "manifest.json").read_text())["customers"])
    results: dict[str, dict[str, Any]] = {}
    reused: list[str] = []
    for path in [*logs, *args.sims]:
        is_sim = path in args.sims
        manifest = (json.loads((path / "config.json").read_text()) if is_sim
                    else json.loads((path / "manifest.json").read_text()))
        results[str(path)] = {"manifest": manifest}
        with tracking.run(EXPERIMENT, f"scale-{path.name}", tags={"dataset": path.name, "protocol": "cost only"}) as mlflow:
            mlflow.log_params({"path": str(path), "steps": args.steps} | (
                {"machines": manifest["n_machines"]} if is_sim else
                {"customers": manifest["customers"], "lines": manifest["lines"], "items": manifest["items"]}))
            for model in MODELS:
                if path not in inputs[model]:
                    continue
                if model not in models or (args.only and path not in args.only):
                    got = previous(path, model)
                    if got is not None:
                        results[str(path)][model] = got
                        reused.append(f"{model} on {path.name} from {got['from_date']} (run {got['from_run'][:8]})")
                    continue
                got = run_step(model, path, args.steps)
                results[str(path)][model] = got
                print(model, path, json.dumps(got), flush=True)
                tracking.log_metrics(mlflow, {f"{model}/{k}": float(v) for k, v in got.items()
                                              if isinstance(v, (int, float))})
    sims = sorted(args.sims, key=lambda g: results[str(g)]["manifest"]["n_machines"])
    lines = _table({str(g): results[str(g)] for g in logs}, "{customers:,} customers", LOG_ROWS)
    sim_lines = _table({str(g): results[str(g)] for g in sims}, "{n_machines:,} machines", SIM_ROWS) if sims else []
    body = "\n".join([
        ("Cost only: the logs are generated (`experiments.retail_log`, seed 0; the markets by `twins sim`), so no "
         "quality is claimed. Protocol and steps: the module docstring of `experiments.scale_models`; each step is a "
         "separate process at one thread, peak RSS from `/usr/bin/time -v`. The next-basket epoch is projected from "
         "the timed batches (time per batch x batches in an epoch), not run whole."
         + (f" Kept from an earlier run (not rerun here): {'; '.join(reused)}." if reused else "")), "", *lines,
        *(["", ("Replenishment on simulated markets (`twins sim configs/sim/market.yaml --set days=365 --set "
                "horizon_days=0 --set telemetry.every_days=7 --set n_machines=N`):"), "", *sim_lines] if sim_lines else []),
        "", _growth(results, logs, sims)])
    command = "python -m experiments.scale_models " + " ".join(str(g) for g in args.logs) + (
        "" if args.steps == STEPS else f" --steps {args.steps}") + (
        "" if args.models == ",".join(MODELS) else f" --models {args.models}") + (
        " --outlook-logs " + " ".join(str(g) for g in args.outlook_logs) if args.outlook_logs else "") + (
        " --sims " + " ".join(str(g) for g in args.sims) if args.sims else "")
    data = [f"{g}: {results[str(g)]['manifest']['customers']:,} customers, {results[str(g)]['manifest']['lines']:,} "
            f"lines, {results[str(g)]['manifest']['items']:,} items" for g in logs]
    data += [f"{g}: {results[str(g)]['manifest']['n_machines']:,} machines x {results[str(g)]['manifest']['days']} days, "
             f"readings every {results[str(g)]['manifest']['telemetry']['every_days']} days" for g in sims]
    write_section("scale-models", "Models at a retailer's size: cost on generated logs", command, "; ".join(data), body)
    print(body)


if __name__ == "__main__":
    main()
