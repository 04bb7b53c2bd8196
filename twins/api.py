"""The Python API behind every CLI command: ``ingest``, ``build``, ``twin``, ``emotions``, ``run``."""

from __future__ import annotations

import json
import time
import warnings
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl

from twins import paths, publish, tracking
from twins.config import redact
from twins.data.events import events_digest, scan_events
from twins.data.ingest import IngestReport
from twins.data.ingest import ingest as _ingest
from twins.data.source import SourceConfig, load_source
from twins.engine import Engine, get_engine
from twins.pipeline import PipelineConfig, load_pipeline_config
from twins.twin.customer import TwinParams, build_store_twins
from twins.twin.store import Snapshot, TwinStore


AS_OF_RANGE = (datetime(1900, 1, 1, tzinfo=timezone.utc), datetime(2200, 1, 1, tzinfo=timezone.utc))
MAX_AS_OF_GAP = timedelta(days=3653)  # twins measure customers up to 10 years after their last event


def parse_as_of(value: str | date | datetime | None) -> datetime | None:
    """``None``/``"end"`` -> None (after the last event); any ISO 8601 date or time (``2017-09-30``,
    ``2017-09-30T12:00``, ``...Z``, ``...+02:00``; naive times are UTC) or a ``date``/``datetime`` -> aware UTC datetime.
    Dates outside 1900-2199 are refused here, before any arithmetic on them can overflow."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "end"):
        return None
    try:
        if isinstance(value, datetime):
            dt = value
        elif isinstance(value, date):
            dt = datetime(value.year, value.month, value.day)
        else:
            dt = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"as_of {value!r} is not a date: give an ISO 8601 date or time (2017-09-30, 2017-09-30T12:00, "
                         "2017-09-30T12:00:00Z, 2017-09-30T14:00+02:00; naive times are UTC) or 'end' (after the last "
                         "event)") from None
    dt = dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    if not AS_OF_RANGE[0] <= dt < AS_OF_RANGE[1]:
        raise ValueError(f"as_of {value} is outside the years {AS_OF_RANGE[0].year}-{AS_OF_RANGE[1].year - 1} twins "
                         "works with: give a date inside your data's range, or 'end' (after the last event)")
    return dt


def check_as_of(when: datetime, first: datetime | None, last: datetime | None, what: str) -> None:
    """Refuse an ``as_of`` outside the data: not after its first event (no history yet), or more than
    ``MAX_AS_OF_GAP`` after its last one (recency and outlooks would measure the gap, not the customers)."""
    if first is None or last is None:
        return
    if when <= first:
        raise ValueError(f"as_of {when:%Y-%m-%d %H:%M} is not after the first event of {what} ({first:%Y-%m-%d %H:%M}): "
                         "no history before it; give a later date, or 'end' (after the last event)")
    if when - last > MAX_AS_OF_GAP:
        raise ValueError(f"as_of {when:%Y-%m-%d} is after the last event of {what} ({last:%Y-%m-%d}) by more than "
                         f"{MAX_AS_OF_GAP.days // 365} years; give a date up to {last + MAX_AS_OF_GAP:%Y-%m-%d}, "
                         "or 'end' (just after the last event)")


def _event_range(events: pl.LazyFrame) -> tuple[datetime | None, datetime | None]:
    row = (events.select(pl.col("event_time").min().alias("first"), pl.col("event_time").max().alias("last"))
           .collect(engine="streaming"))
    return row["first"].item(), row["last"].item()


def _engine(engine: Engine | str | None) -> Engine:
    """``engine`` itself, or the engine of that name (None: ``$TWINS_ENGINE``, else local)."""
    return get_engine(engine) if engine is None or isinstance(engine, str) else engine


def _source(source: str | Path | SourceConfig, overrides: list[str] | None = None) -> SourceConfig:
    return source if isinstance(source, SourceConfig) else load_source(source, overrides)


def ingest(source: str | Path | SourceConfig, overrides: list[str] | None = None, track: bool = True,
           engine: str | None = None) -> IngestReport:
    """Ingest a source into ``$TWINS_HOME/events/<name>`` (per-file and per-bucket work on ``engine``: default
    ``TWINS_ENGINE``, else local); log counts, config and data to MLflow."""
    cfg = _source(source, overrides)
    report = _ingest(cfg, paths.events_dir(cfg.name), engine=engine)
    if track:
        with tracking.run(source_experiment(cfg.name), "ingest", tags={"dataset": cfg.name, "step": "ingest"},
                          description=f"`twins ingest` of source `{cfg.name}` ({_files(cfg)}): {report.accepted:,} of "
                                      f"{report.rows_in:,} rows accepted, {report.quarantined_total:,} quarantined; "
                                      f"events in {report.events_path}",
                          experiment_description=_source_experiment_note(cfg.name)) as mlflow:
            log_ingest(mlflow, cfg, report)
    return report


def source_experiment(name: str) -> str:
    """The one MLflow experiment of a source's ingests and twin builds (tag ``step``: ingest or build)."""
    return f"twins-{name}"


def _source_experiment_note(name: str) -> str:
    return (f"Source `{name}`: one run per `twins ingest` (tag step = ingest: row counts, quarantine, the events as a "
            "dataset input) and per `twins build` (tag step = build: twins as of a date). Pipelines log to their own "
            "experiments (`experiment:` in configs/pipelines/).")


def _files(cfg: SourceConfig) -> str:
    return ", ".join(f.path for f in cfg.files)


def log_ingest(mlflow, cfg: SourceConfig, report: IngestReport):
    """Log an ingest's params, config, counts and report on the active run; returns the events as an MLflow dataset
    (its ``log_input``), which a pipeline's child runs link too."""
    tracking.log_params(mlflow, {"source": cfg.model_dump(mode="json", exclude={"base_dir"})})
    tracking.log_config(mlflow, cfg.model_dump(mode="json"), "config/source.yaml")
    mlflow.log_metrics({"rows/in": report.rows_in, "rows/accepted": report.accepted,
                        "rows/quarantined": report.quarantined_total, "rows/guest": report.guest_rows,
                        "rows/returns": report.returns, "customers": report.customers, "time/ingest_s": report.seconds,
                        **{f"quarantine/{k}": v for k, v in report.quarantined.items()}})
    mlflow.log_dict(redact(report.to_dict()), "ingest/report.json")
    events = tracking.log_dataset(mlflow, report.events_path, f"{cfg.name}-events", context="ingest")
    if report.quarantined_total:
        mlflow.log_artifact(report.quarantine_path, "ingest")
    return events


def build(source: str | Path | SourceConfig, as_of: str | datetime | None = None, params: TwinParams | None = None,
          overrides: list[str] | None = None, track: bool = True, engine: Engine | str | None = None) -> Snapshot:
    """Build customer twins as of a date from the ingested events and store a snapshot; bucket by bucket through
    ``engine`` (``twins.engine``: a name or an engine; default ``$TWINS_ENGINE``, else local)."""
    cfg = _source(source, overrides)
    when = parse_as_of(as_of)
    p = params or TwinParams()
    t0 = time.perf_counter()
    if when is not None:
        first, last = _event_range(scan_events(paths.events_dir(cfg.name)))
        if last is None:
            raise ValueError(f"source {cfg.name} has no event times (order only); build its twins with --as-of end")
        check_as_of(when, first, last, f"source {cfg.name}")
    store = TwinStore(paths.store_dir())
    # each bucket's twins (and outlook inputs) are written beside the snapshots, then merged into one file: never all
    # in memory, and on a large store each step in a fresh process; the lock clears the parts a killed build left
    staging = store.root / cfg.name / "customer" / "parts"
    runner = _engine(engine)
    with publish.locked(staging, f"twins build {cfg.name}"), publish.staged_dir(staging) as parts:
        files = build_store_twins(paths.events_dir(cfg.name), when, p, runner, parts=parts)
        snap = store.write_parts(files, cfg.name, "customer", when, params=vars(p), engine=runner)
    rows = snap.manifest["rows"]
    seconds = time.perf_counter() - t0
    if track:
        with tracking.run(source_experiment(cfg.name), "build", tags={"dataset": cfg.name, "step": "build"},
                          description=f"`twins build` of source `{cfg.name}` as of "
                                      f"{'after the last event' if when is None else f'{when:%Y-%m-%d %H:%M} UTC'}: "
                                      f"{rows:,} customer twins -> snapshot {snap.path}",
                          experiment_description=_source_experiment_note(cfg.name)) as mlflow:
            tracking.log_dataset(mlflow, paths.events_dir(cfg.name) / "events.parquet", f"{cfg.name}-events",
                                 context="build")
            tracking.log_params(mlflow, {"as_of": str(when), "twin": vars(p)})
            mlflow.log_metrics({"twins": rows, "time/build_s": seconds})
            mlflow.log_dict(snap.manifest, "twins/manifest.json")
    return snap


def twin(twin_id: str, source: str, snapshot: str | None = None, kind: str = "customer") -> dict[str, Any]:
    """Look one twin up by id in the latest (or a named) snapshot of ``source`` (``kind``: customer, emotion,
    machine (id ``<customer>/<item>``), behaviour)."""
    return TwinStore(paths.store_dir()).open(source, kind, snapshot).get(twin_id)


def emotions(source: str | Path | SourceConfig, bundle: str | Path, as_of: str | datetime | None = None,
             window_days: float = 30.0, strong_negative: float = 0.8, overrides: list[str] | None = None,
             on_batch=None, engine: Engine | str | None = None) -> Snapshot:
    """Score the source's message events with an emotion bundle (path or ``models:/NAME@ALIAS``), keep the scores
    in ``$TWINS_HOME/events/<source>/messages_scored.parquet`` and store per-customer emotion profiles as of a
    date as twin kind ``emotion``. The scores are reused while the events and the bundle are the same ones
    (their sha256 in ``messages_scored.json``), so another ``as_of`` or window costs no scoring. Messages are
    scored bucket by bucket through ``engine`` (each worker loads the bundle once)."""
    from twins.runtime import EmotionBundle, load
    from twins.twin.emotion import emotion_profiles, score_store_messages

    cfg = _source(source, overrides)
    when = parse_as_of(as_of)  # a bad date fails before minutes of scoring
    model = load(bundle)
    if not isinstance(model, EmotionBundle):
        raise ValueError(f"{bundle}: task {model.manifest['task']!r}; `emotions` needs an emotion bundle")
    folder = paths.events_dir(cfg.name)
    scan_events(folder)  # a clear error when the source was not ingested
    target, stamp = folder / "messages_scored.parquet", folder / "messages_scored.json"
    # the bundle's digest pins every file it reads (tokenizer, lexical model), not only model.onnx
    key = {"events_sha256": events_digest(folder), "bundle_sha256": model.digest}
    if target.exists() and stamp.exists() and json.loads(stamp.read_text()) == key:
        scored = pl.read_parquet(target)
    else:
        scored = score_store_messages(folder, bundle, _engine(engine), on_batch=on_batch)
        with publish.locked(folder, f"twins emotions {cfg.name}"):  # the events folder is ingest's: never both at once
            if events_digest(folder) != key["events_sha256"]:
                raise publish.OutputBusy(f"{folder}: the events changed while their messages were scored (another "
                                         "`twins ingest` ran); run `twins emotions` again")
            tmp = publish.temp_path(target)
            try:
                scored.write_parquet(tmp)
                stamp.unlink(missing_ok=True)  # scores and stamp change together: no stamp, no reuse
                publish.publish_file(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            publish.write_text(stamp, json.dumps(key))
    if when is not None:
        check_as_of(when, *_event_range(scored.lazy()), f"source {cfg.name}'s messages")
    profiles = emotion_profiles(scored, when, window_days, strong_negative)
    return TwinStore(paths.store_dir()).write(profiles, cfg.name, "emotion", when, params={
        "bundle": str(bundle), "bundle_name": model.manifest["name"], "window_days": window_days,
        "strong_negative": strong_negative})


def machines(source: str | Path | SourceConfig, as_of: str | datetime | None = None, detector: str | Path | None = None,
             min_orders: int = 3, overrides: list[str] | None = None,
             engine: Engine | str | None = None) -> dict[str, Snapshot]:
    """Machine twins and machine-likeness from a source's events (``$TWINS_HOME/events/<name>``; ``source`` is a
    source config or the name of an events folder, e.g. a simulated market's), using only events before ``as_of``
    (default: a simulated market's own ``as_of``, the end of its observed period, else after the last event).
    Stores two twin kinds and returns their snapshots:

    * ``machine``: one twin per machine and consumable, id ``<customer_id>/<item_id>``, for every series that
      behaves like a machine's (``machine_series``: actor hints, else the detector's score, else regularity;
      ``twins.twin.machine``:
      consumption rate, stock now, reorder point and quantity, review period, lead time, price sensitivity, with
      intervals; telemetry used where there is some; the offer feed ``offers.parquet`` beside the events, if any,
      gives the delay-cost bounds);
    * ``behaviour``: one per customer with ``min_orders`` orders: the behaviour features
      (``twins.twin.behaviour``) and, with a ``detector`` file (``save_detector``), ``machine_score`` = P(machine).

    A log without machine orders (people, or actors unknown) gets the behaviour twins only, with a warning. Built
    bucket by bucket through ``engine`` (``twins.twin.machine.build_store_machines``): each bucket's twins are
    written as parts beside the snapshots and merged into them by streaming, never all in memory.
    """
    from twins.models.machine_detector import load_detector
    from twins.sim.store import observed_as_of
    from twins.twin.machine import build_store_machines

    name = source if isinstance(source, str) and not source.endswith((".yaml", ".yml")) else _source(source, overrides).name
    folder = paths.events_dir(name)
    events = scan_events(folder)
    when = parse_as_of(as_of)
    first, last = _event_range(events)
    if last is None:
        raise ValueError(f"{folder / 'events.parquet'}: no event has a time; machine twins need timed orders")
    if when is None:  # a simulated market's events go on through its truth horizon: stop where it was observed
        when = observed_as_of(folder) or last + timedelta(microseconds=1)
    check_as_of(when, first, last, name)
    offers = folder / "offers.parquet"
    if detector is not None:
        load_detector(detector)  # a bad file fails here, before any bucket
    store = TwinStore(paths.store_dir())
    staging = store.root / name / "machine" / "parts"  # the lock clears the parts a killed run left
    with publish.locked(staging, f"twins machines {name}"), publish.staged_dir(staging) as parts:
        runner = _engine(engine)
        behaviour, machine = build_store_machines(folder, when, min_orders, detector, runner, parts=parts)
        if not machine and not behaviour:
            raise ValueError(f"{folder / 'events.parquet'}: before {when:%Y-%m-%d} no machine orders (actor 'machine') "
                             f"and no customer with {min_orders} or more orders; nothing to build (lower --min-orders?)")
        snaps = {}
        if not machine:  # a log of people (or of unknown actors): behaviour twins say which ones act like machines
            warnings.warn(f"{name}: no machine orders (actor 'machine') before {when:%Y-%m-%d}: no machine twins, "
                          "behaviour twins only", stacklevel=2)
        else:
            unusable = pl.scan_parquet(machine).select(pl.col("unusable_readings").sum()).collect().item()
            if unusable:
                warnings.warn(f"{name}: {unusable:,} stock readings left out (negative or not a number); see "
                              "unusable_readings in the machine twins", stacklevel=2)
            snaps["machine"] = store.write_parts(machine, name, "machine", when, params={"offers": offers.exists()},
                                                 id_column="twin_id", engine=runner)
        snaps["behaviour"] = store.write_parts(behaviour, name, "behaviour", when, params={
            "min_orders": min_orders, "detector": None if detector is None else str(detector)}, engine=runner)
    return snaps


def run(pipeline_config: str | Path | PipelineConfig, overrides: list[str] | None = None,
        on_node=None, on_start=None) -> dict[str, Any]:
    """Run a named pipeline from its YAML config as one MLflow parent run; returns the catalog. ``on_start(node)``
    and ``on_node(node, seconds)`` are called as each node starts and ends."""
    import pipelines

    cfg = pipeline_config if isinstance(pipeline_config, PipelineConfig) else load_pipeline_config(pipeline_config, overrides)
    module = pipelines.get(cfg.pipeline)
    source = load_source(cfg.source_path())
    as_of = parse_as_of(cfg.as_of)
    resolved = cfg.model_dump(mode="json", exclude={"base_dir"}) | {"source_config": source.model_dump(mode="json")}
    protocol = module.TAGS.get("protocol", "")
    with tracking.run(cfg.experiment, f"{cfg.pipeline}-{source.name}",
                      tags={"dataset": source.name, "pipeline": cfg.pipeline, **module.TAGS},
                      description=f"`{cfg.pipeline}` pipeline on source `{source.name}` ({_files(source)}), twins as of "
                                  f"{cfg.as_of or 'end'}; protocol: {protocol}. Params, the resolved config, ingest "
                                  "counts and the exported bundle are here; each model (and seed) is a child run with "
                                  "the test metrics under the same names (`twins compare "
                                  f"{cfg.experiment}`).",
                      experiment_description=f"Runs of the `{cfg.pipeline}` pipeline (configs/pipelines/, experiment "
                                             f"`{cfg.experiment}`); protocol: {protocol}. Each run is a parent run "
                                             "(data, config, ingest counts, bundle) with one child run per model (tag "
                                             "`model`) and seed (tag `seed`) holding the `test/...` metrics; "
                                             "the data set is the tag `dataset`.",
                      models_view=True) as mlflow:
        tracking.log_params(mlflow, {"pipeline": cfg.pipeline, "as_of": cfg.as_of, "twin": cfg.twin, "params": cfg.params})
        tracking.log_config(mlflow, resolved, "config/resolved.yaml")
        pipe = module.pipeline()
        catalog = {"source": source, "as_of": as_of, "twin_params": TwinParams(**cfg.twin),
                   "params": cfg.params, "experiment": cfg.experiment, "mlflow": mlflow}

        def done(n, seconds: float) -> None:
            mlflow.log_metric(f"time/{n.name}_s", seconds)
            if on_node:
                on_node(n, seconds)

        pipe.run(catalog, on_node=done, on_start=on_start)
        mlflow.log_text(json.dumps(pipe.timings, indent=2), "timings.json")
        catalog["run_id"] = mlflow.active_run().info.run_id
    return catalog
