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
from twins.sim.humans import simulate_humans
from twins.sim.machines import POLICIES, Machines, draw_machines
from twins.sim.market import MachineLog, simulate_machines
from twins.sim.prices import list_prices, offer_prices, price_step, redraw_from


@dataclass
class Market:
    """A simulated market: its config, machines (true parameters), offers, and what everyone did."""

    config: MarketConfig
    machines: Machines
    list_price: np.ndarray     # [products]
    offers: np.ndarray         # [days, suppliers, products]
    log: MachineLog
    humans: dict[str, np.ndarray]

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
    """Simulate ``config.days + config.horizon_days`` days of the market; the same config gives the same market.
    ``future_seed``: the same machines and human shoppers and the same observation window, another draw of the
    machines' prices, demand and choices after it (what any forecaster, knowing all of the state at as_of,
    cannot know)."""
    seeds = np.random.SeedSequence(config.seed).spawn(4)
    rng_prices, rng_machines, rng_days, rng_humans = (np.random.default_rng(s) for s in seeds)
    total = config.days + config.horizon_days
    base = list_prices(config.products, rng_prices)
    offers = offer_prices(config.products, base, total, rng_prices)
    future = None if future_seed is None else np.random.default_rng(future_seed)
    if future is not None:
        offers = redraw_from(config.products, base, offers, config.days, future)
    shock = config.shocks
    if shock.price_factor != 1:
        offers = price_step(offers, shock.price_day, shock.price_supplier, shock.price_factor)
    machines = draw_machines(config, rng_machines)
    log = simulate_machines(config, machines, offers, base, rng_days, future)
    months = np.array([(config.start + timedelta(days=t)).month for t in range(total)])
    humans = simulate_humans(config.humans, total, config.start.weekday(), months, rng_humans)
    return Market(config, machines, base, offers, log, humans)


__all__ = ["KINDS", "POLICIES", "Market", "MarketConfig", "load_config", "simulate"]
