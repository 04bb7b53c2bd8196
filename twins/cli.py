"""The ``twins`` command line. Every command is a thin shell over ``twins.api``."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from twins import paths
from twins.config import redact_text
from twins.progress import Progress, line_buffered_stdout
from twins.publish import WriteError

app = typer.Typer(
    help="""twins: digital twins of customers (people and machines).

A typical session, from a raw log to twins and models, all tracked in MLflow:

\b
  twins ingest configs/sources/complete_journey.yaml       # raw log -> canonical events + quarantine
  twins build configs/sources/complete_journey.yaml --as-of 2017-09-30
  twins twin show 1 --source complete_journey             # one customer's state
  twins run configs/pipelines/tafeng_next_basket.yaml --set params.seeds=[0]

Your own log needs only a source config (see README.md, "Bring your own log").
Outputs go to $TWINS_HOME (default ./.twins); runs go to MLflow (default SQLite in $TWINS_HOME,
or $MLFLOW_TRACKING_URI). Open the UI with `twins ui`.""",
    no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False, add_completion=False,
)
twin_app = typer.Typer(help="Look twins up in the twin store.", no_args_is_help=True)
app.add_typer(twin_app, name="twin")
# paths and messages stay on one line, greppable in logs; markup off: text from users and files prints as written
console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)

Overrides = Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE",
                     help="override a config key, e.g. --set params.seeds=[0] (the value is YAML; repeatable)")]
Track = Annotated[bool, typer.Option("--track/--no-track", help="log the run to MLflow")]


def _say(label: str, style: str, message: object) -> None:
    """``label: message`` with the message as plain text (never rich markup) and redacted (``config.redact_text``)."""
    console.print(Text.assemble((f"{label}:", style), " ", redact_text(str(message))))
    console.file.flush()


def _fail(exc: Exception) -> None:
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # str(KeyError) adds quotes
    _say("error", "bold red", message)
    raise typer.Exit(2)


def _warn(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: the message, not the library line that raised it."""
    _say("warning", "yellow", message)


@app.callback()
def _setup(threads: Annotated[Optional[int], typer.Option(
        "--threads", metavar="N", help="threads for torch, BLAS/OpenMP and polars (default: $TWINS_THREADS, else "
        "$OMP_NUM_THREADS, else half the usable cores)")] = None,
        engine: Annotated[Optional[str], typer.Option(
            "--engine", metavar="local|ray", help="where ingest, build, machines, emotions and score run their "
            "per-bucket work: local (this process, the default) or ray (pip install \"twins[ray]\"; joins "
            "$RAY_ADDRESS, else starts a local Ray); default $TWINS_ENGINE, else local")] = None,
        workers: Annotated[Optional[int], typer.Option(
            "--workers", metavar="N", help="Ray workers (default $TWINS_WORKERS, else the cluster's CPUs)")] = None) -> None:
    import os
    import warnings

    from twins.engine import ENGINES
    from twins.threads import set_threads

    warnings.showwarning = _warn
    line_buffered_stdout()
    try:
        set_threads(threads)  # before any command imports torch, numpy or polars
    except ValueError as exc:
        _fail(exc)
    if engine is not None and engine.lower() not in ENGINES:
        _fail(ValueError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}"))
    if workers is not None and workers < 1:
        _fail(ValueError(f"--workers {workers}: give a whole number of 1 or more"))
    if engine is not None:  # read by twins.engine.get_engine, as --threads sets TWINS_THREADS
        os.environ["TWINS_ENGINE"] = engine.lower()
    if workers is not None:
        os.environ["TWINS_WORKERS"] = str(workers)


@app.command()
def ingest(source: Annotated[Path, typer.Argument(help="source config YAML, e.g. configs/sources/cdnow.yaml")],
           overrides: Overrides = None, track: Track = True) -> None:
    """Read a raw log through its source config into canonical events; bad rows go to quarantine.

    Prints rows in = accepted + quarantined (per reason). Writes $TWINS_HOME/events/<name>/
    {events,quarantine}.parquet and report.json.
    """
    from twins import api

    try:
        with Progress(f"ingesting {source}"):
            report = api.ingest(source, overrides, track=track)
    except (ValueError, FileNotFoundError, RuntimeError, WriteError) as exc:
        _fail(exc)
    console.print(redact_text(report.summary()))
    console.print(f"events: {report.events_path}\nquarantine: {report.quarantine_path}")


@app.command()
def build(source: Annotated[Path, typer.Argument(help="source config YAML (ingested first with `twins ingest`)")],
          as_of: Annotated[str, typer.Option("--as-of", help="ISO date/time; only events strictly before it count; 'end' = after the last event")] = "end",
          category_column: Annotated[Optional[str], typer.Option(help="item attribute for the category mix, e.g. item_department")] = None,
          discount_columns: Annotated[Optional[list[str]], typer.Option("--discount-column", metavar="COLUMN", help="events column holding a discount (repeatable)")] = None,
          outlook_days: Annotated[float, typer.Option(help="horizon of the purchase outlook in days; 0 = off")] = 91.0,
          outlook_model: Annotated[str, typer.Option(help="bgnbd (BG/NBD + Gamma-Gamma, seconds) or neural (twins.models.outlook_net; whole weeks, trains 3 networks: minutes on large sources)")] = "bgnbd",
          overrides: Overrides = None, track: Track = True) -> None:
    """Build every customer's twin as of a date and store a versioned snapshot."""
    from twins import api
    from twins.twin.customer import TwinParams

    params = TwinParams(category_column=category_column, discount_columns=discount_columns or [],
                        outlook_horizon_days=outlook_days or None, outlook_model=outlook_model)
    try:
        with Progress(f"building twins of {source} as of {as_of}"):
            snap = api.build(source, as_of, params, overrides, track=track)
    except (ValueError, FileNotFoundError, WriteError) as exc:
        _fail(exc)
    m = snap.manifest
    console.print(f"{m['rows']:,} twins of {m['source']} as of {m['as_of'] or 'end'} -> {snap.path}")


@twin_app.command("show")
def twin_show(twin_id: Annotated[str, typer.Argument(help="customer id")],
              source: Annotated[str, typer.Option(help="source name (the `name:` in its config)")],
              snapshot: Annotated[Optional[str], typer.Option(help="'<as_of>/<version>'; default the latest")] = None,
              kind: Annotated[str, typer.Option(help="customer (purchases), emotion (`twins emotions`), machine or behaviour (`twins machines`)")] = "customer",
              as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False) -> None:
    """Show one twin's state."""
    from twins import api

    try:
        state = api.twin(twin_id, source, snapshot, kind)
    except (KeyError, FileNotFoundError) as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(state, default=_jsonable, indent=2))
        return
    table = Table(title=f"twin {twin_id} ({source})", show_header=False)
    for key, value in state.items():
        table.add_row(key, _short(value))
    Console(markup=False, highlight=False).print(table)


@twin_app.command("list")
def twin_list(source: Annotated[Optional[str], typer.Option(help="source name; default: list the sources with twins")] = None,
              kind: Annotated[Optional[str], typer.Option(help="customer, emotion, machine or behaviour; default every kind")] = None) -> None:
    """List stored snapshots of a source: `<kind> <as_of>/<version>` per line, oldest first per kind (with --kind,
    `<as_of>/<version>` only). Without --source: each source with twins and its kinds."""
    from twins.twin.store import TwinStore

    store = TwinStore(paths.store_dir())
    if source is None:
        sources = store.sources()
        if not sources:
            _fail(FileNotFoundError(f"no twins stored under {store.root}: build some with `twins build`, "
                                    "`twins emotions` or `twins machines`"))
        for name, kinds in sources.items():
            typer.echo(f"{name}: {', '.join(kinds)}")
        return
    if kind is not None:
        for snap in store.snapshots(source, kind):
            typer.echo(snap)
        return
    folder = store.root / source
    kinds = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    lines = [f"{k} {snap}" for k in kinds for snap in store.snapshots(source, k)]
    if not lines:
        _fail(FileNotFoundError(f"no twins stored for source {source!r} under {store.root}: run `twins build` first"))
    for line in lines:
        typer.echo(line)


@app.command()
def emotions(source: Annotated[Path, typer.Argument(help="source config YAML whose events include messages")],
             bundle: Annotated[Optional[str], typer.Option(help="emotion bundle folder or models:/NAME@ALIAS (made by `twins run configs/pipelines/goemotions_emotion.yaml`: .twins/models/goemotions-ensemble)")] = None,
             as_of: Annotated[Optional[str], typer.Option(help="profiles as of this date (ISO 8601); default after the last message")] = None,
             window_days: Annotated[float, typer.Option(help="'recent' = this many days before as_of")] = 30.0,
             strong_negative: Annotated[float, typer.Option(help="negative-sentiment probability of a 'strongly negative' message")] = 0.8,
             overrides: Overrides = None) -> None:
    """Score every message event with an emotion bundle and store per-customer emotion profiles (twin kind
    `emotion`): recent Ekman distribution, negative-sentiment trend, last strongly negative message.

    \b
    Example:
      twins emotions configs/sources/goemotions.yaml --bundle .twins/models/goemotions-ensemble
      twins twin show eebbqej --source goemotions --kind emotion
    """
    from twins import api
    from twins.runtime import BundleError

    if bundle is None:
        _fail(ValueError("give --bundle: an emotion bundle folder or models:/NAME@ALIAS. Make one with `twins run "
                         "configs/pipelines/goemotions_emotion.yaml` (about 1 h on 2 cores; it writes "
                         f"{paths.models_dir() / 'goemotions-ensemble'}; a smoke run in minutes: see that config's "
                         "first lines) or `python -m experiments.emotion`"))
    try:
        with Progress("scoring messages", unit="messages") as bar:
            snap = api.emotions(source, bundle, as_of, window_days, strong_negative, overrides,
                                on_batch=lambda done, total: bar.update(done, total))
    except (ValueError, FileNotFoundError, KeyError, BundleError, WriteError) as exc:
        _fail(exc)
    console.print(f"emotion profiles: {snap.manifest['rows']:,} customers -> {snap.path}")


@app.command()
def machines(source: Annotated[str, typer.Argument(help="source config YAML, or the name of an events folder (a simulated market's)")],
             as_of: Annotated[Optional[str], typer.Option(help="twins as of this date (ISO 8601); default a simulated market's as_of (its market.json), else after the last event")] = None,
             detector: Annotated[Optional[Path], typer.Option(help="machine detector file (save_detector) for machine_score")] = None,
             min_orders: Annotated[int, typer.Option(help="customers with fewer orders get no behaviour twin")] = 3,
             overrides: Overrides = None) -> None:
    """Build machine twins (kind `machine`, one per machine and consumable: consumption rate, stock, reorder point
    and quantity, lead time, price sensitivity, with intervals) and per-customer behaviour (kind `behaviour`, with
    the detector's machine_score when --detector is given) from a source's events.

    \b
    Example:
      twins sim configs/sim/market.yaml --set n_machines=2000
      twins machines sim_market --detector .twins/models/machine-detector.skops
      twins twin show m4/p5 --source sim_market --kind machine
    """
    from twins import api

    try:
        with Progress(f"building machine twins of {source}"):
            snaps = api.machines(str(source), as_of, detector, min_orders, overrides)
    except (ValueError, FileNotFoundError, KeyError, WriteError) as exc:
        _fail(exc)
    for kind, snap in snaps.items():
        console.print(f"{kind} twins: {snap.manifest['rows']:,} -> {snap.path}")


@app.command()
def detect(out: Annotated[Path, typer.Option(help="detector file to write (.skops)")] = Path(".twins/models/machine-detector.skops"),
           families: Annotated[str, typer.Option(help="simulated market families to train on (twins.sim.family), comma-separated")] = "base,noisy,periodic,multi",
           seeds: Annotated[int, typer.Option(help="markets per family")] = 2,
           machines_per_market: Annotated[int, typer.Option("--machines", help="machines per market")] = 400,
           people: Annotated[int, typer.Option(help="people per market")] = 200) -> None:
    """Fit a machine-vs-human detector on a family of simulated markets, calibrate its scores on markets it did not
    see, and save it (skops: loading runs no code). Use it with `twins machines SOURCE --detector FILE` or a
    replenishment pipeline's params.detector. BENCHMARKS.md is not touched."""
    from twins.models.machine_detector import save_detector, train_on_families

    try:
        with Progress("fitting the machine detector"):
            detector = train_on_families(families.split(","), list(range(seeds)), machines_per_market, people)
    except ValueError as exc:
        _fail(exc)
    console.print(f"machine detector -> {save_detector(detector, out)}")


@app.command()
def run(pipeline: Annotated[Path, typer.Argument(help="pipeline config YAML, e.g. configs/pipelines/tafeng_next_basket.yaml")],
        overrides: Overrides = None) -> None:
    """Run a named pipeline end to end (ingest -> twins -> train -> evaluate -> export) as one MLflow run.

    \b
    Pipelines (the config's `pipeline:`), with a config for each in configs/pipelines/:
      next_basket     baselines and the neural model, ONNX bundle     tafeng_next_basket.yaml, cj_next_basket.yaml
      emotion         GoEmotions classifiers, ONNX bundle              goemotions_emotion.yaml
      outlook         purchase counts, spend, churn; 2 ONNX bundles    cj_outlook.yaml
      replenishment   machines' next orders, ONNX bundle               sim_replenishment.yaml (after `twins sim`)
    """
    from twins import api

    try:
        with Progress(f"running {pipeline}") as progress:

            def on_start(node) -> None:
                progress.note(f"  start {node.name}")
                progress.update(description=f"running {pipeline}: {node.name}")

            def on_node(node, seconds: float) -> None:
                progress.note(f"  done {node.name} ({seconds:.1f} s)")
                progress.update(description=f"running {pipeline}")

            catalog = api.run(pipeline, overrides, on_node=on_node, on_start=on_start)
    except (ValueError, FileNotFoundError, KeyError, WriteError) as exc:
        _fail(exc)
    for line in catalog.get("summary_lines", []):
        typer.echo(line)
    console.print(f"MLflow run {catalog['run_id']} in {_tracking_hint()}")


@app.command()
def ui(port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 5000) -> None:
    """Open the MLflow UI on the local store (blocks; Ctrl-C to stop). Prints its URL once the server answers (20-50 s)
    and, per pipeline experiment, the chart view with the models side by side."""
    from twins import mlflow_ui

    try:
        code = mlflow_ui.run(port, lambda line: console.print(line, highlight=False, soft_wrap=True))
    except TimeoutError as exc:
        _fail(exc)
    raise typer.Exit(code)


def _tracking_hint() -> str:
    from twins import tracking

    return f"{redact_text(tracking.tracking_uri())} (open it with `twins ui`)"


def _jsonable(value):
    return value.isoformat() if isinstance(value, (datetime, date)) else str(value)


def _rounded(value):
    """Floats to 4 significant digits, inside lists and dicts too (``twin show``'s table; --json is exact)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def _short(value) -> str:
    value = _rounded(value)
    text = json.dumps(value, default=_jsonable) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 300 else text[:297] + "..."


from twins.cli_serving import add_commands  # noqa: E402  (register, promote, serve, score, compare)

add_commands(app)

from twins.commerce.cli import sell  # noqa: E402  (the agent-facing seller API)

app.command()(sell)


@app.command()
def sim(config: Annotated[Path, typer.Argument(help="market config YAML, e.g. configs/sim/market.yaml")],
        overrides: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="override a config key: --set n_machines=20000 (repeatable)")] = None,
        out: Annotated[Optional[Path], typer.Option(help="output folder (default $TWINS_HOME/events/<name>)")] = None) -> None:
    """Simulate machine customers and human shoppers; write canonical events, ground truth, the offer feed and
    market.json (the market's as_of: `twins machines` stops there, before the truth horizon). A large market is
    simulated in chunks of about 6 M event rows, each written straight into the bucketed event store, so memory is
    set by a chunk (about 3 GiB), not by the market; one whose store will not fit the free disk is refused before
    it starts, with the size that fits.

    \b
    Example:
      twins sim configs/sim/market.yaml --set n_machines=2000     # about 1 GiB and 15 s
    """
    import time

    from datetime import timedelta

    from twins.config import ConfigError
    from twins.sim import load_config
    from twins.sim.memory import chunk_plan
    from twins.sim.store import write_simulation

    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        _fail(exc)
    start = time.perf_counter()
    plan = chunk_plan(cfg)
    try:
        with Progress(f"simulating {cfg.n_machines:,} machines and {cfg.humans.n:,} shoppers in {plan.chunks} "
                      f"chunk(s) into {plan.buckets} bucket(s)"):
            files = write_simulation(cfg, out)
    except (FileExistsError, WriteError, MemoryError, OSError) as exc:
        _fail(exc)
    seconds = time.perf_counter() - start
    typer.echo(f"{cfg.n_machines:,} machines and {cfg.humans.n:,} shoppers x {cfg.days + cfg.horizon_days} days "
               f"simulated and written in {seconds:.1f} s; as_of {cfg.start + timedelta(days=cfg.days):%Y-%m-%d}")
    for name, path in files.items():
        typer.echo(f"{name}: {path}")

if __name__ == "__main__":
    app()
