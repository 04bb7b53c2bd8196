"""Machine parameters: drawn once per machine, vectorised; they are the ground truth the twins estimate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twins.sim.config import KINDS, MarketConfig

#: Reorder policies; bound machines use the first two, adaptable the third, autonomous the fourth.
POLICIES = ("s_S", "periodic", "s_S_offers", "predictive")
WEEKDAY_PROFILE = np.array([1.4, 1.4, 1.4, 1.4, 1.4, 0.0, 0.0])  # mean 1 over a week


@dataclass
class Machines:
    """One entry per machine in each array (``n`` machines)."""

    kind: np.ndarray           # int8 index into KINDS
    policy: np.ndarray         # int8 index into POLICIES
    product: np.ndarray        # int32 consumable
    supplier: np.ndarray       # int8 contract supplier (bound machines; others choose per order)
    base_rate: np.ndarray      # units per day before profile, season, bursts and breakdowns
    expected_rate: np.ndarray  # long-run mean daily demand: base x E[burst] x availability
    weekday_only: np.ndarray   # bool: idle at weekends
    annual_amplitude: np.ndarray
    annual_phase: np.ndarray
    lead_base: np.ndarray      # int handling days added to the supplier's delivery
    lead_expected: np.ndarray  # lead_base + contract delivery + mean jitter
    reorder_point: np.ndarray  # s (and the autonomous machines' trigger level at the expected rate)
    order_up_to: np.ndarray    # S (periodic: the up-to level for one review period)
    review_days: np.ndarray    # int periodic review period, 0 for the others
    review_phase: np.ndarray   # int day of the first review
    cover_days: np.ndarray
    safety_days: np.ndarray
    delay_cost: np.ndarray     # adaptable: price of one day of delivery, as a share of the list price; else nan
    reservation: np.ndarray    # autonomous: reservation price / list price; else nan
    procrastinate: np.ndarray  # autonomous: probability of skipping a due day; else 0
    quantity_noise: np.ndarray # autonomous: lognormal sigma of the order quantity; else 0
    telemetry: np.ndarray      # bool: sends stock and usage readings
    order_second: np.ndarray   # int seconds after midnight UTC of a bound or adaptable machine's orders
    telemetry_second: np.ndarray  # int seconds after midnight UTC of the readings
    join_day: np.ndarray       # int day the machine starts (0 but for a late fleet, which starts with empty stock)

    def __len__(self) -> int:
        return len(self.kind)


LEAD_JITTER_P = 0.3  # each order's lead time is one day longer with this probability


def expected_burst_factor(cfg: MarketConfig) -> float:
    """E[burst multiplier]: the burst Markov chain's stationary share of burst days times the extra demand."""
    c = cfg.consumption
    share = c.burst_start_prob / (c.burst_start_prob + 1 / c.burst_mean_days)
    return 1 + share * (c.burst_multiplier - 1)


def availability(cfg: MarketConfig) -> float:
    """Long-run share of days a machine is not broken down."""
    c = cfg.consumption
    return 1 / (1 + c.breakdown_prob * c.repair_mean_days)


def draw_machines(cfg: MarketConfig, rng: np.random.Generator, first: int = 0, n: int | None = None) -> Machines:
    """Draw the kind, consumable, consumption process and reorder policy of the ``n`` machines from number
    ``first`` on (default: every machine of the market)."""
    n = cfg.n_machines - first if n is None else n
    c, p = cfg.consumption, cfg.policy
    shares = np.array([cfg.kinds.get(k, 0.0) for k in KINDS])
    kind = rng.choice(len(KINDS), size=n, p=shares).astype(np.int8)
    periodic = (kind == 0) & (rng.random(n) < p.periodic_share)
    policy = np.select([kind == 0, kind == 1], [np.where(periodic, 1, 0), 2], 3).astype(np.int8)
    n_suppliers = len(cfg.products.supplier_markup)
    supplier = rng.integers(0, n_suppliers, n).astype(np.int8)
    delivery = np.asarray(cfg.products.supplier_delivery_days)
    base_rate = c.rate_median * np.exp(c.rate_sigma * rng.standard_normal(n))
    expected_rate = base_rate * expected_burst_factor(cfg) * availability(cfg)
    lead_base = rng.integers(0, p.lead_base_max + 1, n)
    # adaptable machines choose their supplier per order: plan with the mean delivery; autonomous ones buy from us
    planned_delivery = np.select([kind == 0, kind == 1], [delivery[supplier], np.round(delivery.mean())], delivery[0])
    lead_expected = lead_base + planned_delivery + LEAD_JITTER_P
    safety = rng.uniform(1.0, max(p.safety_days_max, 1.0), n)
    cover = rng.uniform(p.cover_days_min, p.cover_days_max, n)
    review = np.where(policy == 1, rng.choice(p.review_days, n), 0)
    reorder_point = expected_rate * (lead_expected + safety)
    order_up_to = np.where(policy == 1, expected_rate * (review + lead_expected + safety),
                           reorder_point + expected_rate * cover)
    telemetry_share = np.array([cfg.telemetry.share.get(k, 0.0) for k in KINDS])
    nan = np.full(n, np.nan)
    return Machines(
        kind=kind, policy=policy, product=rng.integers(0, cfg.products.n_products, n).astype(np.int32),
        supplier=np.where(kind == 0, supplier, 0).astype(np.int8), base_rate=base_rate, expected_rate=expected_rate,
        weekday_only=rng.random(n) < c.weekday_only_share,
        annual_amplitude=rng.uniform(0, c.annual_amplitude_max, n), annual_phase=rng.random(n),
        lead_base=lead_base, lead_expected=lead_expected, reorder_point=reorder_point, order_up_to=order_up_to,
        review_days=review, review_phase=np.where(review > 0, rng.integers(0, np.maximum(review, 1)), 0),
        cover_days=cover, safety_days=safety,
        delay_cost=np.where(kind == 1, p.delay_cost_median * np.exp(p.delay_cost_sigma * rng.standard_normal(n)), nan),
        reservation=np.where(kind == 2, rng.uniform(p.reservation_min, p.reservation_max, n), nan),
        procrastinate=np.where(kind == 2, rng.uniform(0, p.procrastinate_prob_max, n), 0.0),
        quantity_noise=np.where(kind == 2, rng.uniform(0, p.quantity_noise_max, n), 0.0),
        telemetry=rng.random(n) < telemetry_share[kind],
        order_second=rng.integers(0, 6 * 3600, n) + np.where(kind == 1, 6 * 3600, 0),
        telemetry_second=rng.integers(22 * 3600, 86_400, n),  # end of the day's consumption
        join_day=np.where(np.arange(first, first + n) >= cfg.n_machines - cfg.shocks.fleet_machines,
                          cfg.shocks.fleet_day, 0),
    )
