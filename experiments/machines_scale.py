"""Machine twins at scale: ``twins sim`` of a fleet with weekly readings, then ``twins machines`` on it, each one
``twins`` process at one thread, with its wall time and the peak of the summed RSS of its whole process tree.

    python -m experiments.machines_scale --machines 100000 --home /work/big/scratch_C/m100k
    python -m experiments.machines_scale --machines 100000 --home ... --steps machines   # rebuild on the same fleet
    python -m experiments.machines_scale --machines 1000000 --home ... --steps bucket      # phase 1, then bucket 0 alone
    python -m experiments.machines_scale --machines 1000000 --home ... --plan 15000000     # a cluster plan from them

Protocol. The market is ``configs/sim/market.yaml`` with ``days=365 horizon_days=0 telemetry.every_days=7`` (the
weekly runs of BENCHMARKS "Market simulator throughput") and ``name=fleet``, written into ``--home``'s event store
(``$TWINS_HOME=--home``). Each step runs as ``python -m twins.cli --threads 1`` with every library at one thread;
memory is sampled with psutil every 0.2 s as the sum of the RSS of the command's process and all its descendants
(the peak of that sum is reported). Per bucket: the local engine runs the buckets one after another, so a bucket's
cost is the wall time over the buckets; each bucket's rows come from its Parquet metadata. The result is one JSON
file per step in ``--home`` (``machines_scale-<step>.json``), printed too. ``--steps bucket`` measures the two phases
of ``build_store_machines`` on their own in one child process (the same tree sampling): phase 1 (every bucket's
price counts, timed per bucket, and their combine into the item medians, with the counts' size: what the driver
gathers), then phase 2 on bucket ``--bucket`` alone, its twins written as parts; for a fleet too large to build whole
in the time at hand, its cost is then phase 1 + buckets x a bucket + the snapshot merges.

``--plan N`` prints a cluster plan for N machines from ``--home``'s measurements (markdown): buckets the size of the
measured one, phase 1 and phase 2 at their measured seconds per bucket on one core each, and the one process that
does not split by bucket (combine, snapshot merges, start) at the whole command's wall time less its buckets' work,
scaled with N (when the whole command was measured there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEEKLY = ["days=365", "horizon_days=0", "telemetry.every_days=7", "name=fleet"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "TWINS_THREADS": "1", "POLARS_MAX_THREADS": "1", "MKL_NUM_THREADS": "1",
              "OPENBLAS_NUM_THREADS": "1"}


def tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of process ``pid`` and every descendant alive now."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(args: list[str], home: Path, cmd: list[str] | None = None) -> dict:
    """Run ``twins <args>`` (or ``cmd``) in ``home``: wall seconds, peak summed RSS of the process tree (GiB)."""
    env = {**os.environ, **ONE_THREAD, "TWINS_HOME": str(home)}
    cmd = cmd or [sys.executable, "-m", "twins.cli", "--threads", "1", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"twins {' '.join(args)} failed ({proc.returncode}):\n{out[-4000:]}")
    return {"command": " ".join(cmd[2:]), "wall_s": round(wall, 2),
            "peak_tree_gib": round(peak[0] / 2**30, 3), "output": out[-2000:]}


def phases(events: Path, bucket: int, parts: Path) -> dict:
    """Phase 1 of ``build_store_machines`` on every bucket and its combine, then phase 2 on ``bucket``: seconds."""
    from twins.data.events import bucket_files
    from twins.sim.store import observed_as_of
    from twins.twin.behaviour import item_medians
    from twins.twin.machine import bucket_machines, bucket_price_counts, fleet_state

    as_of, out = observed_as_of(events), {"counts_s": [], "counts_rows": 0, "counts_bytes": 0}
    buckets = len(bucket_files(events))
    counts = []
    for b in range(buckets):
        t0 = time.perf_counter()
        counts.append(bucket_price_counts((events, b, as_of, 3)))
        out["counts_s"].append(round(time.perf_counter() - t0, 2))
    out |= {"counts_rows": sum(c.height for c in counts), "counts_bytes": sum(c.estimated_size() for c in counts)}
    t0 = time.perf_counter()
    medians = item_medians(counts)
    out |= {"combine_s": round(time.perf_counter() - t0, 3), "items": medians.height}
    offers = events / "offers.parquet"
    t0 = time.perf_counter()
    behaviour, machine = bucket_machines(fleet_state(None, offers if offers.exists() else None),
                                         (events, bucket, as_of, 3, medians, parts))
    out |= {"bucket": bucket, "bucket_s": round(time.perf_counter() - t0, 2),
            "bucket_machine_twins": 0 if machine is None else pl_rows(machine),
            "bucket_behaviour_twins": 0 if behaviour is None else pl_rows(behaviour)}
    return out


def pl_rows(file: Path) -> int:
    import polars as pl

    return pl.scan_parquet(file).select(pl.len()).collect().item()


def plan(home: Path, n: int, workers: tuple[int, ...] = (8, 32, 128)) -> str:
    """The cluster plan for ``n`` machines from ``home``'s ``bucket`` (and ``machines``) measurements."""
    import math

    b = json.loads((home / "machines_scale-bucket.json").read_text())
    whole = home / "machines_scale-machines.json"
    phase1 = sum(b["counts_s"]) / len(b["counts_s"])  # seconds a bucket
    per_bucket = b["machines"] / len(b["bucket_rows"])  # machines a bucket
    buckets = math.ceil(n / per_bucket)
    tail = None
    if whole.exists():  # the whole command less its buckets' work: start, combine, merges (one process)
        w = json.loads(whole.read_text())
        tail = max(w["wall_s"] - len(b["bucket_rows"]) * (phase1 + b["bucket_s"]), 0.0) * n / b["machines"]
    core_h = buckets * (phase1 + b["bucket_s"]) / 3600
    header = ("| workers (1 core each) | buckets | phase 1 + phase 2 | one process (start, combine, merges) | total | "
              "memory per worker |")
    lines = [header, "|---|---|---|---|---|---|"]
    for k in workers:
        rounds = math.ceil(buckets / k)
        work = rounds * (phase1 + b["bucket_s"]) / 3600
        one = "-" if tail is None else f"{tail / 3600:.2f} h"
        total = work + (tail or 0.0) / 3600
        lines.append(f"| {k} | {buckets:,} ({rounds} a worker) | {work:.2f} h | {one} | {total:.2f} h | "
                     f"{b['peak_tree_gib']:.2f} GiB |")
    cost = (f"Core-hours of the buckets' work: {core_h:.1f} ({phase1:.1f} s + {b['bucket_s']:.1f} s a bucket of "
            f"{per_bucket:,.0f} machines, {b['bucket_rows'][b['bucket']]:,} rows).")
    return "\n".join([*lines, "", cost])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, required=True)
    ap.add_argument("--home", type=Path, required=True, help="TWINS_HOME of the run (the fleet's events and twins)")
    ap.add_argument("--steps", nargs="+", default=["sim", "machines"], choices=["sim", "machines", "bucket"])
    ap.add_argument("--bucket", type=int, default=0, help="the bucket --steps bucket builds")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the measured process of --steps bucket
    ap.add_argument("--plan", type=int, help="print a cluster plan for this many machines from --home's results")
    args = ap.parse_args()
    if args.plan:
        print(plan(args.home, args.plan))
        return
    if args.child:
        parts = args.home / "bucket_parts"
        parts.mkdir(exist_ok=True)
        print("RESULT " + json.dumps(phases(args.home / "events" / "fleet", args.bucket, parts)))
        return
    args.home.mkdir(parents=True, exist_ok=True)
    import polars as pl

    from twins.data.events import bucket_files

    events = args.home / "events" / "fleet"
    for name in args.steps:
        if name == "sim":
            sets = [a for s in [*WEEKLY, f"n_machines={args.machines}"] for a in ("--set", s)]
            result = measure(["sim", str(REPO / "configs/sim/market.yaml"), *sets], args.home)
        elif name == "bucket":
            result = measure([], args.home, [sys.executable, "-m", "experiments.machines_scale", "--machines",
                                             str(args.machines), "--home", str(args.home), "--bucket",
                                             str(args.bucket), "--child"])
            result |= json.loads(result["output"].split("RESULT ")[-1])
        else:
            result = measure(["machines", "fleet"], args.home)
            snap = max((args.home / "store" / "fleet" / "machine").glob("*/v*"))
            result["machine_twins"] = pl.scan_parquet(snap / "twins.parquet").select(pl.len()).collect().item()
            result["machines_per_s"] = round(args.machines / result["wall_s"], 1)
        rows = [pl.scan_parquet(f).select(pl.len()).collect().item()
                for f in bucket_files(events)]
        result |= {"machines": args.machines, "events": sum(rows), "bucket_rows": rows}
        (args.home / f"machines_scale-{name}.json").write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "output"}, indent=1), flush=True)


if __name__ == "__main__":
    main()
