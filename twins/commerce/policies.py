"""Seller policies with the scikit-learn contract: ``fit(X, y)`` / ``predict(X)``.

``X`` holds one row per quote request, columns ``FEATURES``: the request's own fields (what any seller sees in a
checkout create/update) followed by the buyer's twins (nan where the seller has none): its machine twin and the
seller's own dealings with it, then the emotion of its recent messages (``negative_share``: mean negative-sentiment
probability of its recent messages; ``negative_trend``: that minus the window before; ``twins.twin.emotion``).
``predict`` returns one row per request, columns ``OFFER``: the opening unit price, the floor (lowest price the
seller will agree to), the concession rounds and the promised delivery days. ``twins.commerce.negotiation`` turns
an offer into the accept / counter / decline answers of a negotiation, the same way for every policy.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator

from twins.commerce.negotiation import level

#: request fields (any seller sees them), then the twin's estimates of the buyer
REQUEST = ["list_price", "unit_cost", "quantity", "agent_declared", "counter_ratio"]
TWIN = ["reservation_price", "accepted_price", "machine_likeness", "p_adaptable", "days_to_next_order", "n_orders",
        "lost_share", "negative_share", "negative_trend"]
FEATURES = REQUEST + TWIN
OFFER = ["price", "floor", "rounds", "promise_days"]
COL = {name: i for i, name in enumerate(FEATURES)}

STANDARD_DAYS, EXPRESS_DAYS = 4.0, 2.0


def _col(X: np.ndarray, name: str) -> np.ndarray:
    return np.asarray(X, dtype=np.float64)[:, COL[name]]


def _offer(price, floor, rounds, days) -> np.ndarray:
    n = len(price)
    return np.column_stack([price, np.minimum(floor, price), np.broadcast_to(rounds, n).astype(float),
                            np.broadcast_to(days, n).astype(float)])


class FixedPrice(BaseEstimator):
    """The list price, never conceded."""

    def fit(self, X, y=None) -> "FixedPrice":
        return self

    def predict(self, X) -> np.ndarray:
        p = _col(X, "list_price")
        return _offer(p, p, 0, STANDARD_DAYS)


class UniformDiscount(BaseEstimator):
    """The list price less ``discount`` for everyone, never conceded further."""

    def __init__(self, discount: float = 0.05) -> None:
        self.discount = discount

    def fit(self, X, y=None) -> "UniformDiscount":
        return self

    def predict(self, X) -> np.ndarray:
        p = _col(X, "list_price") * (1 - self.discount)
        return _offer(p, p, 0, STANDARD_DAYS)


class AcceptAboveCost(BaseEstimator):
    """The list price, and any counter above cost (plus ``margin``) accepted at once."""

    def __init__(self, margin: float = 0.01) -> None:
        self.margin = margin

    def fit(self, X, y=None) -> "AcceptAboveCost":
        return self

    def predict(self, X) -> np.ndarray:
        return _offer(_col(X, "list_price"), _col(X, "unit_cost") * (1 + self.margin), 1, STANDARD_DAYS)


class BanditPolicy(BaseEstimator):
    """Twin-free learned policy: a contextual bandit over the request's own features. Each arm is a price level
    (a multiple of the list price, conceded to ``floor_share`` of the way to cost); the value of each arm is a
    ridge regression of the margin it earned on the context ``[1, agent_declared, log quantity, counter_ratio]``.
    ``fit(X, y)`` takes ``y`` as (arm index, reward) pairs; ``predict`` picks the best arm (``epsilon``-greedy when
    ``explore`` is set, for learning inside a market)."""

    def __init__(self, arms: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1), floor_share: float = 0.5,
                 ridge: float = 1.0, epsilon: float = 0.1, seed: int = 0) -> None:
        self.arms, self.floor_share, self.ridge, self.epsilon, self.seed = arms, floor_share, ridge, epsilon, seed

    @staticmethod
    def context(X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return np.column_stack([np.ones(len(X)), X[:, COL["agent_declared"]], np.log1p(X[:, COL["quantity"]]),
                                np.nan_to_num(X[:, COL["counter_ratio"]])]).astype(np.float32)

    def fit(self, X, y) -> "BanditPolicy":
        ctx, y = self.context(X).astype(np.float64), np.asarray(y, dtype=np.float64)
        arm, reward = y[:, 0].astype(int), y[:, 1]
        d = ctx.shape[1]
        self.coef_ = np.zeros((len(self.arms), d), np.float32)
        for a in range(len(self.arms)):
            c, r = ctx[arm == a], reward[arm == a]
            # an arm never tried gets an optimistic intercept so that it is tried
            self.coef_[a] = (np.linalg.solve(c.T @ c + self.ridge * np.eye(d), c.T @ r) if len(c)
                             else np.r_[np.abs(reward).max(initial=1.0), np.zeros(d - 1)])
        return self

    def choose(self, X, explore: bool = False, rng: np.random.Generator | None = None) -> np.ndarray:
        ctx = self.context(X)
        coef = getattr(self, "coef_", np.zeros((len(self.arms), ctx.shape[1]), np.float32))
        arm = np.argmax(ctx @ coef.T, axis=1)
        if explore:
            rng = rng or np.random.default_rng(self.seed)
            flip = rng.random(len(arm)) < self.epsilon
            arm = np.where(flip, rng.integers(0, len(self.arms), len(arm)), arm)
        return arm

    def predict(self, X, arm: np.ndarray | None = None) -> np.ndarray:
        arm = self.choose(X) if arm is None else arm
        lp, cost = _col(X, "list_price"), _col(X, "unit_cost")
        price = lp * np.asarray(self.arms)[arm]
        return _offer(price, price - self.floor_share * (price - cost), 2, STANDARD_DAYS)


class TwinPolicy(BaseEstimator):
    """Twin-driven seller. Per buyer, from its twin: a revealed reservation price (its counters) or the highest
    price it took, how machine-like and how adaptable it is (share of our quotes it left), when it orders next.

    - Opening price: a first buyer gets the list price less ``open_discount``; a buyer that took a price gets it
      raised by ``probe`` (up to ``max_markup`` over list), never above ``reveal_share`` of the price its counters
      revealed; a buyer that leaves (``lost_share``) is opened up to ``retain_discount`` lower: keeping it is worth
      its future margins.
    - Floor: cost plus ``floor_margin`` of the list margin for buyers that switch (an order kept is worth the
      next ones), plus ``bound_floor`` of it for buyers that never leave.
    - Concession schedule: ``rounds`` rounds from the opening price to the floor.
    - Upward probing of buyers the twin classes as bound: a machine (``machine_likeness`` at least
      ``bound_likeness``, or a declared agent) that took a price, never countered and never left is asked
      ``bound_probe`` more than the highest price it took, with that price as the floor and one round: a bound
      machine then either takes the higher price or counters at its reservation price, which is accepted at once and
      priced at from then on. Retention guard: a buyer that left once (``lost_share`` > 0) is no longer probed.
    - Delivery: express when the buyer's next order is due within ``urgent_days`` (its delay cost is highest).
    - Upset buyers: one whose recent messages are strongly negative (``negative_share`` at least ``upset_share``,
      or ``negative_trend`` at least ``upset_trend``) is never probed upward (neither ``probe`` nor
      ``bound_probe``) and gets the retention concession: it is opened ``upset_steps`` steps down its concession
      schedule (never above the price it would have got, never below the floor), with that many rounds fewer
      left. A buyer without emotion data (nan: no messages, as in the simulated market) is never upset, so
      every offer without it is the same as without the rule.

    Parameters were chosen on development markets only (seeds 1-2, default ``MarketParams``); the upset rule's
    were not tuned (the market has no messages)."""

    def __init__(self, open_discount: float = 0.05, probe: float = 0.0, reveal_share: float = 1.0,
                 max_markup: float = 0.3, retain_discount: float = 0.0, floor_margin: float = 0.1,
                 bound_floor: float = 0.6, rounds: int = 2, urgent_days: float = 2.0, bound_probe: float = 0.015,
                 bound_likeness: float = 0.9, upset_share: float = 0.5, upset_trend: float = 0.25,
                 upset_steps: int = 1) -> None:
        self.open_discount, self.probe, self.reveal_share = open_discount, probe, reveal_share
        self.max_markup, self.retain_discount = max_markup, retain_discount
        self.floor_margin, self.bound_floor, self.rounds, self.urgent_days = floor_margin, bound_floor, rounds, urgent_days
        self.bound_probe, self.bound_likeness = bound_probe, bound_likeness
        self.upset_share, self.upset_trend, self.upset_steps = upset_share, upset_trend, upset_steps

    def upset(self, X) -> np.ndarray:
        """Buyers whose recent messages are strongly negative or getting more negative (False without messages)."""
        share, trend = _col(X, "negative_share"), _col(X, "negative_trend")
        return ((np.nan_to_num(share, nan=-np.inf) >= self.upset_share)
                | (np.nan_to_num(trend, nan=-np.inf) >= self.upset_trend))

    def fit(self, X, y=None) -> "TwinPolicy":
        return self

    def predict(self, X) -> np.ndarray:
        lp, cost = _col(X, "list_price"), _col(X, "unit_cost")
        reservation, accepted = _col(X, "reservation_price"), _col(X, "accepted_price")
        lost = np.nan_to_num(_col(X, "lost_share"))
        upset = self.upset(X)
        cap = lp * (1 + self.max_markup)
        probe = np.where(upset, 0.0, self.probe)
        price = np.where(np.isfinite(accepted), np.minimum(accepted * (1 + probe), cap), lp * (1 - self.open_discount))
        revealed = np.isfinite(reservation)
        price = np.where(revealed, np.minimum(price, reservation * self.reveal_share), price)
        price = price * (1 - self.retain_discount * np.clip(lost, 0, 1))
        price = np.maximum(price, cost * 1.01)
        margin = np.maximum(lp - cost, 0)
        floor = cost + margin * (self.floor_margin + self.bound_floor * (lost == 0))
        rounds = np.full(len(price), float(self.rounds))
        if self.bound_probe > 0:
            # a machine that never left us and never countered: ask higher; its counter (at or above what it took
            # before) is accepted at once, so that a bound machine reveals its reservation price instead of leaving
            likeness = np.nan_to_num(_col(X, "machine_likeness"))
            machine = (likeness >= self.bound_likeness) | (_col(X, "agent_declared") > 0)
            probing = np.isfinite(accepted) & ~revealed & (lost == 0) & machine & ~upset
            price = np.where(probing, np.minimum(accepted * (1 + self.bound_probe), cap), price)
            floor = np.where(probing, accepted, floor)
            rounds = np.where(probing, 1.0, rounds)
        if self.upset_steps > 0:
            # the retention concession: open where the schedule would be after `upset_steps` counters
            steps = np.where(upset, np.minimum(self.upset_steps, rounds), 0.0)
            price = np.where(upset, np.minimum(price, level(price, floor, rounds, steps)), price)
            rounds = rounds - steps
        due = _col(X, "days_to_next_order")
        days = np.where(np.nan_to_num(due, nan=np.inf) <= self.urgent_days, EXPRESS_DAYS, STANDARD_DAYS)
        return _offer(price, floor, rounds, days)


POLICIES = {"fixed_price": FixedPrice, "uniform_discount": UniformDiscount, "accept_above_cost": AcceptAboveCost,
            "bandit": BanditPolicy, "twin": TwinPolicy}
