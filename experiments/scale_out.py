"""Scale-out costs: ingest -> build -> score on a large generated log, bucket by bucket, on the local engine and on
Ray at 1 and 2 local workers; twins equality for 1 bucket vs many; and a cluster plan from the measured costs.

    python -m experiments.scale_out --source /work/big/log10m/source.yaml                  # local, ray:1, ray:2
    python -m experiments.scale_out --source /work/big/log100m/source.yaml --engines local # the largest log, local only

Protocol. Every step is its own ``twins`` process under ``/usr/bin/time -v`` at one thread (``--threads 1``,
``POLARS_MAX_THREADS=1``; Ray workers run one thread each): ``twins ingest`` (buckets by the ingest's default: 2M
input rows each), ``twins build --as-of AS_OF`` (customer twins with the BG/NBD + Gamma-Gamma outlook over 91
days) and ``twins score`` with a purchase-outlook ONNX bundle (BG/NBD + Gamma-Gamma with CDNOW's published
parameters: the cheapest real scorer, 10,000 customers a chunk). Wall time, rows/s and the peak memory of the whole
command: the RSS of its process and every descendant (fresh worker processes, a local Ray's raylet and workers)
summed, sampled with psutil every 0.2 s (an upper bound: pages shared between processes count once per process),
beside the largest single process's peak from ``time -v``; on Ray also each worker's peak RSS.
Outputs of every engine (event buckets, twins, scores) are compared by sha256. Per bucket: the step's time and
peak over the buckets (a bucket's work runs in one process at a time). The global outlook fit is timed on its own
(the one step that does not split by bucket). Twins equality: the first monthly files of the log (at least
``--sample-lines`` lines) ingested as 1 bucket and as 8, built with the same ``as_of``: equal frames (every column,
every digit, same order), and equal to the in-memory builder on the whole sample. Machine twins: ``twins sim`` of
``--machines`` machines and ``twins machines`` on them (machines/s, peak RSS). MLflow experiment ``scale-out``;
the table goes to BENCHMARKS.md (section ``scale-out-<log name>``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import yaml

from experiments.report import write_section

REPO = Path(__file__).resolve().parents[1]
TWINS = [sys.executable, "-m", "twins.cli"]  # the twins command of this interpreter
PROTOCOL = ("Protocol: each step is one `twins --threads 1 --engine E` process under `/usr/bin/time -v`, run alone "
            "among the heavy jobs of this shared 2-core machine (flock), cold Ray start included in every ray step. "
            "Peak memory = the RSS of the command's process and all its descendants (fresh worker processes, a local "
            "Ray's raylet and workers) summed, sampled with psutil every 0.2 s (an upper bound: pages shared between "
            "processes count once each); beside it the largest single process's peak (`time -v`), and each Ray "
            "worker's peak (psutil). Score: a purchase-outlook ONNX bundle (BG/NBD + Gamma-Gamma, CDNOW's published "
            'parameters), chunks of 10,000 customers. "Same output": sha256 of the event buckets, the twins snapshot and '
            "the scores equal to the local engine's.")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "TWINS_THREADS": "1", "POLARS_MAX_THREADS": "1", "MKL_NUM_THREADS": "1",
              "OPENBLAS_NUM_THREADS": "1"}


def _peaks(root: int, stop: threading.Event, out: dict) -> None:
    """Until ``stop``, every 0.2 s: the summed RSS of process ``root`` and all its descendants (a fresh worker
    process, a local Ray's raylet and workers), and each Ray worker's own (``ray::`` in its title, wherever it
    runs); the peaks go to ``out``."""
    import psutil

    top = psutil.Process(root)
    while not stop.is_set():
        total = 0
        try:
            tree = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for proc in tree:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        out["tree"] = max(out.get("tree", 0), total)
        out["processes"] = max(out.get("processes", 0), len(tree))
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.info["cmdline"] and proc.info["cmdline"][0].startswith("ray::"):
                    out["workers"][proc.pid] = max(out["workers"].get(proc.pid, 0), proc.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        stop.wait(0.2)


def step(args: list[str], home: Path, log: Path, engine: str, workers: int | None) -> dict:
    """One ``twins`` command under /usr/bin/time -v: wall seconds, the peak summed RSS of its process tree (GiB,
    sampled), the largest single process's peak (time -v) and the Ray workers' peaks."""
    cmd = ["/usr/bin/time", "-v", *TWINS, "--threads", "1", "--engine", engine,
           *(["--workers", str(workers)] if workers else []), *args]
    env = {**os.environ, **ONE_THREAD, "TWINS_HOME": str(home), "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    peaks: dict = {"workers": {}}
    stop = threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    sampler = threading.Thread(target=_peaks, args=(proc.pid, stop, peaks), daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{stdout}\n{stderr}\n")
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}); see {log}")
    largest = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1)) / 2**20
    return {"wall_s": wall, "peak_gib": peaks.get("tree", 0) / 2**30, "largest_gib": largest,
            "processes": peaks.get("processes", 0), "worker_peak_gib": max(peaks["workers"].values(), default=0) / 2**30,
            "workers_seen": len(peaks["workers"])}


def sha(files: list[Path]) -> str:
    h = hashlib.sha256()
    for file in files:
        h.update(file.read_bytes())
    return h.hexdigest()[:16]


def outlook_bundle(folder: Path) -> Path:
    """A purchase-outlook bundle with CDNOW's published BG/NBD and Gamma-Gamma estimates (91-day horizon)."""
    from twins.models.btyd import BetaGeoModel, GammaGammaModel
    from twins.models.outlook_export import export_outlook

    if (folder / "manifest.json").exists():
        return folder
    bg = BetaGeoModel.from_params({"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426})
    gg = GammaGammaModel.from_params({"p": 6.25, "q": 3.74, "gamma": 15.44})
    return export_outlook(bg, gg, folder, horizon_days=91.0)


def chain(source: Path, name: str, home: Path, bundle: Path, as_of: str, engine: str, workers: int | None,
          log: Path) -> dict:
    """ingest -> build -> score in ``home`` on one engine; each step's figures and the outputs' digests."""
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    steps = {"ingest": ["ingest", str(source), "--no-track"],
             "build": ["build", str(source), "--as-of", as_of, "--no-track"],
             "score": ["score", str(bundle), "--source", name, "--out", str(home / "scores.parquet"), "--allow-future"]}
    out = {}
    for s, args in steps.items():
        out[s] = step(args, home, log, engine, workers)
        print(engine, workers or "", s, json.dumps(out[s]), flush=True)
    events = sorted((home / "events" / name / "events.parquet").glob("bucket-*.parquet"))
    snapshot = next((home / "store" / name / "customer").glob("*/v*/twins.parquet"))  # twins.paths.store_dir
    report = json.loads((home / "events" / name / "report.json").read_text())
    out |= {"buckets": len(events), "rows": report["accepted"], "lines": report["rows_in"],
            "customers": pl.scan_parquet(snapshot).select(pl.len()).collect().item(),
            "bucket_rows": [pl.scan_parquet(f).select(pl.len()).collect().item() for f in events],
            "digests": {"events": sha(events), "twins": sha([snapshot]), "scores": sha([home / "scores.parquet"])},
            "snapshot": str(snapshot)}
    return out


def fit_cost(home: Path, name: str, as_of: str) -> dict:
    """The global outlook fit alone: every bucket's inputs gathered (their bytes: what the driver holds), then
    ``fit_population``, timed in this process."""
    from datetime import datetime, timezone

    from twins.twin.customer import TwinParams, bucket_outlook_inputs, fit_population

    when = datetime.fromisoformat(as_of).replace(tzinfo=timezone.utc)
    folder, p = home / "events" / name, TwinParams()
    files = sorted((folder / "events.parquet").glob("bucket-*.parquet"))
    t0 = time.perf_counter()
    inputs = [bucket_outlook_inputs((folder, b, when, p, None)) for b in range(len(files))]
    gather = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit_population(inputs, when, p)
    return {"inputs_s": gather, "fit_s": time.perf_counter() - t0, "customers": sum(f.height for f in inputs),
            "summary_bytes": sum(f.estimated_size() for f in inputs)}


def sample_equality(source: Path, lines: int, work: Path, as_of: str, log: Path) -> dict:
    """The first monthly files (>= ``lines`` lines) as 1 bucket and as 8: equal customer twins, and equal to the
    in-memory builder on the whole sample."""
    from datetime import datetime, timezone

    from polars.testing import assert_frame_equal

    from twins.data.events import scan_events
    from twins.twin.customer import TwinParams, build_customer_twins

    cfg = yaml.safe_load(source.read_text())
    files, n = [], 0
    for file in sorted(source.parent.glob(cfg["files"][0]["path"])):
        files.append(file)
        with file.open("rb") as f:
            n += sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b"")) - 1
        if n >= lines:
            break
    frames = {}
    for buckets in (1, 8):
        home = work / f"sample{buckets}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        sample = dict(cfg, name="sample", files=[{"path": str(f)} for f in files], buckets=buckets)
        (home / "sample.yaml").write_text(yaml.safe_dump(sample))
        step(["ingest", str(home / "sample.yaml"), "--no-track"], home, log, "local", None)
        step(["build", str(home / "sample.yaml"), "--as-of", as_of, "--no-track"], home, log, "local", None)
        snap = next((home / "store" / "sample" / "customer").glob("*/v*/twins.parquet"))
        frames[buckets] = (pl.read_parquet(snap), home)
    (one, home1), (many, _) = frames[1], frames[8]
    assert_frame_equal(one, many)
    when = datetime.fromisoformat(as_of).replace(tzinfo=timezone.utc)
    memory = build_customer_twins(scan_events(home1 / "events" / "sample"), when, TwinParams())
    assert_frame_equal(one, memory)
    return {"lines": n, "files": len(files), "customers": one.height, "columns": one.width, "equal": True}


def machines_cost(n: int, work: Path, log: Path) -> dict:
    """``twins sim`` of ``n`` machines (the repo's market, 365 days observed) and ``twins machines`` on it: machine
    twins per second and peak RSS, one thread."""
    home = work / f"fleet{n}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    sim = step(["sim", str(REPO / "configs/sim/market.yaml"), "--set", f"n_machines={n}", "--set", "name=fleet"],
               home, log, "local", None)
    build = step(["machines", "fleet"], home, log, "local", None)
    store = home / "store" / "fleet"
    twins = pl.scan_parquet(next((store / "machine").glob("*/v*/twins.parquet"))).select(pl.len()).collect().item()
    events = pl.scan_parquet(home / "events" / "fleet" / "events.parquet").select(pl.len()).collect().item()
    return {"machines": n, "twins": twins, "events": events, "sim": sim, "build": build,
            "rate": n / build["wall_s"]}


def plan_rows(local: dict, fit: dict) -> list[str]:
    """Cluster plan for 1B events / 10M customers from the measured per-core rates (one thread per worker)."""
    rows, customers = 1_000_000_000, 10_000_000
    ingest_rate = local["ingest"]["rows_rate"]
    build_rate = local["build"]["rows_rate"]
    score_rate = local["score"]["customers_rate"]
    core_h = {"ingest": rows / ingest_rate / 3600, "build": rows / build_rate / 3600,
              "score": customers / score_rate / 3600}
    per_customer_fit = fit["fit_s"] / fit["customers"]
    fit_h = per_customer_fit * customers / 3600
    summary_gib = fit["summary_bytes"] / fit["customers"] * customers / 2**30
    peak = max(local[s]["peak_gib"] for s in ("ingest", "build", "score"))
    bucket_rows = max(local["bucket_rows"])
    out = ["| workers (1 core, 1 thread each) | ingest | build (+ one fit) | score | total | memory per worker |",
           "|---|---|---|---|---|---|"]
    for workers in (8, 32, 128):
        hours = [core_h["ingest"] / workers, core_h["build"] / workers + fit_h, core_h["score"] / workers]
        out.append(f"| {workers} | {hours[0]:.2f} h | {hours[1]:.2f} h | {hours[2]:.2f} h | {sum(hours):.2f} h | "
                   f"{peak:.1f} GiB at {bucket_rows / 1e6:.1f}M rows a bucket |")
    out += ["", f"Core-hours (sum over workers): ingest {core_h['ingest']:.1f}, build {core_h['build']:.1f}, score "
            f"{core_h['score']:.1f}. Not split by bucket: the outlook's one fit ({per_customer_fit * 1e6:.1f} µs a "
            f"customer here, so about {fit_h:.2f} h on one core for 10M customers if it stays linear) and the driver's "
            f"collection of every customer's summary (about {summary_gib:.2f} GiB for 10M), and the one process that "
            "merges the buckets' twins into the snapshot (streaming: time, not memory)."]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--engines", nargs="+", default=["local", "ray:1", "ray:2"], help="local, ray:N (N workers)")
    parser.add_argument("--as-of", default="2025-10-01")
    parser.add_argument("--sample-lines", type=int, default=1_000_000, help="0: no equality check")
    parser.add_argument("--work", type=Path, default=Path("/tmp/scale_out"))
    parser.add_argument("--machines", type=int, default=10_000, help="machine twins cost on a simulated fleet; 0: skip")
    args = parser.parse_args(argv)
    cfg = yaml.safe_load(args.source.read_text())
    name, work = cfg["name"], args.work / cfg["name"]
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    bundle = outlook_bundle(work / "outlook-bundle")
    results = {}
    for spec in args.engines:
        engine, _, n = spec.partition(":")
        r = chain(args.source.resolve(), name, work / spec.replace(":", "-"), bundle, args.as_of, engine,
                  int(n) if n else None, log)
        for s in ("ingest", "build"):
            r[s]["rows_rate"] = r["rows"] / r[s]["wall_s"]
        r["score"]["customers_rate"] = r["customers"] / r["score"]["wall_s"]
        results[spec] = r
        print(spec, json.dumps({k: v for k, v in r.items() if k != "bucket_rows"}, default=str), flush=True)
    first = next(iter(results))
    fit = fit_cost(work / first.replace(":", "-"), name, args.as_of)
    sample = sample_equality(args.source.resolve(), args.sample_lines, work, args.as_of, log) if args.sample_lines else None
    fleet = machines_cost(args.machines, work, log) if args.machines else None

    from twins import tracking

    with tracking.run("scale-out", f"scale-out-{name}", tags={"dataset": name}) as mlflow:
        mlflow.log_params({"source": str(args.source), "engines": " ".join(args.engines), "as_of": args.as_of})
        for spec, r in results.items():
            tag = spec.replace(":", "_")
            for s in ("ingest", "build", "score"):
                mlflow.log_metrics({f"{tag}/{s}/wall_s": r[s]["wall_s"], f"{tag}/{s}/peak_gib": r[s]["peak_gib"],
                                    f"{tag}/{s}/largest_gib": r[s]["largest_gib"],
                                    f"{tag}/{s}/worker_peak_gib": r[s]["worker_peak_gib"]})
        mlflow.log_metrics({"fit/fit_s": fit["fit_s"], "fit/summary_bytes": fit["summary_bytes"]})
        mlflow.log_dict({"results": results, "fit": fit, "sample": sample, "fleet": fleet}, "scale_out.json")

    base = results[first]
    lines = [f"Log `{name}`: {base['lines']:,} lines, {base['rows']:,} accepted events, {base['customers']:,} "
             f"customers, {base['buckets']} buckets ({min(base['bucket_rows']):,}-{max(base['bucket_rows']):,} rows "
             f"each); twins as of {args.as_of}.", "", PROTOCOL, "",
             "| engine | step | wall | rows/s (customers/s for score) | peak RSS, all processes summed | largest process | "
             "peak RSS per Ray worker | per bucket (wall / buckets) | same output as local |",
             "|---|---|---|---|---|---|---|---|---|"]
    for spec, r in results.items():
        for s, what in (("ingest", "events"), ("build", "twins"), ("score", "scores")):
            rate = r[s].get("rows_rate") or r[s]["customers_rate"]
            worker = f"{r[s]['worker_peak_gib']:.2f} GiB ({r[s]['workers_seen']} processes)" if spec != "local" else "-"
            same = "yes" if r["digests"][what] == results[first]["digests"][what] else "**no**"
            lines.append(f"| {spec} | {s} | {r[s]['wall_s']:.0f} s | {rate:,.0f} | {r[s]['peak_gib']:.2f} GiB "
                         f"({r[s]['processes']} processes at most) | {r[s]['largest_gib']:.2f} GiB | {worker} | "
                         f"{r[s]['wall_s'] / r['buckets']:.1f} s | {same if spec != first else '-'} |")
    if "local" in results:
        for spec, r in results.items():
            if spec != "local":
                overhead = {s: r[s]["wall_s"] / results["local"][s]["wall_s"] for s in ("ingest", "build", "score")}
                lines.append(f"\n{spec} against local (wall ratio): " + ", ".join(f"{s} {v:.2f}x" for s, v in overhead.items()))
    lines += ["", f"Global outlook fit (not split by bucket): gathering every bucket's summaries {fit['inputs_s']:.1f} s, "
              f"the BG/NBD + Gamma-Gamma fit {fit['fit_s']:.1f} s on {fit['customers']:,} customers; the summaries "
              f"take {fit['summary_bytes'] / 2**20:.1f} MiB in the driver."]
    if sample:
        lines += ["", f"Twins equality: the first {sample['files']} monthly files ({sample['lines']:,} lines, "
                  f"{sample['customers']:,} customers, {sample['columns']} columns incl. the outlook) as 1 bucket and as 8: "
                  "equal to the last digit, row for row (sorted by customer id), and equal to the in-memory builder "
                  "(`build_customer_twins` on the whole sample)."]
    if "local" in results:
        lines += ["", "### Cluster plan: 1B events, 10M customers (from the local per-core rates above)", "",
                  *plan_rows(results["local"], fit)]
    if fleet:
        b = fleet["build"]
        core_h = 15_000_000 / fleet["rate"] / 3600
        lines += ["", f"### Machine twins: {fleet['machines']:,} simulated machines, and a plan for 15M", "",
                  f"`twins sim configs/sim/market.yaml --set n_machines={fleet['machines']}` ({fleet['events']:,} events, "
                  f"{fleet['sim']['wall_s']:.0f} s), then `twins machines fleet`: {fleet['twins']:,} machine twins (plus "
                  f"behaviour twins) in {b['wall_s']:.0f} s, {fleet['rate']:,.0f} machines/s on one core, peak "
                  f"{b['peak_gib']:.2f} GiB. 15M machines: {core_h:.1f} core-hours, so "
                  + ", ".join(f"{w} workers {core_h / w:.2f} h" for w in (8, 32, 128))
                  + f"; memory per worker set by a bucket (here {fleet['machines']:,} machines in one: "
                  f"{b['peak_gib']:.2f} GiB). Not split by bucket: the behaviour twins' item medians (one table of "
                  "(item, price, count) rows) and the merge of the machine twins in the driver (today one frame)."]
    write_section(f"scale-out-{name}", f"Scale-out: {name} bucket by bucket, local and Ray",
                  f"python -m experiments.scale_out --source {args.source} --engines {' '.join(args.engines)}",
                  f"{args.source.parent} (experiments.retail_log)", "\n".join(lines))


if __name__ == "__main__":
    main()
