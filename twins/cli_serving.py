"""Commands for the systems that use the models: ``register``, ``promote``, ``serve``, ``score``, ``compare``.

Thin shells over ``twins.registry``, ``twins.serve``, ``twins.score`` and ``twins.compare``; ``add_commands``
puts them on the ``twins`` app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)  # messages print as written


def _fail(exc: Exception) -> None:
    from twins.config import redact_text

    console.print(Text.assemble(("error:", "bold red"), " ", redact_text(str(exc))))
    raise typer.Exit(2)


def register(bundle: Annotated[Path, typer.Argument(help="exported bundle folder (model.onnx + manifest.json)")],
             name: Annotated[str, typer.Argument(help="registered model name, e.g. tafeng-next-basket")],
             experiment: Annotated[str, typer.Option(help="MLflow experiment of the logging run")] = "twins-models") -> None:
    """Log a bundle with mlflow.onnx (plus manifest and preprocessing files) and register a new version of NAME."""
    from twins import registry
    from twins.runtime import BundleError

    try:
        reg = registry.log_bundle(bundle, name, experiment)
    except BundleError as exc:
        _fail(exc)
    typer.echo(f"{reg.uri} (task {reg.task}, run {reg.run_id}); promote it with: twins promote {name} {reg.version} champion")


def promote(name: Annotated[str, typer.Argument(help="registered model name")],
            version: Annotated[str, typer.Argument(help="version number to promote")],
            alias: Annotated[str, typer.Argument(help="alias to point at it, e.g. champion")] = "champion") -> None:
    """Point an alias of a registered model at a version; services polling the alias reload it."""
    from mlflow.exceptions import MlflowException

    from twins import registry

    try:
        typer.echo(f"{registry.promote(name, version, alias)} -> version {version}")
    except MlflowException as exc:
        _fail(ValueError(exc.message))


def serve(models: Annotated[Optional[list[str]], typer.Option(
              "--model", metavar="[NAME=]URI", help="[NAME=]URI: a bundle folder or models:/NAME@ALIAS (repeatable)")] = None,
          twins_sources: Annotated[Optional[list[str]], typer.Option(
              "--twins", metavar="SOURCE", help="serve look-ups of this source's latest twins (repeatable)")] = None,
          host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0: every one; see 'Exposing the service')")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port")] = 8000,
          poll: Annotated[float, typer.Option(
              help="seconds between checks for moved aliases / new bundles / new snapshots (0: off)")] = 30.0,
          token_file: Annotated[Optional[Path], typer.Option(
              help="file holding the bearer token every request but /health must send (default: $TWINS_SERVE_TOKEN; "
                   "neither: no authentication)")] = None,
          allowed_hosts: Annotated[Optional[list[str]], typer.Option(
              "--allowed-host", metavar="HOST", help="answer only requests for this Host (repeatable; '*.example.com' "
                                                     "allowed; default: any)")] = None,
          max_body_mb: Annotated[float, typer.Option(min=0.001, help="largest request body, MiB (413 above)")] = 4.0,
          max_items: Annotated[int, typer.Option(min=1, help="basket items per next-basket request (413 above)")] = 100_000,
          max_events: Annotated[int, typer.Option(
              min=1, help="purchases (outlook), orders + readings (replenishment) per request (413 above)")] = 20_000,
          max_texts: Annotated[int, typer.Option(min=1, help="messages per emotion request (413 above)")] = 128,
          body_timeout: Annotated[float, typer.Option(min=0.1, help="seconds a client may take to send a body (408 after)")] = 10.0,
          header_timeout: Annotated[float, typer.Option(min=0.1, help="seconds a client may take to send its headers")] = 10.0,
          max_connections: Annotated[int, typer.Option(
              min=1, help="open connections + requests in progress; more are answered 503")] = 256,
          proxy_headers: Annotated[bool, typer.Option(
              help="take the client address and scheme from X-Forwarded-For/-Proto (behind a reverse proxy)")] = False,
          forwarded_allow_ips: Annotated[Optional[str], typer.Option(
              help="comma-separated proxy addresses whose X-Forwarded-* headers are trusted (default 127.0.0.1)")] = None,
          allow_future: Annotated[bool, typer.Option(
              "--allow-future", help="serve a model fitted on a served source's events after its twins' as_of "
                                     "(refused by default: it has seen those customers' future)")] = False) -> None:
    """Serve the models over HTTP (FastAPI): POST /v1/models/NAME/recommend|outlook, GET /v1/twins/SOURCE/ID,
    /health, /ready, OpenAPI at /docs. Logs one JSON line per request and per reload.

    \b
    Example:
      twins serve --model nbr=models:/tafeng_realitycheck-neural/1 --twins tafeng_realitycheck   # registered by the tafeng_next_basket pipeline
    """
    from twins.serve import create_app
    from twins.serve.auth import read_token
    from twins.serve.limits import MIB, Limits
    from twins.serve.logs import configure
    from twins.serve.models import default_name
    from twins.serve.server import Server, config

    if not models and not twins_sources:
        _fail(ValueError("nothing to serve: give --model and/or --twins"))
    configure()
    named = {}
    for value in models or []:
        name, sep, uri = value.partition("=")
        named[name if sep else default_name(value)] = uri if sep else value
    limits = Limits(max_body_bytes=int(max_body_mb * MIB), body_seconds=body_timeout, header_seconds=header_timeout,
                    max_items=max_items, max_events=max_events, max_texts=max_texts,
                    max_connections=max_connections)
    try:
        app = create_app(named, twins_sources or [], poll_seconds=poll, limits=limits, token=read_token(token_file),
                         allowed_hosts=allowed_hosts or (), allow_future=allow_future)
    except (ValueError, LookupError) as exc:
        _fail(exc)
    Server(config(app, host, port, limits, proxy_headers, forwarded_allow_ips)).run()


def score(model: Annotated[str, typer.Argument(help="bundle folder or models:/NAME@ALIAS")],
          source: Annotated[str, typer.Option(help="twin store source to score (its latest snapshot)")],
          out: Annotated[Optional[Path], typer.Option(help="Parquet output; default $TWINS_HOME/scores/SOURCE/BUNDLE.parquet")] = None,
          snapshot: Annotated[Optional[str], typer.Option(help="'<as_of>/<version>'; default the latest")] = None,
          chunk_size: Annotated[int, typer.Option(help="customers per chunk")] = 10_000,
          k: Annotated[int, typer.Option(help="next basket: items per customer")] = 10,
          horizon_days: Annotated[Optional[float], typer.Option(help="purchase outlook: horizon (default: the bundle's)")] = None,
          allow_future: Annotated[bool, typer.Option(
              "--allow-future", help="score even with a bundle fitted on this source's events after the twins' as_of "
                                     "(a deliberate backtest); refused by default")] = False) -> None:
    """Score every twin of a source to Parquet, in chunks; a killed run leaves the old output and resumes when rerun.
    Next-basket and outlook bundles score the customer twins; a replenishment bundle the machines of the machine twins
    (`twins machines`). A bundle fitted on the source's events after the twins' as_of is refused (--allow-future)."""
    from twins.runtime import BundleError
    from twins.score import score_store
    from twins.publish import WriteError

    columns = [TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("score", total=None)
            report = score_store(model, source, out, snapshot=snapshot, chunk_size=chunk_size, k=k, horizon_days=horizon_days,
                                 on_chunk=lambda done, total: progress.update(task, completed=done, total=total),
                                 allow_future=allow_future)
    except (BundleError, LookupError, FileNotFoundError, ValueError, WriteError) as exc:
        _fail(exc)
    resumed = f", {report.resumed_chunks} resumed" if report.resumed_chunks else ""
    console.print(f"{report.rows:,} customers ({report.task}) in {report.chunks} chunk(s){resumed}, "
                  f"{report.seconds:.1f} s -> {report.out}", highlight=False)


def compare(experiment: Annotated[str, typer.Argument(help="MLflow experiment, e.g. tafeng-next-basket")],
            metrics: Annotated[Optional[list[str]], typer.Option("--metric", metavar="METRIC", help="e.g. test/recall@10 (repeatable; `all`: every test metric; default: a few per kind of experiment)")] = None,
            out: Annotated[Optional[Path], typer.Option(help="folder for the PNG plots; default $TWINS_HOME/compare/EXPERIMENT")] = None,
            markdown: Annotated[bool, typer.Option("--markdown", help="print a Markdown table")] = False) -> None:
    """Table of an experiment's models (mean ± std over seeds; ↑ higher is better, ↓ lower, best in bold) and a PNG
    plot per metric. Browse the same runs in the MLflow UI with `twins ui`."""
    from twins.compare import compare as _compare

    try:
        result = _compare(experiment, metrics, out)
    except ValueError as exc:
        _fail(exc)
    if markdown:
        typer.echo("\n".join(result.table()))
    else:
        out = Console()
        out.print(result.terminal_table(out.width))
    console.print("plots: " + ", ".join(str(p) for p in result.plots), highlight=False)


def add_commands(app: typer.Typer) -> None:
    for command in (register, promote, serve, score, compare):
        app.command()(command)
