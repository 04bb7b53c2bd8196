"""``twins sell``: serve the agent-facing seller API (``twins.commerce.app``) with uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def sell(catalog: Annotated[Path, typer.Option(help="catalog YAML/JSON (products, prices and costs in minor units)")],
         twins_source: Annotated[str, typer.Option(
             "--twins", help="source whose machine twins (`twins machines`) and emotion profiles "
                        "(`twins emotions`, where it has any) price each buyer")] = "ucp_orders",
         fallback: Annotated[Optional[Path], typer.Option(
             help="twin-free policy for buyers without a twin: an exported bandit bundle folder "
                  "(twins.commerce.onnx_policy); default the twin policy's first-buyer offer")] = None,
         host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
         port: Annotated[int, typer.Option(help="port")] = 8100,
         token_file: Annotated[Optional[Path], typer.Option(
             help="file holding the bearer token every request but /health must send (default: $TWINS_SERVE_TOKEN; "
                  "neither: no authentication)")] = None,
         agent_rate: Annotated[float, typer.Option(min=0.001, help="requests a second per agent (429 above)")] = 20.0,
         agent_burst: Annotated[int, typer.Option(min=1, help="requests an agent may send at once")] = 40,
         max_sessions: Annotated[int, typer.Option(min=1, help="open checkout sessions (503 above)")] = 100_000,
         session_ttl: Annotated[float, typer.Option(min=1, help="seconds an open checkout session is kept")] = 3600.0,
         poll: Annotated[float, typer.Option(help="seconds between checks for new machine twins (0: off)")] = 30.0,
         max_body_mb: Annotated[float, typer.Option(min=0.001, help="largest request body, MiB (413 above)")] = 1.0,
         max_connections: Annotated[int, typer.Option(
             min=1, help="open connections + requests in progress; more are answered 503")] = 256) -> None:
    """Sell to machine customers: catalog search/look-up and checkout sessions in the UCP/ACP shapes, with a quote
    per buyer from its machine twin and negotiation (accept / counter / decline). Completed checkouts are written
    to $TWINS_HOME/commerce/ucp/ for `twins ingest configs/sources/ucp_orders.yaml`. OpenAPI at /docs.

    \b
    Example:
      twins sell --catalog tests/data/commerce/catalog.yaml --twins ucp_orders
    """
    from twins import paths
    from twins.cli_serving import _fail
    from twins.commerce.app import SellSettings, create_app
    from twins.commerce.catalog import load_catalog
    from twins.commerce.quote import MachineTwins, Quoter
    from twins.serve.auth import read_token
    from twins.serve.limits import MIB, Limits
    from twins.serve.server import Server, config

    try:
        policy_fallback = None
        if fallback is not None:
            from twins.commerce.onnx_policy import OnnxBandit

            policy_fallback = OnnxBandit(fallback)
        quoter = Quoter(MachineTwins(paths.store_dir(), twins_source), fallback=policy_fallback)
        limits = Limits(max_body_bytes=int(max_body_mb * MIB), max_connections=max_connections)
        settings = SellSettings(agent_rate=agent_rate, agent_burst=agent_burst, max_sessions=max_sessions,
                                session_ttl=session_ttl, poll=poll)
        app = create_app(load_catalog(catalog), quoter, paths.twins_home(), settings, limits, read_token(token_file))
    except (ValueError, OSError) as exc:
        _fail(exc)
    Server(config(app, host, port, limits)).run()
