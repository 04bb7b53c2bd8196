"""Competing offers: each supplier's daily price of each product (list price x markup, less promotions)."""

from __future__ import annotations

import numpy as np

from twins.sim.config import Products


def list_prices(cfg: Products, rng: np.random.Generator) -> np.ndarray:
    """``[n_products]`` list prices, lognormal around ``price_mean``, rounded to cents."""
    sigma = cfg.price_sigma
    return np.round(cfg.price_mean * np.exp(sigma * rng.standard_normal(cfg.n_products) - sigma**2 / 2), 2)


def offer_prices(cfg: Products, base: np.ndarray, days: int, rng: np.random.Generator,
                 on: np.ndarray | None = None) -> np.ndarray:
    """``[days, n_suppliers, n_products]`` unit prices. A promotion starts with ``promo_prob`` a day on each
    (supplier, product) and lasts a geometric number of days with mean ``promo_days``; ``on`` (bool
    ``[n_suppliers, n_products]``) are the promotions running the day before (none by default)."""
    markup = np.asarray(cfg.supplier_markup)[:, None]
    shape = (len(cfg.supplier_markup), cfg.n_products)
    on = np.zeros(shape, dtype=bool) if on is None else on
    out = np.empty((days, *shape))
    for t in range(days):
        u = rng.random(shape)
        on = np.where(on, u >= 1 / cfg.promo_days, u < cfg.promo_prob)
        out[t] = np.round(base[None, :] * markup * np.where(on, 1 - cfg.promo_discount, 1.0), 2)
    return out


def price_step(offers: np.ndarray, day: int, supplier: int, factor: float) -> np.ndarray:
    """``offers`` with ``supplier``'s prices times ``factor`` from ``day`` on (a competitor's price change)."""
    out = offers.copy()
    out[day:, supplier] = np.round(out[day:, supplier] * factor, 2)
    return out


def redraw_from(cfg: Products, base: np.ndarray, offers: np.ndarray, day: int, rng: np.random.Generator) -> np.ndarray:
    """``offers`` (before any price step) with the days from ``day`` on drawn again, each promotion running on from
    its state the day before."""
    regular = np.round(base[None, :] * np.asarray(cfg.supplier_markup)[:, None], 2)
    out = offers.copy()
    out[day:] = offer_prices(cfg, base, len(offers) - day, rng, on=offers[day - 1] < regular - 1e-9)
    return out
