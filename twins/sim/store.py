"""Write a simulated market to disk: canonical events where ``twins build`` looks for a source's events, the
ground truth and the offer feed beside them, and the resolved config. The folder is published as a whole, as
``twins ingest`` publishes one (``twins.publish``: locked, assembled aside, swapped in with one rename)."""

from __future__ import annotations

import json
from pathlib import Path

from twins import paths, publish
from twins.sim import Market

FILES = ("events", "truth", "offers")


def write_market(market: Market, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``events.parquet``, ``truth.parquet``, ``offers.parquet`` and ``config.json`` into ``out_dir``
    (default ``$TWINS_HOME/events/<config.name>``), replacing the folder; returns their paths. An existing
    ``out_dir`` that holds no ``events.parquet`` is refused, not replaced (it is no events folder)."""
    out = Path(out_dir) if out_dir is not None else paths.events_dir(market.config.name)
    with publish.locked(out, f"twins sim {market.config.name}"):
        if out.exists() and not (out.is_dir() and (out / "events.parquet").exists() or _empty_dir(out)):
            raise FileExistsError(f"{out} exists and is not an events folder (no events.parquet): the market would "
                                  "replace it; give another output folder, or remove that one first")
        with publish.staged_dir(out) as tmp:
            market.events().write_parquet(tmp / "events.parquet")
            market.truth().write_parquet(tmp / "truth.parquet")
            market.offer_feed().write_parquet(tmp / "offers.parquet")
            (tmp / "config.json").write_text(json.dumps(market.config.model_dump(mode="json"), indent=2) + "\n")
            publish.publish_dir(tmp, out)
    return {**{name: out / f"{name}.parquet" for name in FILES}, "config": out / "config.json"}


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())
