"""A market of machine customers (and people) buying one consumable each from competing sellers, one of them ours.

Vectorised over customers, one step a day. On its order day each customer's agent asks the sellers for quotes in
the checkout shape (``twins.commerce.policies.FEATURES``: what a checkout create/update carries, plus the
seller's own twin of the buyer, built only from what the buyer did with that seller). Our seller answers with an
offer (price, floor, concession rounds, delivery promise) and the shared negotiation moves
(``twins.commerce.negotiation``); the two competitors quote fixed list prices and lead times. Our seller is reached
through a ``twins.sim.market_sellers.SellerChannel``: in process (a policy, the benchmark's path) or through the
seller API's shapes (``ApiChannel``: checkout create, counters as checkout updates, complete or cancel), where the
buyers see only what the checkout session's answer carries.

Machine kinds (ground truth, never shown to the seller): ``bound`` (asks only its current supplier, counters at its
reservation price, moves after a decline or a late delivery), ``adaptable`` (compares price + delay cost x lead
time across sellers, counters the best one at its reservation price), ``autonomous`` (compares, and counters our
seller at the price that beats the best competitor, capped at its reservation price). People buy at the list
price from their usual seller and switch when it is dearer than another. Options: ``first_proposal_bias``
(an adaptable agent takes the first acceptable quote in result order), ``position_bias`` (a seller listed
earlier looks cheaper by this share of the price per place). Some orders request service (it costs the seller).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from twins.commerce import negotiation
from twins.sim.market_sellers import PolicyChannel, SellerChannel

KINDS = ("bound", "adaptable", "autonomous", "person")
OURS = 0
MAX_ROUNDS = 50  # a buyer stops countering after this many rounds (no policy here concedes that long)


@dataclass(frozen=True)
class MarketParams:
    n_customers: int = 20_000
    days: int = 365
    share_people: float = 0.25
    kind_shares: tuple[float, float, float] = (0.35, 0.35, 0.30)  # bound, adaptable, autonomous among machines
    n_items: int = 50
    price_level: float = 20.0            # median list price
    cost_share: float = 0.7              # unit cost / list price
    competitors: tuple[tuple[float, float], ...] = ((1.0, 3.0), (0.96, 6.0))  # (price / our list price, lead days)
    reservation: tuple[float, float] = (0.92, 1.3)     # buyer's reservation price / list price, uniform
    delay_cost: tuple[float, float] = (0.002, 0.02)    # buyer's cost of a day's delay / list price, uniform
    order_gap: tuple[float, float] = (7.0, 28.0)       # machine order interval, days
    person_gap: float = 30.0
    late: tuple[float, float] = (0.04, 0.12)           # P(late) standard / express delivery
    express_cost: float = 0.02                         # extra cost per unit of an express delivery / list price
    service_share: float = 0.02                        # orders that request service
    service_cost: float = 0.5                          # per service request / list price
    switch_after_late: float = 0.4
    switch_after_decline: float = 0.5
    first_proposal_bias: float = 0.0
    position_bias: float = 0.0
    agent_declared: float = 0.8                        # machines that send an agent profile
    seed: int = 0


@dataclass
class MarketResult:
    metrics: dict[str, float]
    by_kind: dict[str, dict[str, float]]
    truth: dict[str, np.ndarray] = field(repr=False)


def simulate(params: MarketParams, policy, learn_every: int = 7, progress=None) -> MarketResult:
    """One market year against ``policy``: a ``twins.commerce.policies`` estimator, run in process
    (``PolicyChannel``; a ``BanditPolicy`` learns online, refitted every ``learn_every`` days), or any
    ``SellerChannel`` (``ApiChannel``: a seller behind the API's shapes)."""
    channel = policy if isinstance(policy, SellerChannel) else PolicyChannel(policy, learn_every)
    p, rng = params, np.random.default_rng(params.seed)
    n = p.n_customers
    kind = np.where(rng.random(n) < p.share_people, 3,
                    rng.choice(3, n, p=np.asarray(p.kind_shares) / sum(p.kind_shares)))
    machine = kind < 3
    item_price = p.price_level * np.exp(rng.normal(0, 0.4, p.n_items))
    item = rng.integers(0, p.n_items, n)
    lp = item_price[item]
    cost = lp * p.cost_share
    res = lp * rng.uniform(*p.reservation, n)
    lam = lp * rng.uniform(*p.delay_cost, n)
    gap = np.where(machine, rng.uniform(*p.order_gap, n), p.person_gap)
    qty = np.where(machine, rng.integers(1, 11, n), rng.integers(1, 3, n)).astype(float)
    declared = (machine & (rng.random(n) < p.agent_declared)).astype(float)
    next_day = rng.uniform(0, gap)
    n_sellers = 1 + len(p.competitors)
    supplier = rng.integers(0, n_sellers, n)
    comp_price = np.stack([lp * m for m, _ in p.competitors], 1)
    comp_days = np.array([d for _, d in p.competitors])
    channel.open(item_price, p.cost_share, n, rng)

    stats = {k: np.zeros(n) for k in ("requests", "wins", "revenue", "margin", "rounds", "on_time", "orders_all",
                                      "early_ours", "late_ours", "service")}
    for day in range(p.days):
        due = np.flatnonzero(next_day <= day)
        if due.size == 0:
            continue
        next_day[due] += gap[due] * np.where(machine[due], rng.uniform(0.9, 1.1, due.size), rng.uniform(0.5, 1.5, due.size))
        k, r, lam_d = kind[due], res[due], lam[due]
        # who asks us: bound machines and people whose supplier we are, every adaptable and autonomous machine
        looks = rng.random(due.size) < 0.1  # a person at a competitor looks around now and then
        asks = np.where(k == 0, supplier[due] == OURS, np.where(k == 3, (supplier[due] == OURS) | looks, True))
        ask = due[asks]
        # the buyers see only what our seller's answer carries: the opening price and the promised days
        price, days = channel.quote(day, ask, item[ask], lp[ask], cost[ask], qty[ask], declared[ask])
        # every buyer's view of the sellers: effective cost = price + delay cost x days (+ position bias)
        quote = np.full((due.size, n_sellers), np.inf)
        lead = np.zeros((due.size, n_sellers))
        quote[asks, OURS], lead[asks, OURS] = price, days
        quote[:, 1:], lead[:, 1:] = comp_price[due], comp_days
        position = rng.permuted(np.tile(np.arange(n_sellers), (due.size, 1)), axis=1)
        eff = quote + lam_d[:, None] * lead + p.position_bias * lp[due][:, None] * position
        comp_best = np.min(comp_price[due] + lam_d[:, None] * comp_days, 1)
        # what each buyer counters to us with
        counter = np.where(k == 2, np.minimum(r, comp_best - lam_d * lead[:, OURS]), r)[asks]
        acceptable = np.where(k[asks] == 2, price + lam_d[asks] * days <= comp_best[asks] + 1e-9, True) & (price <= r[asks])
        wants_ours = np.zeros(due.size, bool)
        # which seller the buyer goes to first
        choice = np.where(k == 0, supplier[due], np.argmin(eff, 1))
        if p.first_proposal_bias > 0:
            first = np.argmin(np.where(quote <= r[:, None], position, n_sellers), 1)
            biased = (k == 1) & (rng.random(due.size) < p.first_proposal_bias) & np.any(quote <= r[:, None], 1)
            choice = np.where(biased, first, choice)
        choice = np.where((k == 3) & (supplier[due] == OURS), OURS, choice)
        wants_ours[asks] = (choice[asks] == OURS) | (k[asks] == 2)
        # negotiate with us: the buyer accepts an acceptable opening, else counters until accept or decline
        sale = acceptable & wants_ours[asks]
        paid = np.where(sale, price, np.nan)
        n_rounds = np.zeros(ask.size)
        haggle = wants_ours[asks] & ~acceptable & np.isin(k[asks], (0, 1, 2))
        open_ = haggle.copy()
        for rnd in range(1, MAX_ROUNDS + 1):
            if not open_.any():
                break
            decision, answer = channel.counter(rnd, open_, counter)
            n_rounds += open_
            took = open_ & (decision == negotiation.ACCEPT)
            paid = np.where(took, answer, paid)
            sale |= took
            open_ &= decision == negotiation.COUNTER
        channel.close(day, sale, paid)
        won = ask[sale]
        # delivery, service, margin
        express = days[sale] < 4
        late = rng.random(won.size) < np.where(express, p.late[1], p.late[0])
        service = rng.random(won.size) < p.service_share
        units = qty[won]
        margin = (paid[sale] - cost[won] - express * p.express_cost * lp[won]) * units - service * p.service_cost * lp[won]
        np.add.at(stats["requests"], ask, 1)
        np.add.at(stats["wins"], won, 1)
        np.add.at(stats["revenue"], won, paid[sale] * units)
        np.add.at(stats["margin"], won, margin)
        np.add.at(stats["rounds"], ask, n_rounds)
        np.add.at(stats["on_time"], won, ~late)
        np.add.at(stats["service"], won, service)
        # buyers we lost buy elsewhere: the cheapest acceptable competitor (bound ones only after switching)
        bought_ours = np.zeros(n, bool)
        bought_ours[won] = True
        ours_now = bought_ours[due]
        comp_eff = np.where(comp_price[due] <= r[:, None], comp_price[due] + lam_d[:, None] * comp_days, np.inf)
        alt = 1 + np.argmin(comp_eff, 1)
        has_alt = np.isfinite(comp_eff.min(1))
        declined_bound = (k == 0) & asks & ~ours_now
        move = np.where(k == 0, declined_bound & (rng.random(due.size) < p.switch_after_decline),
                        ~ours_now & has_alt & ((k != 3) | asks))
        at_comp = np.clip(supplier[due] - 1, 0, None)
        stays = ~ours_now & ~move & (supplier[due] != OURS) & (comp_price[due, at_comp] <= r)
        stats["orders_all"][due] += ours_now | (move & has_alt) | stays
        supplier[due] = np.where(ours_now, OURS, np.where(move, alt, supplier[due]))
        # a late delivery sends a buyer elsewhere with some probability
        late_idx = won[late]
        leave = late_idx[rng.random(late_idx.size) < p.switch_after_late]
        supplier[leave] = rng.integers(1, n_sellers, leave.size)
        if day < 60:
            stats["early_ours"][won] = 1
        if day >= p.days - 60:
            stats["late_ours"][won] = 1
        if progress is not None:
            progress(day)

    def summary(mask: np.ndarray) -> dict[str, float]:
        s = {k: v[mask].sum() for k, v in stats.items()}
        early = stats["early_ours"][mask] > 0
        return {"margin": s["margin"], "revenue": s["revenue"], "win_rate": s["wins"] / max(s["requests"], 1),
                "fill_rate": s["on_time"] / max(s["wins"], 1), "rounds": s["rounds"] / max(s["requests"], 1),
                "retained": float((stats["late_ours"][mask][early] > 0).mean()) if early.any() else float("nan"),
                "share": s["wins"] / max(s["orders_all"], 1), "service_requests": s["service"],
                "customers": float(mask.sum())}

    return MarketResult(summary(np.ones(n, bool)), {name: summary(kind == i) for i, name in enumerate(KINDS)},
                        {"kind": kind, "reservation": res, "delay_cost": lam, "list_price": lp, "gap": gap})
