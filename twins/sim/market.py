"""The machines' day loop: a loop over days, numpy arrays over machines.

Each day, in order: deliveries arrive (start of the day), machines decide and place orders on the stock at the
start of the day, breakdowns and bursts start, the day's demand is consumed (lost where stock runs out: no
backorders, stock never goes negative), and telemetry is read at the end of the day. An order placed on day ``t``
with lead time ``L >= 1`` arrives at the start of day ``t + L``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twins.sim.config import MarketConfig
from twins.sim.machines import LEAD_JITTER_P, WEEKDAY_PROFILE, Machines

#: Negotiation messages an autonomous machine sends (the ``code`` of ``MachineLog.messages``).
MESSAGES = ("accept", "counter", "decline")
F32 = np.float32


@dataclass
class MachineLog:
    """What the machines did, as columnar arrays (``dict`` of equal-length arrays per table), plus their state
    at the end of the observation window (``as_of``, the start of day ``cfg.days``)."""

    orders: dict[str, np.ndarray]     # machine, day, second, quantity, unit_price, supplier, promised_days, lead_days
                                      # (and order, the id, where chunks were merged; else the row number)
    messages: dict[str, np.ndarray]   # machine, day, second, code (index into MESSAGES), price, order (-1: none)
    service: dict[str, np.ndarray]    # machine, day, second: a breakdown's service request
    telemetry: dict[str, np.ndarray]  # machine, day, stock, usage (cumulative consumption since the start)
    stock_as_of: np.ndarray
    demand_window: np.ndarray         # total demand in the observation window
    consumed_window: np.ndarray       # total consumption there (demand less lost sales)
    stockout_days: np.ndarray         # days in the window with unmet demand


class _Recorder:
    """Appends per-day arrays and concatenates them once at the end."""

    def __init__(self, *columns: str) -> None:
        self.parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}

    def add(self, **values) -> None:
        size = len(next(iter(values.values())))
        if size:
            for name, value in values.items():
                self.parts[name].append(np.broadcast_to(value, size) if np.ndim(value) == 0 else value)

    def arrays(self, dtypes: dict[str, type]) -> dict[str, np.ndarray]:
        return {c: (np.concatenate(v) if v else np.empty(0)).astype(dtypes.get(c, np.int32), copy=False)
                for c, v in self.parts.items()}


def _geometric(rng: np.random.Generator, mean: float, size: int) -> np.ndarray:
    return rng.geometric(1 / mean, size)


def simulate_machines(cfg: MarketConfig, m: Machines, offers: np.ndarray, list_price: np.ndarray,
                      rng: np.random.Generator, future: np.random.Generator | None = None) -> MachineLog:
    """Run every machine for ``cfg.days + cfg.horizon_days`` days against the suppliers' ``offers``
    (``[days, suppliers, products]``); ``list_price`` per product is what autonomous machines negotiate on. From
    ``as_of`` on, the draws come from ``future`` where given (the same past, another future)."""
    n, c, p = len(m), cfg.consumption, cfg.policy
    total_days = cfg.days + cfg.horizon_days
    delivery = np.asarray(cfg.products.supplier_delivery_days)
    width = int(delivery.max() + p.lead_base_max + 2)          # ring buffer of arrivals, longer than any lead time
    pipeline = np.zeros((width, n), F32)
    spread = rng.random(n)
    stock = np.where(m.policy == 1, m.order_up_to * (0.3 + 0.7 * spread),
                     m.reorder_point + spread * (m.order_up_to - m.reorder_point))
    stock = np.where(m.join_day > 0, 0.0, stock).astype(F32)  # a late fleet arrives empty
    on_order = np.zeros(n, F32)
    usage = np.zeros(n, np.float64)
    down_left = np.zeros(n, np.int16)
    burst_left = np.zeros(n, np.int16)
    forecast = m.expected_rate.astype(F32)
    demand_window, consumed_window = np.zeros(n), np.zeros(n)
    stockout_days = np.zeros(n, np.int32)
    stock_as_of = stock.copy()

    base = m.base_rate.astype(F32)
    weekday_only = m.weekday_only.astype(F32)
    amplitude, phase = m.annual_amplitude.astype(F32), m.annual_phase.astype(F32)
    by_policy = [np.flatnonzero(m.policy == k) for k in range(4)]
    periodic = by_policy[1]
    adaptable, autonomous = by_policy[2], by_policy[3]
    reporting = np.flatnonzero(m.telemetry)
    trigger_auto = (m.lead_expected + m.safety_days)[autonomous].astype(F32)
    start_dow = cfg.start.weekday()

    orders = _Recorder("machine", "day", "second", "quantity", "unit_price", "supplier", "promised_days", "lead_days")
    messages = _Recorder("machine", "day", "second", "code", "price", "order")
    service = _Recorder("machine", "day", "second")
    telemetry = _Recorder("machine", "day", "stock", "usage")
    n_orders = 0

    def place(t: int, idx: np.ndarray, qty: np.ndarray, price: np.ndarray, supplier: np.ndarray,
              second: np.ndarray) -> np.ndarray:
        nonlocal n_orders
        promised = delivery[supplier] + m.lead_base[idx]
        lead = promised + (rng.random(len(idx)) < LEAD_JITTER_P)
        pipeline[(t + lead) % width, idx] += qty
        on_order[idx] += qty
        orders.add(machine=idx, day=t, second=second, quantity=qty, unit_price=price, supplier=supplier,
                   promised_days=promised, lead_days=lead)
        ids = np.arange(n_orders, n_orders + len(idx))
        n_orders += len(idx)
        return ids

    for t in range(total_days):
        if t == cfg.days:
            stock_as_of = stock.copy()  # state at as_of is before that day's arrivals: nothing after as_of is known
            if future is not None:
                rng = future
        slot = t % width
        stock += pipeline[slot]
        on_order -= pipeline[slot]
        pipeline[slot] = 0
        active = m.join_day <= t
        position = np.where(active, stock + on_order, np.inf)  # machines not yet installed never order

        # bound (s, S): order up to S when the inventory position is at or below s
        idx = by_policy[0][position[by_policy[0]] <= m.reorder_point[by_policy[0]]]
        if len(idx):
            place(t, idx, np.ceil(m.order_up_to[idx] - position[idx]), offers[t, m.supplier[idx], m.product[idx]],
                  m.supplier[idx], m.order_second[idx])
        # bound periodic review: every review_days, order up to S
        idx = periodic[((t - m.review_phase[periodic]) % m.review_days[periodic] == 0)
                       & (position[periodic] < m.order_up_to[periodic] - 0.5)]
        if len(idx):
            place(t, idx, np.ceil(m.order_up_to[idx] - position[idx]), offers[t, m.supplier[idx], m.product[idx]],
                  m.supplier[idx], m.order_second[idx])
        # adaptable: (s, S), or early at a deal; the supplier minimising price + delay cost x delivery days
        s_a, big_s = m.reorder_point[adaptable], m.order_up_to[adaptable]
        near = position[adaptable] <= s_a + 0.5 * (big_s - s_a)
        if near.any():
            idx = adaptable[near]
            prices = offers[t][:, m.product[idx]]                                     # [suppliers, machines]
            lp = list_price[m.product[idx]]
            cost = prices + (m.delay_cost[idx] * lp)[None, :] * delivery[:, None]
            choice = np.argmin(cost, axis=0)
            best = prices[choice, np.arange(len(idx))]
            go = (position[idx] <= m.reorder_point[idx]) | (best <= (1 - p.deal_threshold) * lp)
            idx, choice, best = idx[go], choice[go], best[go]
            if len(idx):
                place(t, idx, np.ceil(m.order_up_to[idx] - position[idx]), best, choice.astype(np.int8),
                      m.order_second[idx] + rng.integers(0, 60, len(idx)))
        # autonomous: predictive trigger with human-like procrastination and quantity noise, negotiated price
        level = forecast[autonomous] * trigger_auto
        due = position[autonomous] <= level
        if due.any():
            idx, level = autonomous[due], level[due]
            act = rng.random(len(idx)) >= m.procrastinate[idx]
            urgent = position[idx] <= 0.5 * level
            act |= urgent
            idx, urgent = idx[act], urgent[act]
            k = len(idx)
            lp = list_price[m.product[idx]]
            quote = np.round(lp * rng.uniform(1, 1 + p.quote_markup_max, k), 2)
            reservation = m.reservation[idx] * lp
            counter = np.round(reservation, 2)
            accepted_quote = quote <= reservation
            countered = ~accepted_quote & (counter >= p.seller_floor * lp)
            paid_quote = ~accepted_quote & ~countered & urgent
            buy = accepted_quote | countered | paid_quote
            hour = np.clip(rng.normal(14, 3.5, k), 6, 23.9)
            second = (hour * 3600).astype(np.int32)
            noise = np.exp(m.quantity_noise[idx] * rng.standard_normal(k))
            qty = np.maximum(np.round(forecast[idx] * m.cover_days[idx] * noise), 1)
            price = np.where(countered, counter, quote)
            ids = np.full(k, -1)
            ids[buy] = place(t, idx[buy], qty[buy], price[buy], np.zeros(buy.sum(), np.int8), second[buy])
            first = np.where(accepted_quote, 0, 1)  # accept the quote, or counter it
            messages.add(machine=idx, day=t, second=second - 1, code=first, price=np.where(accepted_quote, quote, counter),
                         order=np.where(accepted_quote | countered, ids, -1))
            late = ~accepted_quote & ~countered
            messages.add(machine=idx[late], day=t, second=second[late] + 60, code=np.where(paid_quote[late], 0, 2),
                         price=quote[late], order=ids[late])

        # breakdowns (a service request each) and bursts, then the day's demand
        u = rng.random(n, dtype=F32)
        broke = np.flatnonzero((down_left == 0) & (u < c.breakdown_prob) & active)
        if len(broke):
            down_left[broke] = _geometric(rng, c.repair_mean_days, len(broke))
            service.add(machine=broke, day=t, second=rng.integers(0, 86_400, len(broke)))
        started = np.flatnonzero((burst_left == 0) & (u >= c.breakdown_prob) & (u < c.breakdown_prob + c.burst_start_prob))
        if len(started):
            burst_left[started] = _geometric(rng, c.burst_mean_days, len(started))
        weekly = F32(WEEKDAY_PROFILE[(start_dow + t) % 7] - 1)
        season = 1 + amplitude * np.sin(F32(2 * np.pi) * (F32(t / 365) + phase))
        noise = np.exp(F32(c.noise_sigma) * rng.standard_normal(n, dtype=F32) - F32(c.noise_sigma**2 / 2))
        demand = base * (1 + weekly * weekday_only) * season * noise
        demand *= np.where(burst_left > 0, F32(c.burst_multiplier), F32(1)) * ((down_left == 0) & active)
        consumed = np.minimum(demand, stock)
        stock -= consumed
        usage += consumed
        forecast[autonomous] += F32(p.forecast_alpha) * (consumed[autonomous] - forecast[autonomous])
        if t < cfg.days:
            demand_window += demand
            consumed_window += consumed
            stockout_days += demand > consumed + 1e-6
        np.subtract(down_left, 1, out=down_left, where=down_left > 0)
        np.subtract(burst_left, 1, out=burst_left, where=burst_left > 0)

        if len(reporting) and t % cfg.telemetry.every_days == 0:
            ts = cfg.telemetry
            on = reporting[active[reporting]]
            k = len(on)
            read_stock = stock[on] + ts.stock_noise * m.order_up_to[on] * rng.standard_normal(k)
            read_usage = usage[on] + ts.usage_noise * m.base_rate[on] * rng.standard_normal(k)
            telemetry.add(machine=on, day=t, stock=np.maximum(read_stock, 0), usage=np.maximum(read_usage, 0))
    if cfg.horizon_days == 0:
        stock_as_of = stock.copy()

    return MachineLog(
        orders=orders.arrays({"quantity": np.float32, "unit_price": np.float32, "supplier": np.int8,
                              "promised_days": np.int16, "lead_days": np.int16}),
        messages=messages.arrays({"code": np.int8, "price": np.float32, "order": np.int64}),
        service=service.arrays({}),
        telemetry=telemetry.arrays({"day": np.int32, "stock": np.float32, "usage": np.float32}),
        stock_as_of=stock_as_of, demand_window=demand_window, consumed_window=consumed_window,
        stockout_days=stockout_days,
    )
