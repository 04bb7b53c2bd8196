"""A scripted machine customer that buys through the seller API's shapes only (``twins.commerce.shapes``), from any
seller that speaks them: ``twins sell`` or another one. The agent market's behaviours, one buyer at a time over
HTTP: it searches every seller, opens a checkout session with each one it may ask, takes the quote whose price plus
its delay cost times the promised days is lowest (``bound``: only its current supplier; ``first_proposal_bias``:
the first acceptable quote in the sellers' order), counters at its reservation price until the seller accepts or
declines, and completes, or cancels with an intent trace. ``client`` is anything with ``post(path, json=...)``
answering ``.status_code`` and ``.json()`` (an ``httpx.Client`` or FastAPI's ``TestClient``).
"""

from __future__ import annotations

from dataclasses import dataclass

from twins.commerce.shapes import (
    Buyer,
    CancelRequest,
    CheckoutCreate,
    CheckoutUpdate,
    Counter,
    IntentTrace,
    ItemRef,
    SearchRequest,
)


@dataclass
class Custobot:
    customer_id: str
    reservation: int                 # highest unit price it pays, minor units
    delay_cost: float = 0.0          # minor units per unit and day of delivery
    kind: str = "adaptable"          # bound | adaptable
    supplier: int = 0                # a bound machine asks only this seller
    max_rounds: int = 3
    first_proposal_bias: bool = False
    profile: str = "https://agents.example/custobot/profile.json"

    def _post(self, client, path: str, model) -> dict:
        answer = client.post(path, json=model.model_dump(exclude_none=True),
                             headers={"UCP-Agent": f'profile="{self.profile}"'})
        if answer.status_code >= 400:
            raise RuntimeError(f"POST {path}: {answer.status_code} {answer.text[:300]}")
        return answer.json()

    def buy(self, sellers: list, query: str, quantity: int) -> dict:
        """Buy ``quantity`` of the first product each seller finds for ``query``; returns ``{status, seller,
        unit_price, rounds, session}`` (status ``completed`` or ``canceled``)."""
        asked = [self.supplier] if self.kind == "bound" else list(range(len(sellers)))
        quotes = []
        for i in asked:
            found = self._post(sellers[i], "/catalog/search",
                               SearchRequest(query=query, quantity=quantity, filters={"in_stock": True}))["products"]
            if not found:
                continue
            s = self._post(sellers[i], "/checkout_sessions", CheckoutCreate(
                buyer=Buyer(customer_id=self.customer_id), items=[ItemRef(id=found[0]["id"], quantity=quantity)]))
            quotes.append((i, s))
        if not quotes:
            return {"status": "canceled", "seller": None, "unit_price": None, "rounds": 0, "session": None}
        price = lambda s: s["negotiation"][0]["unit_price"]  # noqa: E731
        cost = lambda s: price(s) + self.delay_cost * s["fulfillment_options"][0]["delivery_days"]  # noqa: E731
        acceptable = [q for q in quotes if price(q[1]) <= self.reservation]
        if self.first_proposal_bias and acceptable:
            chosen = acceptable[0]
        else:
            chosen = min(quotes, key=lambda q: cost(q[1]))
        for i, s in quotes:  # the sessions it does not take are cancelled, saying why
            if i != chosen[0]:
                self._post(sellers[i], f"/checkout_sessions/{s['id']}/cancel",
                           CancelRequest(intent_trace=IntentTrace(reason_code="comparison")))
        i, s = chosen
        rounds = 0
        while price(s) > self.reservation and rounds < self.max_rounds:
            rounds += 1
            s = self._post(sellers[i], f"/checkout_sessions/{s['id']}",
                           CheckoutUpdate(counter=Counter(suggested_unit_price=self.reservation)))
            if s["negotiation"][0]["decision"] == "decline":
                break
        if price(s) > self.reservation:
            self._post(sellers[i], f"/checkout_sessions/{s['id']}/cancel",
                       CancelRequest(intent_trace=IntentTrace(reason_code="price_sensitivity")))
            return {"status": "canceled", "seller": i, "unit_price": None, "rounds": rounds, "session": s["id"]}
        done = sellers[i].post(f"/checkout_sessions/{s['id']}/complete", json={}).json()
        return {"status": done["status"], "seller": i, "unit_price": price(done), "rounds": rounds, "session": s["id"]}
