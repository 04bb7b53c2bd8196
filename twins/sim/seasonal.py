"""A seeded seasonal purchase log with known truth: the setting a seasonal outlook is checked on.

Customers arrive over the whole span (arrivals follow the season too); each buys on a day with probability
1 − exp(−λ·s(d)/7), λ ~ Gamma(r, 1/α) purchase days a week, s(d) the calendar multiplier of day d; after each
repeat purchase day a customer drops out with probability p ~ Beta(a, b) (BG/NBD's process on the calendar). A
purchase day's spend is Gamma(shape p_spend, mean ν_i·m(d)) with ν_i ~ Gamma (Gamma-Gamma) and m(d) the spend
multiplier of the day; it is split into 1 + Poisson(``extra_orders``) orders, and a share of the days get a
partial return a few days later. ``s`` and ``m`` are annual cosines times holiday lifts (``lift`` over the days
from ``before`` days before ``date`` to ``after`` days after it), both with a mean of 1 over a year before the
holidays.

    from twins.sim.seasonal import SeasonalLog, simulate_seasonal_log
    events, truth = simulate_seasonal_log(SeasonalLog(n_customers=6000))
    python -m twins.sim.seasonal out.parquet --customers 6000
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

from twins.data.schema import CANONICAL
from twins.runtime.outlook_features import calendar_design, holiday_spans

EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class SeasonalLog:
    n_customers: int = 6000
    start: date = date(2021, 7, 1)
    end: date = date(2023, 12, 31)       # last day of the log
    seed: int = 0
    r: float = 0.9                       # purchase days a week: Gamma(r, scale 1/alpha), mean 0.23
    alpha: float = 4.0
    a: float = 0.8                       # dropout after a repeat purchase day: Beta(a, b), mean 0.12
    b: float = 6.0
    amplitude: float = 0.3               # log-amplitude of the annual cosine of the purchase rate
    peak_day: int = 320                  # its peak, day of the year (0 = 1 January): mid November
    holidays: tuple[dict, ...] = field(default_factory=lambda: (
        {"date": "12-24", "before": 13, "after": 0, "lift": 1.8},   # the Christmas rush
        {"date": "12-25", "before": 0, "after": 6, "lift": 0.4},    # closed / quiet between the holidays
        {"date": "11-25", "before": 0, "after": 3, "lift": 1.5},    # a Black-Friday-like sale
    ))
    spend_amplitude: float = 0.12        # log-amplitude of the annual cosine of the spend per purchase day
    spend_lift: float = 1.3              # spend per purchase day in the Christmas rush
    p_spend: float = 4.0                 # Gamma-Gamma: shape of a day's spend, customer mean nu ~ Gamma(q, gamma)
    q: float = 3.0
    gamma: float = 80.0
    extra_orders: float = 0.3
    return_share: float = 0.04

    def day_numbers(self) -> np.ndarray:
        return np.arange((self.start - EPOCH).days, (self.end - EPOCH).days + 1)


def _doy(day: np.ndarray) -> np.ndarray:
    d = day.astype("datetime64[D]")
    return (d - d.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.float64)


def _in_span(day: np.ndarray, span: dict) -> np.ndarray:
    return calendar_design(day, 0, holiday_spans([span]))[:, 0] > 0


def true_multipliers(cfg: SeasonalLog, day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(purchase-rate multiplier, spend multiplier) of each day (days since 1970-01-01)."""
    day = np.asarray(day, np.int64)
    phase = 2 * np.pi * (_doy(day) - cfg.peak_day) / 365.25
    year = 2 * np.pi * (np.arange(365) - cfg.peak_day) / 365.25
    rate = np.exp(cfg.amplitude * np.cos(phase)) / np.exp(cfg.amplitude * np.cos(year)).mean()
    spend = np.exp(cfg.spend_amplitude * np.cos(phase)) / np.exp(cfg.spend_amplitude * np.cos(year)).mean()
    for h in cfg.holidays:
        inside = _in_span(day, h)
        rate = np.where(inside, rate * h["lift"], rate)
    rush = _in_span(day, cfg.holidays[0])
    return rate, np.where(rush, spend * cfg.spend_lift, spend)


def simulate_seasonal_log(cfg: SeasonalLog) -> tuple[pl.DataFrame, dict]:
    """(canonical events: purchases and returns, orders as baskets; truth: per-customer λ, p, ν, first day and
    dropout day, and the daily multipliers)."""
    rng = np.random.default_rng(cfg.seed)
    days = cfg.day_numbers()
    rate_mult, spend_mult = true_multipliers(cfg, days)
    n = cfg.n_customers
    lam = rng.gamma(cfg.r, 1.0 / cfg.alpha, n)
    p = rng.beta(cfg.a, cfg.b, n)
    nu = rng.gamma(cfg.q, 1.0 / cfg.gamma, n)  # Gamma-Gamma's rate: a day's mean spend is p_spend / nu
    first = rng.choice(len(days) - 1, n, p=rate_mult[:-1] / rate_mult[:-1].sum())
    alive = np.zeros(n, bool)
    dropped = np.full(n, -1)
    cust, day_idx = [], []
    for i in range(len(days)):
        arriving = first == i
        alive |= arriving
        buys = arriving | (alive & (rng.random(n) < -np.expm1(-lam * rate_mult[i] / 7.0)))
        idx = np.flatnonzero(buys)
        cust.append(idx)
        day_idx.append(np.full(len(idx), i))
        leave = buys & ~arriving & (rng.random(n) < p)
        alive &= ~leave
        dropped[leave] = days[i]
    cust, day_idx = np.concatenate(cust), np.concatenate(day_idx)
    spend = rng.gamma(cfg.p_spend, spend_mult[day_idx] / nu[cust])
    orders = 1 + rng.poisson(cfg.extra_orders, len(cust))
    row = np.repeat(np.arange(len(cust)), orders)
    share = rng.exponential(size=len(row))                # Dirichlet(1, ..., 1) shares of the day's spend
    amount = spend[row] * share / np.bincount(row, share)[row]
    start_us = np.datetime64(EPOCH, "us")
    seconds = rng.integers(8 * 3600, 20 * 3600, len(row))
    when = start_us + (days[day_idx[row]].astype(np.int64) * 86_400 + seconds).astype("timedelta64[s]")
    ret = rng.random(len(cust)) < cfg.return_share
    ret_when = start_us + ((days[day_idx[ret]] + rng.integers(1, 10, ret.sum())).astype(np.int64) * 86_400
                           + 12 * 3600).astype("timedelta64[s]")
    ids = np.array([f"c{c:05d}" for c in range(n)])
    purchases = pl.DataFrame({"customer_id": ids[cust[row]], "event_time": when,
                              "basket_id": [f"o{i}" for i in range(len(row))], "amount": np.round(amount, 2),
                              "event_type": "purchase"})
    returns = pl.DataFrame({"customer_id": ids[cust[ret]], "event_time": ret_when,
                            "basket_id": [f"r{i}" for i in range(int(ret.sum()))],
                            "amount": np.round(0.3 * spend[ret], 2), "event_type": "return"})
    last_day = np.datetime64(cfg.end, "us") + np.timedelta64(1, "D")
    events = pl.concat([purchases, returns]).filter(pl.col("event_time") < last_day)
    events = events.with_columns(pl.col("event_time").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
                                 item_id=pl.lit("gift"), quantity=pl.lit(1.0), channel=pl.lit("wholesale"),
                                 actor=pl.lit("human"))
    events = events.select([pl.col(c).cast(t) if c in events.columns else pl.lit(None, t).alias(c)
                            for c, t in CANONICAL.items()]).sort("event_time", "customer_id")
    truth = {"lambda": lam, "p": p, "nu": nu, "first_day": days[first], "dropout_day": dropped,
             "days": days, "rate_multiplier": rate_mult, "spend_multiplier": spend_mult,
             "holidays": [{k: v for k, v in h.items() if k != "lift"} for h in cfg.holidays]}
    return events, truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="parquet file to write the events to")
    ap.add_argument("--customers", type=int, default=SeasonalLog.n_customers)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    events, _ = simulate_seasonal_log(SeasonalLog(n_customers=args.customers, seed=args.seed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    events.write_parquet(args.out)
    print(f"{events.height:,} events of {args.customers:,} customers: {args.out}")


if __name__ == "__main__":
    main()


def oracle_outlook(cfg: SeasonalLog, truth: dict, customers: list[str], cutoff_day: int, horizon_days: int,
                   paths: int = 400, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Not a forecaster: each customer's expected purchase days and spend in the horizon under the true process,
    with their true rate, dropout probability, spend and alive state at the cut-off (Monte Carlo, ``paths`` per
    customer): the best any mean forecast could do, which bounds what a model can reach."""
    rng = np.random.default_rng(seed)
    idx = np.array([int(c[1:]) for c in customers])
    dropped = truth["dropout_day"][idx]
    alive = (truth["first_day"][idx] < cutoff_day) & ((dropped < 0) | (dropped >= cutoff_day))
    days = np.arange(cutoff_day, cutoff_day + horizon_days)
    rate, spend_mult = true_multipliers(cfg, days)
    lam, p, nu = truth["lambda"][idx], truth["p"][idx], truth["nu"][idx]
    on = np.repeat(alive, paths)
    count = np.zeros(len(on))
    spend = np.zeros(len(on))
    lam_r, p_r, mean_day = np.repeat(lam, paths), np.repeat(p, paths), np.repeat(cfg.p_spend / nu, paths)
    for i in range(len(days)):
        buys = on & (rng.random(len(on)) < -np.expm1(-lam_r * rate[i] / 7.0))
        count += buys
        spend += buys * mean_day * spend_mult[i]
        on &= ~(buys & (rng.random(len(on)) < p_r))
    return count.reshape(-1, paths).mean(1), spend.reshape(-1, paths).mean(1)


def true_calendar(cfg: SeasonalLog) -> dict:
    """The generating calendar as a spec ``twins.runtime.outlook_features.Calendar`` reads (one harmonic and the
    holiday spans; the spend lift on the first holiday, the Christmas rush)."""
    phase = 2 * np.pi * cfg.peak_day / 365.25
    holidays = [{k: v for k, v in h.items() if k != "lift"} for h in cfg.holidays]
    year = 2 * np.pi * (np.arange(365) - cfg.peak_day) / 365.25

    def harmonic(amplitude: float) -> tuple[list[float], float]:
        return [amplitude * np.cos(phase), amplitude * np.sin(phase)], -float(np.log(np.exp(amplitude * np.cos(year)).mean()))

    count, count_offset = harmonic(cfg.amplitude)
    spend, spend_offset = harmonic(cfg.spend_amplitude)
    lifts = [float(np.log(h["lift"])) for h in cfg.holidays]
    spend_lifts = [float(np.log(cfg.spend_lift))] + [0.0] * (len(cfg.holidays) - 1)
    return {"order": 1, "holidays": holidays, "count": count + lifts, "count_offset": count_offset,
            "spend": spend + spend_lifts, "spend_offset": spend_offset, "status": "the generating calendar"}
