"""Families of simulated markets: each market of a family draws its policy mix, noise, outages and people at random
within the family's ranges, and its log may be reshaped as real logs are (machines that order several consumables,
order times jittered by hours). Detectors and forecasters trained across families, and evaluated on a family held
out of training, show what holds beyond one simulator configuration. ``PRIOR`` is a training-only family: every
parameter drawn over a broad range, the log's shape included (a seller's prior over fleets it has not seen), so a
forecaster can be trained across markets unlike any one family; it is no member of ``FAMILIES``.

    from twins.sim.family import FAMILIES, family_market
    events, truth = family_market("noisy", seed=3, n_machines=400, n_people=200)
    events, truth = family_market("broad", seed=100, n_machines=400, n_people=200)  # a training market of the prior
"""

from __future__ import annotations

import numpy as np
import polars as pl

from twins.sim import MarketConfig, simulate

DAY_US = 86_400_000_000

#: family -> ranges (low, high) drawn uniformly per market, and the log's shape (multi-item share, jitter hours)
FAMILIES: dict[str, dict] = {
    "base": {"bound": (0.4, 0.6), "autonomous": (0.1, 0.3), "periodic_share": (0.2, 0.4), "procrastinate": (0.3, 0.6),
             "quantity_noise": (0.2, 0.4), "noise_sigma": (0.2, 0.4), "breakdown": (0.001, 0.003),
             "excitation": (1.0, 2.0), "habitual_prob": (0.25, 0.45), "multi_item": 0.0, "jitter_hours": 0.0},
    "noisy": {"bound": (0.2, 0.4), "autonomous": (0.4, 0.6), "periodic_share": (0.0, 0.2), "procrastinate": (0.6, 0.9),
              "quantity_noise": (0.4, 0.8), "noise_sigma": (0.5, 0.8), "breakdown": (0.005, 0.015),
              "excitation": (0.2, 0.8), "habitual_prob": (0.5, 0.8), "multi_item": 0.0, "jitter_hours": 6.0},
    "periodic": {"bound": (0.7, 0.9), "autonomous": (0.0, 0.1), "periodic_share": (0.6, 0.9), "procrastinate": (0.1, 0.3),
                 "quantity_noise": (0.1, 0.2), "noise_sigma": (0.1, 0.3), "breakdown": (0.0, 0.002),
                 "excitation": (0.0, 0.5), "habitual_prob": (0.6, 0.9), "multi_item": 0.0, "jitter_hours": 0.0},
    "multi": {"bound": (0.3, 0.5), "autonomous": (0.2, 0.4), "periodic_share": (0.1, 0.3), "procrastinate": (0.3, 0.7),
              "quantity_noise": (0.2, 0.5), "noise_sigma": (0.3, 0.5), "breakdown": (0.002, 0.006),
              "excitation": (2.0, 4.0), "habitual_prob": (0.2, 0.4), "multi_item": 0.7, "jitter_hours": 3.0},
}

#: training-only: each parameter over a broad range (wider than any family's), the multi-item share and jitter too
PRIOR: dict[str, dict] = {
    "broad": {"bound": (0.05, 0.95), "autonomous": (0.0, 0.6), "periodic_share": (0.0, 1.0),
              "procrastinate": (0.0, 0.9), "quantity_noise": (0.0, 0.8), "noise_sigma": (0.05, 0.9),
              "breakdown": (0.0, 0.02), "excitation": (0.0, 4.0), "habitual_prob": (0.1, 0.9),
              "multi_item": (0.0, 0.8), "jitter_hours": (0.0, 8.0)},
}


def _draw(family: str, seed: int) -> dict[str, float]:
    """One market's parameters: each range of the family drawn uniformly by ``seed``, fixed values kept."""
    known = FAMILIES | PRIOR
    if family not in known:
        raise ValueError(f"unknown market family {family!r}; known: {sorted(known)}")
    rng = np.random.default_rng([seed, (sorted(FAMILIES) + sorted(PRIOR)).index(family)])
    draw = {k: float(rng.uniform(*v)) if isinstance(v, tuple) else v for k, v in known[family].items()}
    return draw | {"seed": int(rng.integers(1 << 30))}


def family_config(family: str, seed: int, n_machines: int, n_people: int, days: int = 365,
                  horizon_days: int = 120) -> MarketConfig:
    """A market of ``family`` (of ``FAMILIES`` or ``PRIOR``) with its parameters drawn from the family's ranges
    by ``seed``."""
    draw = _draw(family, seed)
    adaptable = max(1.0 - draw["bound"] - draw["autonomous"], 0.0)
    total = draw["bound"] + adaptable + draw["autonomous"]
    return MarketConfig(
        name=f"{family}-{seed}", seed=draw["seed"], n_machines=n_machines, days=days,
        horizon_days=horizon_days,
        kinds={"bound": draw["bound"] / total, "adaptable": adaptable / total, "autonomous": draw["autonomous"] / total},
        consumption={"noise_sigma": draw["noise_sigma"], "breakdown_prob": draw["breakdown"]},
        policy={"periodic_share": draw["periodic_share"], "procrastinate_prob_max": draw["procrastinate"],
                "quantity_noise_max": draw["quantity_noise"]},
        humans={"n": n_people, "excitation": draw["excitation"], "habitual_prob": draw["habitual_prob"]})


def reshape(events: pl.DataFrame, truth: pl.DataFrame, family: str, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The family's log shape: a share of machines grouped 2-4 at a time under one customer id (a multi-item
    machine; ``truth`` gains ``customer_id``) and machine order times jittered by a normal number of hours."""
    f, rng = _draw(family, seed), np.random.default_rng([seed, 7])
    ids, items = truth["machine_id"].to_numpy(), truth["item_id"].to_numpy()
    owner = ids.copy()
    group, size = [], 0
    for k in rng.permutation(len(ids))[: int(f["multi_item"] * len(ids))]:  # 2-4 machines, each its own item
        if len(group) >= size or items[k] in items[group]:
            group, size = [k], int(rng.integers(2, 5))
        else:
            group.append(k)
            owner[k] = ids[group[0]]
    events = events.with_columns(pl.col("customer_id").replace(dict(zip(ids, owner))))
    if f["jitter_hours"]:
        us = (rng.standard_normal(events.height) * f["jitter_hours"] * 3_600_000_000).astype(np.int64)
        shift = pl.when((pl.col("actor") == "machine") & (pl.col("event_type") == "purchase")).then(pl.Series(us)).otherwise(0)
        events = events.with_columns(pl.col("event_time") + pl.duration(microseconds=shift)).sort("event_time")
    return events, truth.with_columns(pl.Series("customer_id", owner))


def family_market(family: str, seed: int, n_machines: int, n_people: int, days: int = 365,
                  horizon_days: int = 120, telemetry: bool = True):
    """``(market, events, truth)`` of one market of ``family``: the market itself, its events reshaped by
    ``reshape`` and the truth with each machine's ``customer_id``."""
    cfg = family_config(family, seed, n_machines, n_people, days, horizon_days)
    if not telemetry:
        cfg = cfg.model_copy(update={"telemetry": cfg.telemetry.model_copy(update={"share": {k: 0.0 for k in cfg.kinds}})})
    market = simulate(cfg)
    events, truth = reshape(market.events(), market.truth(), family, seed)
    return market, events, truth
