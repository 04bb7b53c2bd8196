"""Write a simulated market to disk: canonical events where ``twins build`` looks for a source's events, the
ground truth and the offer feed beside them, and the resolved config."""

from __future__ import annotations

import json
from pathlib import Path

from twins import paths
from twins.sim import Market


def write_market(market: Market, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``events.parquet``, ``truth.parquet``, ``offers.parquet`` and ``config.json`` into ``out_dir``
    (default ``$TWINS_HOME/events/<config.name>``); returns their paths."""
    out = Path(out_dir) if out_dir is not None else paths.events_dir(market.config.name)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / f"{name}.parquet" for name in ("events", "truth", "offers")}
    market.events().write_parquet(files["events"])
    market.truth().write_parquet(files["truth"])
    market.offer_feed().write_parquet(files["offers"])
    files["config"] = out / "config.json"
    files["config"].write_text(json.dumps(market.config.model_dump(mode="json"), indent=2) + "\n")
    return files
