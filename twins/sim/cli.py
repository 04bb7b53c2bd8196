"""``twins sim``: simulate a market from a config and write its events and ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def sim(config: Annotated[Path, typer.Argument(help="market config YAML, e.g. configs/sim/market.yaml")],
        overrides: Annotated[Optional[list[str]], typer.Option("--set", help="override a config key: --set n_machines=100000")] = None,
        out: Annotated[Optional[Path], typer.Option(help="output folder (default $TWINS_HOME/events/<name>)")] = None) -> None:
    """Simulate machine customers and human shoppers; write canonical events, ground truth and the offer feed."""
    import time

    from twins.config import ConfigError
    from twins.sim import load_config, simulate
    from twins.sim.store import write_market

    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    start = time.perf_counter()
    market = simulate(cfg)
    seconds = time.perf_counter() - start
    files = write_market(market, out)
    typer.echo(f"{cfg.n_machines:,} machines and {cfg.humans.n:,} shoppers x {cfg.days + cfg.horizon_days} days "
               f"simulated in {seconds:.1f} s; as_of {market.as_of:%Y-%m-%d}")
    for name, path in files.items():
        typer.echo(f"{name}: {path}")
