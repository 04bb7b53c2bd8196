"""Protocol shapes: the log lines a seller writes for the agent commerce it does (one JSON object a line).

Every line is our envelope ``{received_at, event, customer_id, agent_profile, <payload>}``: when it happened, what
happened, whose account, the agent profile the buyer declared (UCP's ``UCP-Agent: profile=...`` header; null when
none was sent) and the protocol's own object, unchanged:

- UCP (``ucp-sdk`` 0.5.0 models, protocol version 2026-01-23): ``order`` (an Order; its line items' ids are the
  product ids, one line per product, so that adjustments name the product).
- ACP (Agentic Commerce Protocol, schema subset in ``schemas/acp_checkout_2025-09-29.json``): ``checkout_session``
  (a CheckoutSession) and, for cancellations, ``request`` (the cancel request with its ``intent_trace``).

Amounts are integers in the currency's minor unit, as both protocols write them.
"""

from __future__ import annotations

from datetime import datetime, timezone

UCP_VERSION = "2026-01-23"
ACP_VERSION = "2025-09-29"


def _now(t: datetime | None) -> str:
    """RFC 3339 in UTC to the second, as the source configs parse it."""
    return (t or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def ucp_order(order_id: str, checkout_id: str, lines: list[dict], currency: str = "EUR") -> dict:
    """A UCP Order; ``lines``: ``{item_id, title, unit_price (minor units), quantity}``."""
    items = []
    for line in lines:
        subtotal = line["unit_price"] * line["quantity"]
        items.append({"id": line["item_id"], "item": {"id": line["item_id"], "title": line["title"],
                                                      "price": line["unit_price"]},
                      "quantity": {"total": line["quantity"], "fulfilled": 0},
                      "totals": [{"type": "subtotal", "amount": subtotal}], "status": "processing"})
    total = sum(i["totals"][0]["amount"] for i in items)
    return {"ucp": {"version": UCP_VERSION}, "id": order_id, "checkout_id": checkout_id,
            "permalink_url": f"https://seller.example/orders/{order_id}", "line_items": items,
            "fulfillment": {"events": []}, "currency": currency,
            "totals": [{"type": "subtotal", "amount": total}, {"type": "total", "amount": total}]}


def envelope(event: str, customer_id: str, agent_profile: str | None, at: datetime | None = None, **payload) -> dict:
    return {"received_at": _now(at), "event": event, "customer_id": customer_id, "agent_profile": agent_profile,
            **payload}
