"""A market simulated in chunks of machines and shoppers, so that memory is set by a chunk, not by the market.

Every chunk shares the market's list prices and supplier offers (drawn once) and the shoppers' item prices and
promotions (``humans.Catalogue``); each draws its own machines and shoppers and runs its own day loop. Chunk 0 uses
the random streams the whole market used before chunking, so a market that fits one chunk (``memory.chunk_plan``)
is the market it always was; chunk ``k > 0`` draws from ``SeedSequence((seed, k))`` (and its future from
``(future_seed, k)``). A market is deterministic for its config: the chunking is a function of the config.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from datetime import timedelta
from itertools import pairwise

import numpy as np

from twins.sim import Market
from twins.sim.config import MarketConfig
from twins.sim.humans import Catalogue, simulate_humans
from twins.sim.machines import Machines, draw_machines
from twins.sim.market import MachineLog, simulate_machines
from twins.sim.memory import chunk_plan
from twins.sim.prices import list_prices, offer_prices, price_step, redraw_from


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (first, count) ranges covering ``0 .. n-1``, as equal as can be."""
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return [(int(a), int(b - a)) for a, b in pairwise(edges)]


def simulate_chunks(config: MarketConfig, future_seed: int | None = None,
                    chunks: int | None = None) -> Iterator[Market]:
    """The market's chunks in order, each a ``Market`` of its machines and shoppers with the id offsets
    (``first_machine``, ``first_order``, ``first_shopper``, ``first_visit``) that make its ids the market's.
    ``chunks``: how many (default ``memory.chunk_plan``); ``future_seed`` as in ``twins.sim.simulate``."""
    chunks = chunk_plan(config).chunks if chunks is None else chunks
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
    months = np.array([(config.start + timedelta(days=t)).month for t in range(total)])
    catalogue = Catalogue()
    first_visit = 0
    for k, ((first, n), (first_shopper, n_shoppers)) in enumerate(zip(_ranges(config.n_machines, chunks),
                                                                      _ranges(config.humans.n, chunks))):
        if k:
            rng_machines, rng_days, rng_humans = (np.random.default_rng(s)
                                                  for s in np.random.SeedSequence((config.seed, k)).spawn(3))
            future = None if future_seed is None else np.random.default_rng((future_seed, k))
        machines = draw_machines(config, rng_machines, first, n)
        log = simulate_machines(config, machines, offers, base, rng_days, future)
        humans = simulate_humans(config.humans, total, config.start.weekday(), months, rng_humans, n_shoppers,
                                 catalogue)
        # a machine orders at most once a day: its chunk's order ids start at first machine x days, whatever
        # the earlier chunks' futures were
        yield Market(config, machines, base, offers, log, humans, first_machine=first, first_order=first * total,
                     first_shopper=first_shopper, first_visit=first_visit)
        first_visit += int(humans["visit"].max()) + 1 if len(humans["visit"]) else 0


def merge(parts: list[Market]) -> Market:
    """One in-memory ``Market`` of a market's chunks (ids as in the chunks); one chunk is returned as it is."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    machines = Machines(**{f.name: np.concatenate([getattr(p.machines, f.name) for p in parts])
                           for f in fields(Machines)})

    def table(name: str, shift: dict[str, str]) -> dict[str, np.ndarray]:
        tables = [getattr(p.log, name) for p in parts]
        out = {}
        for col in tables[0]:
            values = []
            for p, t in zip(parts, tables):
                v = t[col]
                if col in shift:
                    offset = getattr(p, shift[col])
                    v = np.where(v >= 0, v + offset, v).astype(v.dtype) if col == "order" else v + offset
                values.append(v)
            out[col] = np.concatenate(values)
        return out

    machine = {"machine": "first_machine"}
    orders = table("orders", machine)
    orders["order"] = np.concatenate([p.first_order + np.arange(len(p.log.orders["day"])) for p in parts])
    log = MachineLog(orders=orders,
                     messages=table("messages", {**machine, "order": "first_order"}),
                     service=table("service", machine), telemetry=table("telemetry", machine),
                     **{f.name: np.concatenate([getattr(p.log, f.name) for p in parts])
                        for f in fields(MachineLog) if f.name in ("stock_as_of", "demand_window", "consumed_window",
                                                                  "stockout_days")})
    humans = {col: np.concatenate([p.humans[col] + (p.first_shopper if col == "shopper" else
                                                    p.first_visit if col == "visit" else 0) for p in parts])
              for col in first.humans}
    return Market(first.config, machines, first.list_price, first.offers, log, humans)
