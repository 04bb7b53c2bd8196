"""Market simulator at scale, through the command a user runs: ``twins sim`` writes machines x days into the
bucketed event store chunk by chunk.

    python -m experiments.bench_sim                          # 100k and 1M machines x 365 days, 1M with the repo config
    python -m experiments.bench_sim --sizes 100000 --repo-sizes   # a quick look

Two cases: ``--sizes`` run ``configs/sim/market.yaml`` with ``days=365, horizon_days=0`` and weekly telemetry
(``telemetry.every_days=7``); ``--repo-sizes`` run the repo config as it is (365 days observed plus a 120-day truth
horizon, daily readings from half of the machines): the issue's ``twins sim configs/sim/market.yaml --set
n_machines=1000000``. Extra ``--set`` overrides apply to every run. Each run is one ``twins sim`` process under
``/usr/bin/time`` (wall time and peak RSS of the whole command), writing into ``--out`` (removed afterwards unless
``--keep``); rows are counted from the written Parquet files' metadata, bytes on disk are the events folder's. Each
run's result is kept in ``--out`` as ``bench-sim-<machines>-<case>.json``, and the table in BENCHMARKS.md holds every
result found there, so the long runs can be made one at a time. Results go to MLflow (experiment ``bench-sim``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from experiments.report import write_section

CONFIG = "configs/sim/market.yaml"
BASE = ["days=365", "horizon_days=0", "telemetry.every_days=7"]


def run_cli(n: int, overrides: list[str], out: Path) -> dict:
    """``twins sim`` of ``n`` machines into ``out``: wall time, peak RSS, chunks, buckets, rows, bytes."""
    import pyarrow.parquet as pq

    from twins.data.events import bucket_files
    from twins.sim import load_config
    from twins.sim.memory import chunk_plan

    sets = [*overrides, f"n_machines={n}"]
    cfg = load_config(CONFIG, sets)
    plan = chunk_plan(cfg)
    stats = out.parent / f".{out.name}.time"
    cmd = ["/usr/bin/time", "-f", "%e %M", "-o", str(stats), sys.executable, "-m", "twins.cli", "sim", CONFIG,
           *[a for s in sets for a in ("--set", s)], "--out", str(out)]
    subprocess.run(cmd, check=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    wall, rss_kib = stats.read_text().split()[-2:]
    stats.unlink()
    buckets = bucket_files(out)
    return {"n_machines": n, "days": cfg.days + cfg.horizon_days, "every_days": cfg.telemetry.every_days,
            "overrides": sets, "chunks": plan.chunks, "buckets": len(buckets), "wall_s": float(wall),
            "peak_rss_gib": int(rss_kib) / 2**20,
            "events": sum(pq.ParquetFile(f).metadata.num_rows for f in buckets),
            "truth_rows": pq.ParquetFile(out / "truth.parquet").metadata.num_rows,
            "events_bytes": sum(f.stat().st_size for f in buckets),
            "folder_bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
            "estimated_peak_gib": plan.peak_bytes / 2**30, "estimated_rows": plan.rows,
            "config": cfg.model_dump(mode="json")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000], help="weekly readings, 365 days")
    ap.add_argument("--repo-sizes", type=int, nargs="*", default=[1_000_000], help="the repo config as it is")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()), help="folder to write the markets in")
    ap.add_argument("--keep", action="store_true", help="keep the written markets")
    args = ap.parse_args()

    from twins import tracking
    from twins.config import redact

    for n, base in [*((n, BASE) for n in args.sizes), *((n, []) for n in args.repo_sizes)]:
        out = args.out / f"bench-sim-{n}-{'weekly' if base else 'repo'}"
        r = run_cli(n, [*base, *args.overrides], out)
        if not args.keep:
            shutil.rmtree(out)
        tags = {"dataset": "simulated-market", "protocol": "twins sim end to end", "model": "twins.sim"}
        with tracking.run("bench-sim", f"sim-{n}-{r['days']}d", tags=tags) as mlflow:
            tracking.log_params(mlflow, {"config": r["config"], "overrides": r["overrides"]})
            mlflow.log_dict(redact(r["config"]), "market_config.json")
            tracking.log_metrics(mlflow, {k: v for k, v in r.items() if isinstance(v, (int, float))}
                                 | {"rows_per_s": r["events"] / r["wall_s"],
                                    "machine_days_per_s": n * r["days"] / r["wall_s"]})
            r["run_id"] = mlflow.active_run().info.run_id
        out.with_suffix(".json").write_text(json.dumps(r) + "\n")
        print(f"{n:,} machines x {r['days']} days (readings every {r['every_days']} d): {r['wall_s']:.0f} s, "
              f"{r['events']:,} rows, {r['folder_bytes'] / 2**30:.2f} GiB, peak {r['peak_rss_gib']:.2f} GiB", flush=True)

    results = sorted((json.loads(f.read_text()) for f in args.out.glob("bench-sim-*.json")),
                     key=lambda r: (r["every_days"] != 7, r["n_machines"]))
    run_ids = [r["run_id"] for r in results]
    rows = "\n".join(
        f"| {r['n_machines']:,} | {r['days']} | {r['every_days']} d | {r['chunks']} | {r['buckets']} | "
        f"{r['wall_s']:.0f} s | {r['events']:,} | {r['events'] / r['wall_s'] / 1e6:.2f} M | "
        f"{r['folder_bytes'] / 2**30:.2f} GiB ({r['events_bytes'] / r['events']:.1f} B/row) | "
        f"{r['peak_rss_gib']:.2f} GiB ({r['estimated_peak_gib']:.2f}) |" for r in results)
    body = f"""`twins sim {CONFIG} --set n_machines=N ...` end to end, one process per run under `/usr/bin/time`
(`--threads` not set: `$TWINS_THREADS`=1 in the runs below): machines 50 % bound (30 % of them periodic review),
30 % adaptable, 20 % autonomous, half of them sending stock and usage readings; 1,000 human shoppers. Weekly runs:
`{' '.join(BASE)}`; repo-config runs: the config as it is (365 days observed + 120 days of truth horizon, daily
readings). The market is simulated in chunks of about 6 M event rows (`twins.sim.memory.chunk_plan`), each chunk's
canonical events written as part files per bucket, then each bucket sorted by customer and time into
`events.parquet/bucket-NNNNN.parquet`; truth appended chunk by chunk. Time = the whole command (simulate, events,
buckets, truth, offers, publish); rows counted from the Parquet metadata; disk = the published folder; peak = peak
RSS of the command (the estimate `twins sim` plans with in brackets).

| machines | days | readings | chunks | buckets | time | event rows | rows/s | on disk | peak memory (estimate) |
|---|---|---|---|---|---|---|---|---|---|
{rows}

Before chunking, the events were one frame (about 470 B a row at peak): 100,000 machines of the repo config needed
about 23 GiB and were refused. MLflow runs {', '.join(f'`{i}`' for i in run_ids)} (experiment `bench-sim`; the
resolved config is logged as params and `market_config.json`)."""
    write_section("sim-throughput", "Market simulator throughput", "python -m experiments.bench_sim",
                  "simulated market (configs/sim/market.yaml)", body)


if __name__ == "__main__":
    main()
