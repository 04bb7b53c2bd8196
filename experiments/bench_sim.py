"""Market simulator throughput: machines x one year, vectorised over machines.

    python -m experiments.bench_sim                          # 100k and 1M machines x 365 days
    python -m experiments.bench_sim --sizes 100000           # a quick look

Config ``configs/sim/market.yaml`` with ``days=365, horizon_days=0`` and telemetry weekly (``telemetry.every_days=7``;
daily readings for half of 1M machines would be 365M rows); extra ``--set`` overrides apply to every size. Each size
runs in its own process (peak memory is its own): the simulation (machine arrays, day loop, human shoppers) is
timed, then the conversion to canonical events and the Parquet write. Results go to MLflow (experiment
``bench-sim``, the resolved config logged with each run) and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.report import write_section

CONFIG = "configs/sim/market.yaml"
BASE = ["days=365", "horizon_days=0", "telemetry.every_days=7"]
GOAL_S = 300.0


def one(n: int, overrides: list[str], events: bool) -> dict:
    """Simulate ``n`` machines in this process (and build and write its events frame if ``events``); timings,
    counts and peak memory."""
    from twins.sim import load_config, simulate

    cfg = load_config(CONFIG, [*BASE, f"n_machines={n}", *overrides])
    start = time.perf_counter()
    market = simulate(cfg)
    sim_s = time.perf_counter() - start
    log = market.log
    result = {"n_machines": n, "days": cfg.days, "simulate_s": sim_s, "orders": len(log.orders["day"]),
              "telemetry_readings": 2 * len(log.telemetry["day"]), "service_requests": len(log.service["day"]),
              "messages": len(log.messages["day"]), "human_lines": len(market.humans["day"]),
              "config": cfg.model_dump(mode="json")}
    result["simulate_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if events:
        start = time.perf_counter()
        frame = market.events()
        result["events_s"] = time.perf_counter() - start
        result["events"] = frame.height
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            frame.write_parquet(Path(tmp) / "events.parquet")
            result["write_s"] = time.perf_counter() - start
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--events-max", type=int, default=100_000,
                    help="build and write the events frame only up to this many machines (it takes ~0.5 KB a row)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.overrides, args.one <= args.events_max)))
        return

    results = []
    for n in args.sizes:
        cmd = [sys.executable, "-m", "experiments.bench_sim", "--one", str(n), f"--events-max={args.events_max}",
               *[f"--set={o}" for o in args.overrides]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
        print(f"{n:,} machines x {r['days']} days: simulate {r['simulate_s']:.1f} s, events {r.get('events_s', 0):.1f} s "
              f"({r.get('events', 0):,} rows), parquet {r.get('write_s', 0):.1f} s, peak {r['peak_rss_gib']:.1f} GiB", flush=True)

    from twins import tracking
    from twins.config import redact

    run_ids = []
    for r in results:
        tags = {"dataset": "simulated-market", "protocol": "simulator throughput", "model": "twins.sim"}
        with tracking.run("bench-sim", f"sim-{r['n_machines']}", tags=tags) as mlflow:
            tracking.log_params(mlflow, {"config": r["config"], "overrides": [*BASE, *args.overrides]})
            mlflow.log_dict(redact(r["config"]), "market_config.json")
            tracking.log_metrics(mlflow, {k: v for k, v in r.items() if isinstance(v, (int, float))}
                                 | {"machine_days_per_s": r["n_machines"] * r["days"] / r["simulate_s"]})
            run_ids.append(mlflow.active_run().info.run_id)

    def frame(r: dict) -> str:
        return f"{r['events']:,} rows in {r['events_s']:.1f} s | {r['write_s']:.1f} s" if "events" in r else "not built | -"

    rows = "\n".join(
        f"| {r['n_machines']:,} | {r['simulate_s']:.1f} s | {r['n_machines'] * r['days'] / r['simulate_s'] / 1e6:.2f} M | "
        f"{r['orders']:,} | {r['telemetry_readings']:,} | {r['service_requests']:,} | {r['messages']:,} | "
        f"{r['simulate_peak_rss_gib']:.1f} GiB | {frame(r)} | {r['peak_rss_gib']:.1f} GiB |" for r in results)
    largest = max(results, key=lambda r: r["n_machines"])
    verdict = "met" if largest["simulate_s"] < GOAL_S and largest["n_machines"] >= 1_000_000 else "NOT met"
    body = f"""`twins.sim.simulate` with `{CONFIG}` and `{' '.join(BASE + args.overrides)}`: machines 50 % bound
(30 % of them periodic review), 30 % adaptable, 20 % autonomous; half of them send stock and usage readings
weekly; {largest['config']['humans']['n']:,} human shoppers. One process per size; simulate = drawing machines
and offers, the day loop, the shoppers (columnar numpy arrays); events frame = the canonical polars frame (sorted
by time), built up to {args.events_max:,} machines; parquet = writing it.

| machines | simulate (1 year) | machine-days/s | orders | telemetry readings | service requests | messages | peak memory after simulate | events frame | parquet | peak memory |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}

Goal: 1M machines x 1 year simulated in < {GOAL_S:.0f} s: **{verdict}** ({largest['n_machines']:,} machines:
{largest['simulate_s']:.1f} s). MLflow runs {', '.join(f'`{i}`' for i in run_ids)} (experiment `bench-sim`; the
resolved config is logged as params and `market_config.json`)."""
    write_section("sim-throughput", "Market simulator throughput", "python -m experiments.bench_sim",
                  "simulated market (configs/sim/market.yaml)", body)

if __name__ == "__main__":
    main()
