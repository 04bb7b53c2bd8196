"""The market simulator's configuration (``configs/sim/market.yaml``), validated with pydantic."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from twins.config import load

KINDS = ("bound", "adaptable", "autonomous")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Products(_Strict):
    """Consumables (one per machine) and the competing suppliers that offer them."""

    n_products: int = Field(20, ge=1)
    price_mean: float = Field(30.0, gt=0)        # list price, lognormal across products
    price_sigma: float = Field(0.6, ge=0)
    supplier_markup: list[float] = [1.0, 0.95, 1.08]   # price factor per supplier
    supplier_delivery_days: list[int] = [2, 6, 1]       # quoted delivery per supplier
    promo_prob: float = Field(0.03, ge=0, le=1)         # a supplier starts a promotion on a product on a day
    promo_days: float = Field(4.0, ge=1)               # mean promotion length
    promo_discount: float = Field(0.15, ge=0, lt=1)

    @model_validator(mode="after")
    def _suppliers(self) -> "Products":
        if len(self.supplier_markup) != len(self.supplier_delivery_days) or not self.supplier_markup:
            raise ValueError("supplier_markup and supplier_delivery_days need one entry per supplier (>= 1)")
        return self


class Consumption(_Strict):
    """Daily consumption: rate x weekly profile x annual season x burst x (not broken down) x noise."""

    rate_median: float = Field(2.0, gt=0)      # units per day, lognormal across machines
    rate_sigma: float = Field(0.8, ge=0)
    weekday_only_share: float = Field(0.4, ge=0, le=1)   # machines idle at weekends (office printers)
    annual_amplitude_max: float = Field(0.3, ge=0, lt=1)
    noise_sigma: float = Field(0.3, ge=0)       # lognormal day-to-day noise (mean 1)
    burst_start_prob: float = Field(0.01, ge=0, le=1)
    burst_mean_days: float = Field(3.0, ge=1)
    burst_multiplier: float = Field(3.0, ge=1)
    breakdown_prob: float = Field(0.002, ge=0, le=1)  # per working day; each breakdown sends a service request
    repair_mean_days: float = Field(4.0, ge=1)


class Policy(_Strict):
    """Reorder policies: (s, S) and periodic review for bound machines, (s, S) with offer choice for adaptable
    ones, a predictive rule with human-like noise and negotiation for autonomous ones."""

    periodic_share: float = Field(0.3, ge=0, le=1)      # of bound machines: periodic review instead of (s, S)
    review_days: list[int] = [7, 14, 28]
    cover_days_min: float = Field(14.0, gt=0)           # order-up-to level S = rate x cover days (+ s)
    cover_days_max: float = Field(60.0, gt=0)
    safety_days_max: float = Field(5.0, ge=0)           # s = rate x (lead time + safety days)
    lead_base_max: int = Field(3, ge=0)                 # machine-specific handling days added to delivery
    delay_cost_median: float = Field(0.05, gt=0)        # adaptable: cost of a day of delivery, x list price
    delay_cost_sigma: float = Field(1.0, ge=0)
    deal_threshold: float = Field(0.12, ge=0, lt=1)     # adaptable: buy early when an offer is this much off
    forecast_alpha: float = Field(0.1, gt=0, le=1)      # autonomous: EWMA of own consumption
    procrastinate_prob_max: float = Field(0.5, ge=0, lt=1)  # autonomous human-like noise: skip a due day
    quantity_noise_max: float = Field(0.3, ge=0)        # autonomous: lognormal quantity noise sigma
    reservation_min: float = Field(0.9, gt=0)           # autonomous: reservation price / list price
    reservation_max: float = Field(1.1, gt=0)
    quote_markup_max: float = Field(0.15, ge=0)         # the seller's quote: list x U(1, 1 + this)
    seller_floor: float = Field(0.92, gt=0)             # the seller accepts a counter at or above list x this


class Telemetry(_Strict):
    """Readings of stock and of a cumulative usage counter."""

    share: dict[str, float] = {"bound": 0.5, "adaptable": 0.5, "autonomous": 0.5}
    every_days: int = Field(1, ge=1)
    stock_noise: float = Field(0.02, ge=0)    # sd as a share of the order-up-to level
    usage_noise: float = Field(0.01, ge=0)    # sd as a share of the daily rate


class Humans(_Strict):
    """Human shoppers: bursty visits (self-excitation), habitual items plus impulse buys, weekly and seasonal
    rhythm, some reaction to promotions."""

    n: int = Field(1000, ge=0)
    visits_per_week_median: float = Field(1.0, gt=0)
    visits_sigma: float = Field(0.7, ge=0)
    excitation: float = Field(1.5, ge=0)        # visit rate x (1 + excitation x exp(-days since last / decay))
    excitation_decay_days: float = Field(2.0, gt=0)
    weekend_factor: float = Field(1.5, gt=0)
    december_factor: float = Field(1.4, gt=0)
    n_items: int = Field(500, ge=1)
    habitual_items: int = Field(8, ge=1)
    habitual_prob: float = Field(0.35, ge=0, le=1)
    impulse_mean: float = Field(2.0, ge=0)


class Shocks(_Strict):
    """Shocks inside the simulated days: one supplier's price step, and a fleet of machines that joins late."""

    price_day: int = Field(0, ge=0)            # from this day on, supplier ``price_supplier``'s prices x ``price_factor``
    price_supplier: int = Field(1, ge=0)
    price_factor: float = Field(1.0, gt=0)     # 1: no price step
    fleet_machines: int = Field(0, ge=0)       # the last this many machines join on ``fleet_day``, with empty stock
    fleet_day: int = Field(0, ge=0)


class MarketConfig(_Strict):
    """A simulated market: machines of three kinds and human shoppers, observed for ``days`` from ``start`` and
    simulated ``horizon_days`` further for the ground truth (the true next order after the window)."""

    name: str = "sim_market"
    seed: int = 0
    n_machines: int = Field(10_000, ge=1)
    kinds: dict[str, float] = {"bound": 0.5, "adaptable": 0.3, "autonomous": 0.2}
    start: datetime = datetime(2025, 1, 1, tzinfo=timezone.utc)
    days: int = Field(365, ge=1)
    horizon_days: int = Field(120, ge=0)
    products: Products = Products()
    consumption: Consumption = Consumption()
    policy: Policy = Policy()
    telemetry: Telemetry = Telemetry()
    humans: Humans = Humans()
    shocks: Shocks = Shocks()

    @model_validator(mode="after")
    def _kinds(self) -> "MarketConfig":
        for field_name, shares in (("kinds", self.kinds), ("telemetry.share", self.telemetry.share)):
            unknown = set(shares) - set(KINDS)
            if unknown:
                raise ValueError(f"{field_name}: unknown machine kinds {sorted(unknown)}; use {list(KINDS)}")
        if abs(sum(self.kinds.values()) - 1) > 1e-9:
            raise ValueError(f"kinds: shares must sum to 1, got {sum(self.kinds.values())}")
        if self.shocks.fleet_machines > self.n_machines:
            raise ValueError("shocks.fleet_machines: more than n_machines")
        if self.shocks.price_supplier >= len(self.products.supplier_markup):
            raise ValueError("shocks.price_supplier: no such supplier (index into products.supplier_markup)")
        if self.start.tzinfo is None:
            self.start = self.start.replace(tzinfo=timezone.utc)
        return self


def load_config(path: str | Path, overrides: list[str] | None = None) -> MarketConfig:
    """Read ``configs/sim/*.yaml`` with ``--set`` overrides into a validated ``MarketConfig``."""
    return load(MarketConfig, path, overrides)
