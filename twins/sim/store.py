"""Write a simulated market to disk: canonical events where ``twins build`` looks for a source's events, the
ground truth and the offer feed beside them, the resolved config, and ``market.json``: the market's ``as_of``, the
end of the observed period. The events go on past it, through the simulator's truth horizon, so that forecasts can
be scored; ``twins machines`` on the folder defaults to ``as_of`` (``observed_as_of``) so that no twin sees them.
The folder is published as a whole, as ``twins ingest`` publishes one (``twins.publish``: locked, assembled aside,
swapped in with one rename)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from twins import paths, publish
from twins.sim import Market

FILES = ("events", "truth", "offers")
MARKET_FILE = "market.json"


def write_market(market: Market, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``events.parquet``, ``truth.parquet``, ``offers.parquet``, ``config.json`` and ``market.json`` into ``out_dir``
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
            (tmp / MARKET_FILE).write_text(json.dumps(market_info(market), indent=2) + "\n")
            publish.publish_dir(tmp, out)
    return {**{name: out / f"{name}.parquet" for name in FILES}, "config": out / "config.json",
            "market": out / MARKET_FILE}


def market_info(market: Market) -> dict[str, str]:
    """What ``market.json`` holds: ``as_of`` (the end of the observed period) and ``truth_until`` (the end of the
    simulated horizon), ISO 8601 in UTC."""
    end = market.config.start + timedelta(days=market.config.days + market.config.horizon_days)
    return {"as_of": market.as_of.isoformat(), "truth_until": end.isoformat(),
            "note": "events from as_of on are the simulator's ground truth; twins and models of this market use the "
                    "events before as_of"}


def observed_as_of(folder: Path) -> datetime | None:
    """The ``as_of`` a simulated market's folder records in ``market.json``; None for any other events folder."""
    file = Path(folder) / MARKET_FILE
    if not file.exists():
        return None
    try:
        return datetime.fromisoformat(json.loads(file.read_text())["as_of"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{file}: not a market file ({error!r}); simulate the market again with `twins sim`") from None


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())
