"""Human shoppers: bursty, habitual plus impulse, with weekly and seasonal rhythm (a loop over days, arrays over
shoppers).

A shopper visits on a day with probability ``1 - exp(-rate)``, where ``rate`` is the shopper's base daily rate x
the weekday factor (weekends busier) x the season (December busier) x self-excitation ``1 + excitation x
exp(-days since the last visit / decay)`` (visits cluster). A visit's basket holds each of the shopper's habitual
items with ``habitual_prob`` (more often when the item is on promotion) plus a Poisson number of impulse items
from the whole catalogue, 1-3 units each, at daytime hours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from twins.sim.config import Humans

HOURS = np.array([9.5, 12.5, 17.5])         # visit-time peaks (local = UTC here) and their weights
HOUR_WEIGHTS = np.array([0.3, 0.3, 0.4])


@dataclass
class Catalogue:
    """The shop's item prices and each day's promotions, drawn by the first chunk of shoppers that needs them and
    shared by every chunk (one shop for all shoppers of a market simulated in chunks)."""

    price: np.ndarray | None = None
    promo: dict[int, np.ndarray] = field(default_factory=dict)  # day -> items on promotion


def simulate_humans(cfg: Humans, days: int, start_dow: int, start_month_day: np.ndarray,
                    rng: np.random.Generator, n: int | None = None,
                    catalogue: Catalogue | None = None) -> dict[str, np.ndarray]:
    """Line items ``{shopper, day, second, visit, item, quantity, unit_price}`` of ``n`` shoppers (default
    ``cfg.n``); ``start_month_day[t]`` is the month (1-12) of day ``t``. Item prices are fixed per item, 15 % off on
    promotion days (3 % of item-days); ``catalogue`` holds them across chunks of shoppers (filled where empty)."""
    n = cfg.n if n is None else n
    catalogue = Catalogue() if catalogue is None else catalogue
    empty = {k: np.empty(0, np.int64) for k in ("shopper", "day", "second", "visit", "item")}
    if n == 0:
        return {**empty, "quantity": np.empty(0), "unit_price": np.empty(0)}
    rate = cfg.visits_per_week_median / 7 * np.exp(cfg.visits_sigma * rng.standard_normal(n))
    habits = np.stack([rng.choice(cfg.n_items, cfg.habitual_items, replace=False) for _ in range(n)])
    if catalogue.price is None:
        catalogue.price = np.round(np.exp(rng.normal(1.0, 0.8, cfg.n_items)), 2)
    item_price = catalogue.price
    since = np.full(n, 1e9)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("shopper", "day", "second", "visit", "item", "quantity", "unit_price")}
    n_visits = 0
    for t in range(days):
        dow = (start_dow + t) % 7
        season = cfg.december_factor if start_month_day[t] == 12 else 1.0
        weekday = cfg.weekend_factor if dow >= 5 else 1.0
        intensity = rate * weekday * season * (1 + cfg.excitation * np.exp(-since / cfg.excitation_decay_days))
        visitors = np.flatnonzero(rng.random(n) < -np.expm1(-intensity))
        since += 1
        since[visitors] = 0
        if not len(visitors):
            continue
        if t not in catalogue.promo:
            catalogue.promo[t] = rng.random(cfg.n_items) < 0.03
        promo = catalogue.promo[t]
        prob = np.where(promo[habits[visitors]], min(1.0, 2 * cfg.habitual_prob), cfg.habitual_prob)
        took = rng.random(prob.shape) < prob
        rows, cols = np.nonzero(took)
        n_imp = rng.poisson(cfg.impulse_mean, len(visitors))
        shopper_local = np.concatenate([rows, np.repeat(np.arange(len(visitors)), n_imp)])
        items = np.concatenate([habits[visitors][rows, cols], rng.integers(0, cfg.n_items, n_imp.sum())])
        empty_basket = np.setdiff1d(np.arange(len(visitors)), shopper_local)   # a visit buys at least one item
        shopper_local = np.concatenate([shopper_local, empty_basket])
        items = np.concatenate([items, habits[visitors[empty_basket], 0]])
        hour = rng.choice(HOURS, len(visitors), p=HOUR_WEIGHTS) + rng.normal(0, 1.2, len(visitors))
        second = (np.clip(hour, 7, 22.9) * 3600).astype(np.int64)
        k = len(items)
        parts["shopper"].append(visitors[shopper_local])
        parts["day"].append(np.full(k, t))
        parts["second"].append(second[shopper_local] + rng.integers(0, 30, k))
        parts["visit"].append(n_visits + shopper_local)
        parts["item"].append(items)
        parts["quantity"].append(rng.integers(1, 4, k).astype(np.float64))
        parts["unit_price"].append(np.round(item_price[items] * np.where(promo[items], 0.85, 1.0), 2))
        n_visits += len(visitors)
    if not parts["day"]:
        return {**empty, "quantity": np.empty(0), "unit_price": np.empty(0)}
    return {k: np.concatenate(v) for k, v in parts.items()}
