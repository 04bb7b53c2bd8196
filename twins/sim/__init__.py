"""A seeded, vectorised market simulator with ground truth: machine customers (bound, adaptable, autonomous) and
human shoppers, observed as canonical events.

    from twins.sim import load_config, simulate
    market = simulate(load_config("configs/sim/market.yaml"))
    events, truth = market.events(), market.truth()
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from twins.sim.config import KINDS, MarketConfig, load_config
from twins.sim.machines import POLICIES, Machines
from twins.sim.market import MachineLog


@dataclass
class Market:
    """A simulated market: its config, machines (true parameters), offers, and what everyone did."""

    config: MarketConfig
    machines: Machines
    list_price: np.ndarray     # [products]
    offers: np.ndarray         # [days, suppliers, products]
    log: MachineLog
    humans: dict[str, np.ndarray]
    first_machine: int = 0     # a chunk of a market (twins.sim.chunks): the market's ids of its first machine,
    first_order: int = 0       # order, shopper and visit
    first_shopper: int = 0
    first_visit: int = 0

    @property
    def as_of(self) -> datetime:
        """The end of the observation window: events before it are history, the truth is about what follows."""
        return self.config.start + timedelta(days=self.config.days)

    def events(self) -> pl.DataFrame:
        from twins.sim.events import to_events

        return to_events(self)

    def truth(self) -> pl.DataFrame:
        from twins.sim.events import ground_truth

        return ground_truth(self)

    def offer_feed(self) -> pl.DataFrame:
        from twins.sim.events import offer_feed

        return offer_feed(self)


def simulate(config: MarketConfig, future_seed: int | None = None) -> Market:
    """Simulate ``config.days + config.horizon_days`` days of the market, in memory; the same config gives the same
    market. ``future_seed``: the same machines and human shoppers and the same observation window, another draw of
    the machines' prices, demand and choices after it (what any forecaster, knowing all of the state at as_of,
    cannot know). A large market is simulated in chunks (``twins.sim.chunks``; ``twins sim`` writes them one at a
    time) and merged here."""
    from twins.sim.chunks import merge, simulate_chunks

    return merge(list(simulate_chunks(config, future_seed)))


__all__ = ["KINDS", "POLICIES", "Market", "MarketConfig", "load_config", "simulate"]
