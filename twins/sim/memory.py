"""How much memory ``twins sim`` needs for a market, estimated from its config before anything is simulated.

The peak comes from the events frame (every order, reading, service request, message and shopper line, built in
memory and written once). Measured with the repo's ``configs/sim/market.yaml`` (485 days, daily readings from
half of the machines, 1,000 shoppers; peak RSS of the whole command, 1 thread): 2,000 machines, 1.65 M event rows,
0.86 GiB; 10,000 machines, 5.74 M rows, 2.68 GiB; so about 470 bytes per row over a 0.15 GiB base. Rows per
machine-day: 0.04 orders and messages plus 2 readings x its kind's telemetry share / ``every_days``; a shopper
brings 1.4 lines a day. Checked on another point (10,000 machines, weekly readings, 3,000 shoppers): 2.95 M
rows estimated and counted, 1.44 GiB estimated, 1.54 GiB measured. 100,000 machines of the repo config need about
23 GiB, which is why they were killed on a 24 GiB machine.
"""

from __future__ import annotations

from twins.sim.config import MarketConfig

BASE_BYTES = 0.15 * 2**30
BYTES_PER_ROW = 470
ORDERS_PER_MACHINE_DAY = 0.045     # orders, negotiation messages, service requests
LINES_PER_SHOPPER_DAY = 1.4
HEADROOM = 0.8                     # use at most this share of the memory available now


def rows_per_machine(cfg: MarketConfig) -> float:
    """Expected event rows of one machine over the simulated days: orders, messages, readings."""
    share = sum(cfg.kinds[k] * cfg.telemetry.share.get(k, 0.0) for k in cfg.kinds)
    return (cfg.days + cfg.horizon_days) * (ORDERS_PER_MACHINE_DAY + 2 * share / cfg.telemetry.every_days)


def event_rows(cfg: MarketConfig) -> float:
    """Expected event rows of the market: machines' orders and readings, shoppers' lines."""
    return cfg.n_machines * rows_per_machine(cfg) + cfg.humans.n * (cfg.days + cfg.horizon_days) * LINES_PER_SHOPPER_DAY


def peak_bytes(cfg: MarketConfig) -> float:
    """Estimated peak memory of ``twins sim`` (simulate and write) for ``cfg``."""
    return BASE_BYTES + BYTES_PER_ROW * event_rows(cfg)


def check_fits(cfg: MarketConfig, available: float | None = None) -> float:
    """Refuse (``MemoryError`` with the fix) a market whose estimated peak exceeds ``HEADROOM`` of the memory
    ``available`` (default: psutil's available memory now); returns the estimate in bytes."""
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    need = peak_bytes(cfg)
    if need > HEADROOM * available:
        spare = HEADROOM * available - peak_bytes(cfg.model_copy(update={"n_machines": 0}))
        fit = max(int(spare / (BYTES_PER_ROW * rows_per_machine(cfg))), 0)
        raise MemoryError(
            f"a market of {cfg.n_machines:,} machines x {cfg.days + cfg.horizon_days} days would need about "
            f"{need / 2**30:.1f} GiB ({event_rows(cfg) / 1e6:.0f} M event rows), more than {HEADROOM:.0%} of the "
            f"{available / 2**30:.1f} GiB available now; simulate at most about {fit:,} machines "
            f"(--set n_machines={fit}), fewer readings (--set telemetry.every_days=7) or fewer days")
    return need
