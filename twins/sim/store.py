"""Write a simulated market to disk: canonical events where ``twins build`` looks for a source's events, the
ground truth and the offer feed beside them, the resolved config, and ``market.json``: the market's ``as_of``, the
end of the observed period. The events go on past it, through the simulator's truth horizon, so that forecasts can
be scored; ``twins machines`` on the folder defaults to ``as_of`` (``observed_as_of``) so that no twin sees them.
The folder is published as a whole, as ``twins ingest`` publishes one (``twins.publish``: locked, assembled aside,
swapped in with one rename).

``write_simulation`` simulates and writes a market chunk by chunk (``twins.sim.chunks``): a market of one chunk is
written as one ``events.parquet`` file sorted by time, as always; a larger one as the bucketed store
(``events.parquet/bucket-NNNNN.parquet``, each customer in one bucket, sorted by customer and time), its truth
appended to ``truth.parquet`` chunk by chunk, so that memory is set by a chunk, not by the market."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from twins import paths, publish
from twins.data.events import EVENTS, BucketWriter
from twins.sim import Market
from twins.sim.config import MarketConfig
from twins.sim.events import to_events

FILES = ("events", "truth", "offers")
MARKET_FILE = "market.json"


def write_market(market: Market, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``events.parquet``, ``truth.parquet``, ``offers.parquet``, ``config.json`` and ``market.json`` of an
    in-memory ``market`` into ``out_dir`` (default ``$TWINS_HOME/events/<config.name>``), replacing the folder;
    returns their paths. An existing ``out_dir`` that holds no ``events.parquet`` is refused, not replaced (it is no
    events folder)."""
    return _write(market.config, [market], 1, out_dir)


def write_simulation(cfg: MarketConfig, out_dir: str | Path | None = None,
                     future_seed: int | None = None) -> dict[str, Path]:
    """Simulate ``cfg``'s market chunk by chunk (``memory.chunk_plan``) and write it as ``write_market`` does, the
    events into ``plan.buckets`` buckets; returns the paths. Refuses (``MemoryError``, ``OSError``) a market whose
    chunk or store will not fit."""
    from twins.sim.chunks import simulate_chunks
    from twins.sim.memory import check_fits

    out = Path(out_dir) if out_dir is not None else paths.events_dir(cfg.name)
    plan = check_fits(cfg, folder=out.parent)
    chunks = simulate_chunks(cfg, future_seed, plan.chunks)
    return _write(cfg, chunks, plan.buckets, out)


def _write(cfg: MarketConfig, chunks: Iterable[Market], buckets: int, out_dir: str | Path | None) -> dict[str, Path]:
    out = Path(out_dir) if out_dir is not None else paths.events_dir(cfg.name)
    with publish.locked(out, f"twins sim {cfg.name}"):
        if out.exists() and not (out.is_dir() and (out / EVENTS).exists() or _empty_dir(out)):
            raise FileExistsError(f"{out} exists and is not an events folder (no events.parquet): the market would "
                                  "replace it; give another output folder, or remove that one first")
        with publish.staged_dir(out) as tmp:
            events = BucketWriter(tmp / EVENTS, buckets) if buckets > 1 else None
            truth = None
            for market in chunks:
                if events is None:
                    market.events().write_parquet(tmp / EVENTS)
                else:  # the buckets sort by customer and time: no time sort of the chunk first
                    events.add(to_events(market, sort=False))
                table = market.truth().to_arrow()
                truth = truth or pq.ParquetWriter(tmp / "truth.parquet", table.schema, compression="zstd")
                truth.write_table(table)
                if market.first_machine == 0:
                    market.offer_feed().write_parquet(tmp / "offers.parquet")
            truth.close()
            if events is not None:
                events.finish()
            (tmp / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n")
            (tmp / MARKET_FILE).write_text(json.dumps(market_info(cfg), indent=2) + "\n")
            publish.publish_dir(tmp, out)
    return {**{name: out / f"{name}.parquet" for name in FILES}, "config": out / "config.json",
            "market": out / MARKET_FILE}


def market_info(cfg: MarketConfig) -> dict[str, str]:
    """What ``market.json`` holds: ``as_of`` (the end of the observed period) and ``truth_until`` (the end of the
    simulated horizon), ISO 8601 in UTC."""
    as_of, end = (cfg.start + timedelta(days=d) for d in (cfg.days, cfg.days + cfg.horizon_days))
    return {"as_of": as_of.isoformat(), "truth_until": end.isoformat(),
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
