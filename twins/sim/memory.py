"""How ``twins sim`` splits a market into chunks and buckets, and what memory and disk it needs, estimated from its
config before anything is simulated.

The market is simulated ``chunks`` at a time (``twins.sim.chunks``), about ``CHUNK_ROWS`` event rows each; each
chunk's events go straight into the bucketed event store (``twins.data.events.BucketWriter``: part files per
bucket, then one sort per bucket), so the peak is set by a chunk or a bucket, not by the market. A market of one
chunk is written as one ``events.parquet`` file, as before chunking.

Rows per machine-day: 0.052 orders, messages and service requests plus 2 readings x its kind's telemetry share on
every ``every_days``-th day (counted on 3,000 machines, daily and weekly readings); a shopper brings 1.4 lines a
day. Measured with `twins sim` end to end (peak RSS of the whole command, 1 thread; BENCHMARKS.md, "Market
simulator throughput"): 100,000 machines x 365 days with weekly readings, 2 chunks of 3.8 M rows, 2.04 GiB;
1,000,000 machines, 12 chunks of 6.0 M rows, 3.13 GiB: ``BASE_BYTES`` + ``BYTES_PER_ROW`` (530 B) a row of a chunk.
The store takes about 12 bytes a row on disk (11.6-11.8 measured), twice that while the part files and the bucket
files both exist. So the memory no longer grows with the market: what can refuse a market now is the disk. The repo
config at 1,000,000 machines (365 + 120 days, daily readings) plans 511 M rows in 86 chunks: about 3.1 GiB of memory
and 11.4 GiB of disk while written, about 47 minutes at the 0.18 M rows/s measured for 1M machines (not run yet).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from twins.sim.config import MarketConfig

CHUNK_ROWS = 6_000_000             # event rows a chunk (and a bucket) holds, about
BASE_BYTES = 0.15 * 2**30
BYTES_PER_ROW = 530
DISK_BYTES_PER_ROW = 12
ORDERS_PER_MACHINE_DAY = 0.052     # orders, negotiation messages, service requests
LINES_PER_SHOPPER_DAY = 1.4
HEADROOM = 0.8                     # use at most this share of the memory available now
DISK_HEADROOM = 0.9                # and of the free disk


def rows_per_machine(cfg: MarketConfig) -> float:
    """Expected event rows of one machine over the simulated days: orders, messages, readings."""
    share = sum(cfg.kinds[k] * cfg.telemetry.share.get(k, 0.0) for k in cfg.kinds)
    days = cfg.days + cfg.horizon_days
    return days * ORDERS_PER_MACHINE_DAY + 2 * share * math.ceil(days / cfg.telemetry.every_days)


def event_rows(cfg: MarketConfig) -> float:
    """Expected event rows of the market: machines' orders and readings, shoppers' lines."""
    return cfg.n_machines * rows_per_machine(cfg) + cfg.humans.n * (cfg.days + cfg.horizon_days) * LINES_PER_SHOPPER_DAY


@dataclass(frozen=True)
class ChunkPlan:
    """How a market is simulated and stored: ``chunks`` of machines and shoppers, ``buckets`` event buckets
    (1: one ``events.parquet`` file), the expected ``rows``, peak memory and disk in bytes."""

    chunks: int
    buckets: int
    rows: float
    peak_bytes: float
    disk_bytes: float


def chunk_plan(cfg: MarketConfig) -> ChunkPlan:
    """The chunks and buckets of ``cfg``'s market (a function of the config alone, so the market is too)."""
    rows = event_rows(cfg)
    chunks = min(max(1, math.ceil(rows / CHUNK_ROWS)), cfg.n_machines)
    buckets = 1 if chunks == 1 else math.ceil(rows / CHUNK_ROWS)
    peak = BASE_BYTES + BYTES_PER_ROW * rows / chunks
    return ChunkPlan(chunks, buckets, rows, peak, DISK_BYTES_PER_ROW * rows * (1 if chunks == 1 else 2))


def peak_bytes(cfg: MarketConfig) -> float:
    """Estimated peak memory of ``twins sim`` (simulate and write) for ``cfg``: one chunk's."""
    return chunk_plan(cfg).peak_bytes


def check_fits(cfg: MarketConfig, available: float | None = None, folder: str | Path | None = None,
               free_disk: float | None = None) -> ChunkPlan:
    """Refuse (``MemoryError`` with the fix) a market whose chunk needs more than ``HEADROOM`` of the memory
    ``available`` (default: psutil's available memory now), and (``OSError``) one whose store needs more than
    ``DISK_HEADROOM`` of the free disk under ``folder`` (``free_disk``, default: measured there; not checked
    without either); returns the plan."""
    plan = chunk_plan(cfg)
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    if plan.peak_bytes > HEADROOM * available:
        raise MemoryError(
            f"a chunk of the market ({plan.rows / plan.chunks / 1e6:.1f} M event rows of {plan.rows / 1e6:.0f} M) "
            f"would need about {plan.peak_bytes / 2**30:.1f} GiB, more than {HEADROOM:.0%} of the "
            f"{available / 2**30:.1f} GiB available now; free memory, or simulate fewer shoppers per machine")
    if free_disk is None and folder is not None:
        existing = Path(folder)
        while not existing.exists():
            existing = existing.parent
        free_disk = shutil.disk_usage(existing).free
    if free_disk is not None and plan.disk_bytes > DISK_HEADROOM * free_disk:
        fit = int(cfg.n_machines * DISK_HEADROOM * free_disk / plan.disk_bytes)
        raise OSError(
            f"a market of {cfg.n_machines:,} machines x {cfg.days + cfg.horizon_days} days ({plan.rows / 1e6:.0f} M "
            f"event rows) needs about {plan.disk_bytes / 2**30:.1f} GiB of disk while it is written, more than "
            f"{DISK_HEADROOM:.0%} of the {free_disk / 2**30:.1f} GiB free; free disk, write elsewhere (--out), or "
            f"simulate about {fit:,} machines (--set n_machines={fit}) or fewer readings (--set telemetry.every_days=7)")
    return plan
