"""Request and response models of the seller API (``twins sell``), in the protocols' shapes.

Checkout sessions follow the Agentic Commerce Protocol's CheckoutSession (``schemas/acp_checkout_2025-09-29.json``:
line items with base amount, discount, subtotal, tax and total in minor units; totals; fulfilment options; messages;
links); catalog search and look-up follow the Universal Commerce Protocol's catalog capability. Neither protocol
has a negotiation primitive: the agent's counter rides on a checkout update (a suggested unit price or a requested
discount), and the seller's answer is the session's ``negotiation`` extension (accept, counter or decline per
line, with the seller's current unit price).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

Id = Field(min_length=1, max_length=256)
REASON_CODES = ("price_sensitivity", "shipping_cost", "shipping_speed", "product_fit", "trust_security",
                "returns_policy", "payment_options", "comparison", "timing_deferred", "other")


# ------------------------------------------------------------------------------------------------ catalog

class SearchFilters(BaseModel):
    compatible_with: str | None = Field(None, max_length=256)
    max_unit_price: int | None = Field(None, ge=0, description="minor units, at the requested quantity")
    max_lead_days: float | None = Field(None, gt=0)
    in_stock: bool = False


class SearchRequest(BaseModel):
    query: str = Field("", max_length=1000)
    filters: SearchFilters = SearchFilters()
    quantity: int = Field(1, ge=1, le=1_000_000)
    limit: int = Field(20, ge=1, le=200)


class LookupRequest(BaseModel):
    ids: list[str] = Field(min_length=1, max_length=200)


class PriceTierView(BaseModel):
    min_quantity: int
    price: int


class ProductView(BaseModel):
    id: str
    title: str
    currency: str
    price: int = Field(description="list unit price, minor units")
    unit_price: int = Field(description="list unit price at the requested quantity (its tier)")
    price_tiers: list[PriceTierView]
    lead_days: float
    express_days: float | None
    stock: int
    attributes: dict[str, Any]
    compatible_with: list[str]


class CatalogResponse(BaseModel):
    products: list[ProductView]
    missing: list[str] = []


# ------------------------------------------------------------------------------------------------ checkout

class ItemRef(BaseModel):
    id: str = Id
    quantity: int = Field(ge=1, le=1_000_000)


class Buyer(BaseModel):
    customer_id: str = Field(min_length=1, max_length=256, description="the buyer's account with this seller")


class CheckoutCreate(BaseModel):
    buyer: Buyer
    items: list[ItemRef] = Field(min_length=1, max_length=100)


class Counter(BaseModel):
    """The agent's counter: a suggested unit price (minor units) or a requested discount off the list price, for
    one line (``item_id``) or every line."""

    item_id: str | None = Field(None, max_length=256)
    suggested_unit_price: int | None = Field(None, ge=0)
    requested_discount_percent: float | None = Field(None, ge=0, le=100)

    @model_validator(mode="after")
    def _one(self) -> "Counter":
        if (self.suggested_unit_price is None) == (self.requested_discount_percent is None):
            raise ValueError("give exactly one of suggested_unit_price and requested_discount_percent")
        return self


class CheckoutUpdate(BaseModel):
    items: list[ItemRef] | None = Field(None, min_length=1, max_length=100)
    counter: Counter | None = None


class CompleteRequest(BaseModel):
    payment_data: dict[str, Any] | None = Field(None, description="passed to the payment provider; not read here")


class IntentTrace(BaseModel):
    reason_code: Literal[REASON_CODES]  # type: ignore[valid-type]
    trace_summary: str | None = Field(None, max_length=2000)


class CancelRequest(BaseModel):
    intent_trace: IntentTrace | None = None


class LineItemRef(BaseModel):
    id: str
    quantity: int


class LineItem(BaseModel):
    id: str
    item: LineItemRef
    base_amount: int
    discount: int
    subtotal: int
    tax: int
    total: int


class Total(BaseModel):
    type: Literal["items_base_amount", "items_discount", "subtotal", "discount", "fulfillment", "tax", "fee", "total"]
    display_text: str
    amount: int


class FulfillmentOption(BaseModel):
    type: Literal["shipping"] = "shipping"
    id: str
    title: str
    delivery_days: float
    subtotal: int = 0
    tax: int = 0
    total: int = 0


class Message(BaseModel):
    type: Literal["info", "error"]
    content_type: Literal["plain"] = "plain"
    content: str


class Link(BaseModel):
    type: str
    url: str


class NegotiationLine(BaseModel):
    item_id: str
    list_unit_price: int
    unit_price: int = Field(description="the seller's current unit price (the agreed one once accepted)")
    decision: Literal["open", "accept", "counter", "decline"]
    round: int
    rounds_left: int
    suggested_unit_price: int | None = None


class CheckoutSession(BaseModel):
    id: str
    status: Literal["not_ready_for_payment", "ready_for_payment", "in_progress", "completed", "canceled"]
    currency: str
    line_items: list[LineItem]
    totals: list[Total]
    fulfillment_options: list[FulfillmentOption]
    messages: list[Message]
    links: list[Link]
    negotiation: list[NegotiationLine]
    order_id: str | None = None
