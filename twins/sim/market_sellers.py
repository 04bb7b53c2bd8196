"""How the agent market (``twins.sim.agent_market``) reaches our seller: a ``SellerChannel``.

Per order day the market asks the channel for the opening quote of every request (unit price and promised delivery
days), sends the counters of the buyers that haggle round by round (answered accept, counter or decline with the
seller's price, ``twins.commerce.negotiation.DECISIONS``), then closes every request (sold at the paid price, or
not). Two channels:

- ``PolicyChannel``: the seller in process, vectorised: a ``twins.commerce.policies`` estimator on the request's
  features and the seller's own twin of every buyer (``SellerTwin``); the benchmark's path.
- ``ApiChannel``: any seller behind the API's shapes (``twins.commerce.shapes``; ``twins sell`` or another one): per
  request a ``CheckoutCreate``, a ``CheckoutUpdate`` with the buyer's ``Counter`` per round, then complete or cancel
  (with an intent trace); the market reads the offer back from the ``CheckoutSession`` answer only. Market prices
  are sent in minor units (``minor_units`` per market price unit), so a price read back is within half a minor unit
  of the in-process one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from twins.commerce import negotiation
from twins.commerce.catalog import Catalog, Product
from twins.commerce.policies import (
    COL,
    EXPRESS_DAYS,
    FEATURES,
    STANDARD_DAYS,
    BanditPolicy,
)
from twins.commerce.shapes import (
    Buyer,
    CancelRequest,
    CheckoutCreate,
    CheckoutUpdate,
    CompleteRequest,
    Counter,
    IntentTrace,
    ItemRef,
)


class SellerTwin:
    """Our seller's twin of every buyer, from its own dealings with it only."""

    def __init__(self, n: int) -> None:
        nan = np.full(n, np.nan)
        self.reservation, self.accepted, self.last_contact = nan.copy(), nan.copy(), nan.copy()
        self.gap_sum, self.gap_sq, self.gaps = np.zeros(n), np.zeros(n), np.zeros(n)
        self.quotes, self.lost, self.orders = np.zeros(n), np.zeros(n), np.zeros(n)

    def features(self, idx: np.ndarray, day: int) -> dict[str, np.ndarray]:
        g = np.maximum(self.gaps[idx], 1)
        mean = np.where(self.gaps[idx] > 0, self.gap_sum[idx] / g, np.nan)
        sd = np.sqrt(np.maximum(self.gap_sq[idx] / g - mean ** 2, 0))
        return {"reservation_price": self.reservation[idx], "accepted_price": self.accepted[idx],
                "machine_likeness": np.where(self.gaps[idx] >= 2, 1 / (1 + sd / np.maximum(mean, 1e-9)), np.nan),
                "days_to_next_order": self.last_contact[idx] + mean - day, "n_orders": self.orders[idx],
                "lost_share": np.where(self.quotes[idx] > 0, self.lost[idx] / np.maximum(self.quotes[idx], 1), np.nan)}

    def contact(self, idx: np.ndarray, day: int) -> None:
        seen = np.isfinite(self.last_contact[idx])
        gap = day - self.last_contact[idx]
        j = idx[seen]
        self.gap_sum[j] += gap[seen]
        self.gap_sq[j] += gap[seen] ** 2
        self.gaps[j] += 1
        self.last_contact[idx] = day
        self.quotes[idx] += 1


class SellerChannel:
    """The market's side of our seller. Arrays run over the day's requests (``ask``: customer indices)."""

    def open(self, item_price: np.ndarray, cost_share: float, n_customers: int, rng: np.random.Generator) -> None:
        """Start of the market: its products' list prices (unit cost ``cost_share`` of them) and customers."""

    def quote(self, day: int, ask: np.ndarray, item: np.ndarray, list_price: np.ndarray, unit_cost: np.ndarray,
              quantity: np.ndarray, declared: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(opening unit price, promised delivery days) per request."""
        raise NotImplementedError

    def counter(self, rnd: int, open_: np.ndarray, counter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(decision, price) per request answering ``counter`` at round ``rnd`` (read where ``open_``)."""
        raise NotImplementedError

    def close(self, day: int, sale: np.ndarray, paid: np.ndarray) -> None:
        """Each request sold at ``paid``, or not."""
        raise NotImplementedError


class PolicyChannel(SellerChannel):
    """The seller in process: ``policy`` (a ``twins.commerce.policies`` estimator) on the request's features and
    ``SellerTwin``. A ``BanditPolicy`` learns online from its own deals (refitted every ``learn_every`` days,
    exploring meanwhile with the market's random generator)."""

    def __init__(self, policy, learn_every: int = 7) -> None:
        self.policy, self.learn_every = policy, learn_every
        self.learning = isinstance(policy, BanditPolicy)
        self.log_x: list[np.ndarray] = []
        self.log_arm: list[np.ndarray] = []
        self.log_reward: list[np.ndarray] = []

    def open(self, item_price, cost_share, n_customers, rng) -> None:
        self.twin, self.rng = SellerTwin(n_customers), rng

    def quote(self, day, ask, item, list_price, unit_cost, quantity, declared):
        self.twin.contact(ask, day)
        X = np.full((ask.size, len(FEATURES)), np.nan)
        X[:, COL["list_price"]], X[:, COL["unit_cost"]] = list_price, unit_cost
        X[:, COL["quantity"]], X[:, COL["agent_declared"]], X[:, COL["counter_ratio"]] = quantity, declared, 0.0
        for name, values in self.twin.features(ask, day).items():
            X[:, COL[name]] = values
        if self.learning:
            self.arm = self.policy.choose(X, explore=True, rng=self.rng)
            offer = self.policy.predict(X, self.arm)
        else:
            offer = self.policy.predict(X)
        self.X, self.ask, self.lp, self.cost, self.qty = X, ask, list_price, unit_cost, quantity
        self.price, self.floor, self.rounds, days = (offer[:, i] for i in range(4))
        self.haggled, self.countered = np.zeros(ask.size, bool), np.full(ask.size, np.nan)
        return self.price, days

    def counter(self, rnd, open_, counter):
        first = open_ & ~self.haggled
        self.countered[first], self.haggled = counter[first], self.haggled | open_
        return negotiation.respond(self.price, self.floor, self.rounds, rnd, counter)

    def close(self, day, sale, paid) -> None:
        twin, ask, haggle = self.twin, self.ask, self.haggled
        # the twin learns from the counters it saw and the openings taken
        saw = haggle & np.isfinite(self.countered)
        twin.reservation[ask[saw]] = np.fmin(twin.reservation[ask[saw]], self.countered[saw])
        plain = sale & ~haggle
        twin.accepted[ask[plain]] = np.fmax(twin.accepted[ask[plain]], self.price[plain])
        twin.lost[ask[~sale]] += 1
        twin.orders[ask[sale]] += 1
        if self.learning:
            self.log_x.append(self.X)
            self.log_arm.append(self.arm)
            self.log_reward.append(np.where(sale, np.nan_to_num(paid) - self.cost, 0.0) * self.qty / self.lp)
            if day % self.learn_every == self.learn_every - 1:
                self.policy.fit(np.concatenate(self.log_x),
                                np.column_stack([np.concatenate(self.log_arm), np.concatenate(self.log_reward)]))


def market_catalog(item_price: np.ndarray, cost_share: float, minor_units: int, currency: str = "usd") -> Catalog:
    """The market's products as a seller's catalog (ids ``item-<j>``, prices and costs in minor units, standard and
    express delivery of ``twins.commerce.policies``, stock that never runs out)."""
    return Catalog(currency=currency, products=[
        Product(id=f"item-{j}", title=f"market item {j}", price=round(float(p) * minor_units),
                unit_cost=round(float(p) * cost_share * minor_units), lead_days=STANDARD_DAYS, express_days=EXPRESS_DAYS,
                stock=2 ** 62) for j, p in enumerate(item_price)])


class ApiChannel(SellerChannel):
    """Our seller behind the API's shapes. ``seller(catalog)`` returns a client of a seller selling ``catalog`` (the
    market's products, ``market_catalog``): anything with ``post(path, json=..., headers=...)`` answering
    ``.status_code`` and ``.json()`` (FastAPI's ``TestClient``, an ``httpx.Client``). Declared agents send
    ``UCP-Agent: profile="<agents>/c<customer>"``; customer ids are ``c<customer index>``."""

    def __init__(self, seller: Callable[[Catalog], Any], minor_units: int = 10_000,
                 agents: str = "https://agents.example/custobot") -> None:
        self.seller, self.minor_units, self.agents = seller, minor_units, agents

    def open(self, item_price, cost_share, n_customers, rng) -> None:
        self.client = self.seller(market_catalog(item_price, cost_share, self.minor_units))

    def _post(self, path: str, model, customer: int) -> dict:
        headers = {"UCP-Agent": f'profile="{self.agents}/c{customer}"'} if self.declared[customer] else {}
        answer = self.client.post(path, json=model.model_dump(exclude_none=True), headers=headers)
        if answer.status_code >= 400:
            raise RuntimeError(f"POST {path} for customer c{customer}: {answer.status_code} {answer.text[:300]}; "
                               "the seller must answer the API's shapes (twins.commerce.shapes)")
        return answer.json()

    def _read(self, r: int, session: dict) -> None:
        line = session["negotiation"][0]
        self.price[r], self.decision[r] = line["unit_price"] / self.minor_units, line["decision"]

    def quote(self, day, ask, item, list_price, unit_cost, quantity, declared):
        self.ask, self.declared = ask, dict(zip(ask.tolist(), declared.tolist()))
        self.price, self.decision, self.haggled = np.zeros(ask.size), [""] * ask.size, np.zeros(ask.size, bool)
        self.sessions, days = [], np.zeros(ask.size)
        for r, (i, j, q) in enumerate(zip(ask.tolist(), item.tolist(), quantity.tolist())):
            s = self._post("/checkout_sessions", CheckoutCreate(
                buyer=Buyer(customer_id=f"c{i}"), items=[ItemRef(id=f"item-{j}", quantity=int(q))]), i)
            self.sessions.append(s["id"])
            self._read(r, s)
            days[r] = s["fulfillment_options"][0]["delivery_days"]
        return self.price.copy(), days

    def counter(self, rnd, open_, counter):
        for r in np.flatnonzero(open_):
            asked = max(round(float(counter[r]) * self.minor_units), 0)
            self._read(r, self._post(f"/checkout_sessions/{self.sessions[r]}",
                                     CheckoutUpdate(counter=Counter(suggested_unit_price=asked)), int(self.ask[r])))
        self.haggled |= open_
        decision = np.array([negotiation.DECISIONS.index(d) if d in negotiation.DECISIONS else negotiation.COUNTER
                             for d in self.decision], int)
        return decision, self.price.copy()

    def close(self, day, sale, paid) -> None:
        for r, i in enumerate(self.ask.tolist()):
            path = f"/checkout_sessions/{self.sessions[r]}"
            if sale[r]:
                self._post(path + "/complete", CompleteRequest(), i)
            else:
                why = "price_sensitivity" if self.haggled[r] else "comparison"
                self._post(path + "/cancel", CancelRequest(intent_trace=IntentTrace(reason_code=why)), i)
