"""Batch scoring of a whole twin snapshot to Parquet (``twins score``): nightly sales lists, outlooks.

Customers are scored in chunks: each chunk reads only its customers' events before the snapshot's ``as_of``,
asks the bundle (``SCORERS[task]``) and is written as one Parquet part. Parts live in a hidden folder beside the
output (``.<name>.parts/``) with a ``job.json`` naming the model, the snapshot and the parameters; when every
part is there they are combined into a temporary file that is fsynced and renamed over the output. A killed or
failed run therefore leaves the previous output untouched, and the same command run again skips the parts already
written and completes it; a different job (another model version, snapshot or parameter) starts its parts afresh.
A run holds ``.<name>.lock`` beside the output (``twins.publish``): a second run on the same output is refused.
A bundle of the snapshot's source fitted on events at or after the snapshot's ``as_of`` is refused before any
scoring (``twins.provenance``): it has seen the customers' future; ``allow_future`` scores it with a warning.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

from twins import paths, publish
from twins.data.events import baskets_by_customer, bucket_files, bucket_of, scan_events
from twins.engine import Engine, get_engine, worth_a_process
from twins.evaluate.outlook import purchase_lines
from twins.models.replenishment import histories, machine_keys, runtime_inputs
from twins.provenance import check_fitted_before
from twins.runtime import Bundle, load
from twins.runtime.bundle import PLAIN_NAME
from twins.twin.store import TwinStore, merge_parts

JOB_FILE = "job.json"


@dataclass(frozen=True)
class ScoreReport:
    out: Path
    rows: int
    chunks: int
    resumed_chunks: int
    seconds: float
    task: str
    model_sha256: str


def _next_basket(bundle, events: pl.LazyFrame, ids: list[str], as_of: datetime | None, k: int, **_) -> pl.DataFrame:
    histories = baskets_by_customer(events)
    recs = bundle.recommend([histories.get(i, []) for i in ids], k=k)
    return pl.DataFrame({"customer_id": ids, "items": [[i for i, _ in r] for r in recs],
                         "scores": [[s for _, s in r] for r in recs]},
                        schema={"customer_id": pl.String, "items": pl.List(pl.String), "scores": pl.List(pl.Float64)})


def _outlook(bundle, events: pl.LazyFrame, ids: list[str], as_of: datetime | None, horizon_days: float | None = None,
             **_) -> pl.DataFrame:
    """Purchases as (time, amount) lines and returns as negative amounts, as ``twins.evaluate.outlook`` counts them."""
    if as_of is None:
        raise ValueError("the purchase outlook needs event times; this snapshot has no as_of (an order-only source)")
    by_id = purchase_lines(events)
    answers = bundle.score([by_id.get(i, []) for i in ids], as_of, horizon_days)
    return pl.DataFrame([{"customer_id": i, **a} for i, a in zip(ids, answers)],
                        schema_overrides={"next_purchase": pl.Datetime("us", "UTC"),
                                          "next_purchase_low": pl.Datetime("us", "UTC"),
                                          "next_purchase_high": pl.Datetime("us", "UTC")})


def _replenishment(bundle, events: pl.LazyFrame, ids: list[str], as_of: datetime | None, **_) -> pl.DataFrame:
    """Each machine and consumable of the chunk's customers (``twins.models.replenishment``: ``machine`` is the
    customer id, or ``<customer>/<item>`` for a machine that orders several items) -> its next order, with
    intervals; a customer without machine orders gets one row with ``known`` False."""
    if as_of is None:
        raise ValueError("replenishment forecasts need event times; this snapshot has no as_of")
    keys = machine_keys(events)
    seen = set(keys["customer_id"].to_list())
    rows = [*keys.iter_rows(), *((c, c, None) for c in ids if c not in seen)]
    orders, readings = runtime_inputs(histories(events), [machine for machine, _, _ in rows])
    answers = bundle.forecast(orders, as_of, readings)
    times = {k: pl.Datetime("us", "UTC") for k in ("next_order", "next_order_low", "next_order_high")}
    return pl.DataFrame([{"machine": m, "customer_id": c, "item_id": i, **a} for (m, c, i), a in zip(rows, answers)],
                        schema_overrides=times | {"item_id": pl.String} | {k: pl.Float64 for k in (
                            "days", "days_low", "days_high", "quantity", "quantity_low", "quantity_high")})


#: task -> scorer(bundle, events of the chunk's customers before as_of, ids, as_of, **params) -> one row per id
SCORERS: dict[str, Callable[..., pl.DataFrame]] = {"next_basket": _next_basket, "next_basket_net": _next_basket,
                                                   "purchase_outlook": _outlook, "purchase_outlook_net": _outlook,
                                                   "replenishment": _replenishment}
#: task -> the twin kind whose snapshot lists the ids to score (its customer_id column); default: customer twins
KINDS = {"replenishment": "machine"}


def default_out(source: str, bundle: Bundle) -> Path:
    """``$TWINS_HOME/scores/<source>/<bundle name>.parquet``, refused (``ValueError``) when the manifest's name is
    not one plain file name or the path would lead out of the scores folder: a bundle never picks where to write."""
    name = bundle.manifest["name"]
    if not PLAIN_NAME.match(name):
        raise ValueError(f"{bundle.path / 'manifest.json'}: name {name!r} cannot name the output file (letters, "
                         "digits, '_', '.', '+', '-', not starting with '.'); pass --out to choose the output file")
    root = paths.twins_home() / "scores"
    out = root / source / f"{name}.parquet"
    if not out.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{out}: leads outside {root}; pass --out to choose the output file")
    return out


def score_store(model: str | Path, source: str, out: str | Path | None = None, *, snapshot: str | None = None,
                chunk_size: int = 10_000, k: int = 10, horizon_days: float | None = None,
                on_chunk: Callable[[int, int], None] | None = None, allow_future: bool = False,
                engine: Engine | str | None = None) -> ScoreReport:
    """Score every twin of ``source``'s latest (or named) snapshot with ``model`` (a bundle folder or
    ``models:/NAME@ALIAS``) and write its rows to ``out`` (default
    ``$TWINS_HOME/scores/<source>/<bundle name>.parquet``), sorted by ``customer_id`` (a customer's several rows,
    one per machine and consumable, in the scorer's order).

    The work items are the event store's buckets, each split into chunks of ``chunk_size`` of its customers, run
    through ``engine`` (``twins.engine``; default ``$TWINS_ENGINE``, else local) with the bundle loaded once per
    worker; each chunk reads only its bucket. ``on_chunk(customers done, customers in all)`` is called after each
    chunk (the CLI draws a progress bar with it). Next basket: ``customer_id, items, scores`` (top ``k``); purchase
    outlook: ``customer_id`` and the runtime's answer fields over ``horizon_days`` (default: the bundle's). A bundle
    fitted on ``source``'s events at or after the snapshot's ``as_of`` raises ``twins.provenance.FutureLeak``
    unless ``allow_future``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    t0 = time.perf_counter()
    bundle = load(str(model))
    task = bundle.manifest["task"]
    if task not in SCORERS:
        raise ValueError(f"no batch scorer for task {task!r}; available: {sorted(SCORERS)}")
    kind = KINDS.get(task, "customer")
    snap = TwinStore(paths.store_dir()).open(source, kind, snapshot)
    out = Path(out) if out else default_out(source, bundle)
    as_of = _as_of(snap)
    check_fitted_before(bundle.manifest, source, as_of, f"the {kind} twins {snap.label}", allow_future)
    events_dir = paths.events_dir(source)
    n_buckets = len(bucket_files(events_dir))
    ids = pl.read_parquet(snap.path / "twins.parquet", columns=["customer_id"])["customer_id"].cast(pl.String)
    ids = ids.unique(maintain_order=True)  # machine twins: one per machine and consumable
    chunks = [(b, chunk) for b, mine in enumerate(_by_bucket(ids, n_buckets))
              for chunk in (mine[i:i + chunk_size] for i in range(0, len(mine), chunk_size))]
    job = {"model_sha256": bundle.manifest["model_sha256"], "task": task, "snapshot": str(snap.path.resolve()),
           "chunk_size": chunk_size, "k": k, "horizon_days": horizon_days, "buckets": n_buckets}
    with publish.locked(out, f"twins score {source}"), publish.disk_errors(out.parent):
        parts = _parts_dir(out, job)
        files = [parts / f"part-{n:06d}.parquet" for n in range(len(chunks))]
        todo = [n for n, file in enumerate(files) if not file.exists()]
        resumed, sizes = len(chunks) - len(todo), [len(chunk) for _, chunk in chunks]
        done = sum(sizes) - sum(sizes[n] for n in todo)  # customers of the parts a previous run wrote
        if on_chunk and resumed:
            on_chunk(done, len(ids))

        def progress(n: int, _: int) -> None:
            if on_chunk:
                on_chunk(done + sum(sizes[i] for i in todo[:n]), len(ids))

        engine = _engine(engine)
        engine.map(_score_chunk, [(events_dir, *chunks[n], as_of, task, k, horizon_days, files[n]) for n in todo],
                   setup=partial(load, str(model)), on_done=progress)
        _combine(parts, out, files, engine)
    return ScoreReport(out, len(ids), len(chunks), resumed, time.perf_counter() - t0, task, job["model_sha256"])


def _by_bucket(ids: pl.Series, n_buckets: int) -> list[list[str]]:
    """The ids of each bucket, in ``ids``' order."""
    if n_buckets == 1:
        return [ids.to_list()]
    frame = pl.DataFrame({"customer_id": ids, "bucket": bucket_of(ids, n_buckets)})
    found = frame.partition_by("bucket", as_dict=True, maintain_order=True)
    return [found[(b,)]["customer_id"].to_list() if (b,) in found else [] for b in range(n_buckets)]


def _engine(engine: Engine | str | None) -> Engine:
    return get_engine(engine) if engine is None or isinstance(engine, str) else engine


def _score_chunk(bundle: Bundle, job: tuple) -> int:
    """Score one chunk of one bucket's customers from that bucket's events before ``as_of`` and write its part,
    sorted by ``customer_id``; returns its rows. The chunk's id range lets Parquet skip the bucket's row groups of other customers."""
    events_dir, bucket, ids, as_of, task, k, horizon_days, part = job
    events = scan_events(events_dir, bucket=bucket).filter(
        pl.col("customer_id").is_between(pl.lit(min(ids)), pl.lit(max(ids))) & pl.col("customer_id").is_in(ids))
    if as_of is not None:
        events = events.filter(pl.col("event_time") < pl.lit(as_of, pl.Datetime("us", "UTC")))
    frame = SCORERS[task](bundle, events, ids, as_of, k=k, horizon_days=horizon_days).sort("customer_id",
                                                                                          maintain_order=True)
    _publish_file(part, frame.write_parquet)
    return frame.height


def _as_of(snap) -> datetime | None:
    """The snapshot's as_of: the one it was built at, or for 'end' snapshots the time stored in its rows."""
    manifest = snap.manifest
    if manifest.get("as_of"):
        return datetime.fromisoformat(manifest["as_of"])
    column = pl.read_parquet(snap.path / "twins.parquet", columns=["as_of"], n_rows=1)["as_of"]
    return column[0] if len(column) else None


def _parts_dir(out: Path, job: dict[str, Any]) -> Path:
    """The parts folder of ``job`` beside ``out``: kept when it belongs to the same job, else started afresh."""
    parts = out.with_name(f".{out.name}.parts")
    job_file = parts / JOB_FILE
    if parts.exists() and not (job_file.exists() and json.loads(job_file.read_text()) == job):
        shutil.rmtree(parts)
    if not parts.exists():
        parts.mkdir(parents=True)
        publish.write_text(job_file, json.dumps(job, indent=2))
    for stale in parts.glob(".*.tmp*"):  # a part a killed run was writing
        publish.remove(stale)
    return parts


def _publish_file(target: Path, write: Callable[[Path], object]) -> None:
    """``write(temporary path)`` beside ``target``, then fsync and rename it over ``target``."""
    tmp = publish.temp_path(target)
    try:
        write(tmp)
        publish.publish_file(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _combine(parts: Path, out: Path, files: list[Path], engine: Engine) -> None:
    """Merge the parts (each sorted by ``customer_id``, a customer in one part) into a temporary file sorted by
    ``customer_id`` (``twins.twin.store.merge_parts``: streamed by id range; on large parts in a fresh process of
    ``engine``), rename it over ``out`` and remove the parts."""
    if files:
        merge = partial(merge_parts, repeated_ids=True, row_group_size=None)  # machines: rows per customer
        _publish_file(out, lambda tmp: engine.call(merge, (files, "customer_id", tmp), fresh=worth_a_process(files)))
    else:
        _publish_file(out, pl.DataFrame({"customer_id": []}, schema={"customer_id": pl.String}).write_parquet)
    shutil.rmtree(parts)
