"""What the service asks each task's bundle: request and response schemas and a handler per task.

``ROUTES[task]`` gives the endpoint ``POST /v1/models/<name>/<action>`` for every configured model of that task.
Every request is a batch (one entry per customer); a single customer is a batch of one.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from twins.runtime import EmotionBundle, NextBasketBundle, OutlookBundle, OutlookNetBundle, ReplenishmentBundle

MAX_BATCH = 1000
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True)


class NextBasketRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"histories": [[["milk", "bread"], ["milk"]]], "k": 10}]})

    histories: list[Annotated[list[Annotated[list[ItemId], Field(max_length=1000)]], Field(max_length=10_000)]] = Field(
        min_length=1, max_length=MAX_BATCH,
        description="one purchase history per customer: baskets oldest first, each a list of item ids")
    k: int = Field(10, ge=1, le=1000, description="items per customer (at most the bundle's exported top_k)")


class Recommendation(BaseModel):
    item: str
    score: float


class NextBasketResponse(BaseModel):
    model: str
    version: str
    results: list[list[Recommendation]] = Field(description="per history, the top-k items, best first")


class Purchase(_Request):
    time: datetime = Field(description="ISO 8601; without a zone it is UTC")
    amount: float = Field(ge=-1e12, le=1e12, description="line or basket value; a return is a negative amount")


class OutlookRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "histories": [[{"time": "2017-09-01T10:00:00Z", "amount": 23.5}, {"time": "2017-09-20T18:30:00Z", "amount": 41.0}]],
        "as_of": "2017-10-01T00:00:00Z"}]})

    histories: list[Annotated[list[Purchase], Field(max_length=100_000)]] = Field(
        min_length=1, max_length=MAX_BATCH, description="one history of purchases per customer (any order)")
    as_of: datetime = Field(description="answer as of this time: purchases at or after it are ignored")
    horizon_days: float | None = Field(None, gt=0, le=3660, description="default: the bundle's exported horizon")


class Outlook(BaseModel):
    expected_purchases: float = Field(description="how many: expected purchase days in the horizon")
    expected_spend: float = Field(description="how much: expected spend in the horizon")
    p_alive: float
    churn_risk: float = Field(description="P(gone by the end of the horizon) = 1 - P(alive at its end); equal to "
                                          "1 - p_alive for BG/NBD bundles, whose customers drop out only at a purchase")
    p_any_purchase: float = Field(description="P(at least one purchase day in the horizon)")
    next_purchase: datetime | None = Field(description="when: median time of the next purchase, given alive")
    next_purchase_low: datetime | None
    next_purchase_high: datetime | None
    known: bool = Field(description="false: no purchase before as_of, answered for a new customer")
    horizon_days: float


class OutlookResponse(BaseModel):
    model: str
    version: str
    results: list[Outlook]


class EmotionRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"texts": ["Thanks, that fixed it!", "still broken, I want a refund"]}]})

    texts: list[Annotated[str, StringConstraints(max_length=100_000)]] = Field(
        min_length=1, max_length=MAX_BATCH, description="one message per entry; any text (empty, HTML, emoji) is answered")


class LevelAnswer(BaseModel):
    scores: dict[str, float] = Field(description="probability per label or group")
    predicted: list[str] = Field(description="those at or over their dev-tuned threshold")


class Emotion(BaseModel):
    labels: LevelAnswer = Field(description="the 28 GoEmotions labels")
    ekman: LevelAnswer = Field(description="Ekman's 6 groups + neutral (official mapping; a group's probability is its members' max)")
    sentiment: LevelAnswer = Field(description="positive, negative, ambiguous, neutral")


class EmotionResponse(BaseModel):
    model: str
    version: str
    results: list[Emotion]


class Order(_Request):
    time: datetime = Field(description="ISO 8601; without a zone it is UTC")
    quantity: float = Field(ge=0, le=1e9)
    promised_days: float | None = Field(None, ge=0, le=3660, description="delivery time promised with the order")


class Reading(_Request):
    time: datetime
    stock: float | None = Field(None, ge=-1e9, le=1e9)  # a machine may report stock only or a usage counter only
    usage: float | None = Field(None, ge=-1e9, le=1e9)


class ReplenishmentRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "orders": [[{"time": "2024-01-03T00:00:00Z", "quantity": 40}, {"time": "2024-01-24T00:00:00Z", "quantity": 38},
                    {"time": "2024-02-14T00:00:00Z", "quantity": 41}]], "as_of": "2024-02-20T00:00:00Z"}]})

    orders: list[Annotated[list[Order], Field(max_length=100_000)]] = Field(
        min_length=1, max_length=MAX_BATCH, description="one order history per machine (any order)")
    readings: list[Annotated[list[Reading], Field(max_length=100_000)]] | None = Field(
        None, description="optional stock/usage readings, one list per machine (empty for machines without telemetry)")
    as_of: datetime = Field(description="answer as of this time: orders and readings at or after it are ignored")


class Replenishment(BaseModel):
    known: bool = Field(description="false: fewer than 3 orders before as_of; the other fields are null")
    next_order: datetime | None = Field(description="median time of the next order")
    next_order_low: datetime | None
    next_order_high: datetime | None
    days: float | None
    days_low: float | None
    days_high: float | None
    quantity: float | None
    quantity_low: float | None
    quantity_high: float | None


class ReplenishmentResponse(BaseModel):
    model: str
    version: str
    results: list[Replenishment]


@dataclass(frozen=True)
class TaskRoute:
    """How the service serves one task: ``POST /v1/models/<name>/<action>`` with ``request`` -> ``response``."""

    action: str
    summary: str
    request: type[BaseModel]
    response: type[BaseModel]
    handler: Callable[[Any, Any], list]
    cost: Callable[[dict], int]  # the request's work in ``unit``s, counted on its parsed JSON before validation
    unit: str                    # "items", "events" or "texts": ``Limits.cap(unit)`` bounds the cost


def _entries(batch: Any, depth: int) -> int:
    """Entries ``depth`` lists deep in parsed JSON; absent (None) counts nothing, anything else that is not a
    list, and an empty list, count one."""
    if not isinstance(batch, list):
        return 0 if batch is None else 1
    if depth == 1:
        return max(len(batch), 1)
    return max(sum(_entries(part, depth - 1) for part in batch), 1)


def basket_items(data: dict) -> int:
    return _entries(data.get("histories"), 3)


def purchases(data: dict) -> int:
    return _entries(data.get("histories"), 2)


def machine_events(data: dict) -> int:
    return _entries(data.get("orders"), 2) + _entries(data.get("readings"), 2)


def texts(data: dict) -> int:
    """Messages: each costs about the same, being truncated to the bundle's ``max_length`` tokens."""
    return _entries(data.get("texts"), 1)


def recommend(bundle: NextBasketBundle, body: NextBasketRequest) -> list[list[dict[str, Any]]]:
    return [[{"item": item, "score": score} for item, score in recs] for recs in bundle.recommend(body.histories, body.k)]


def outlook(bundle: OutlookBundle | OutlookNetBundle, body: OutlookRequest) -> list[dict[str, Any]]:
    histories = [[(p.time, p.amount) for p in history] for history in body.histories]
    return bundle.score(histories, body.as_of, body.horizon_days)


def emotion(bundle: EmotionBundle, body: EmotionRequest) -> list[dict[str, Any]]:
    return bundle.predict(body.texts)


def replenishment(bundle: ReplenishmentBundle, body: ReplenishmentRequest) -> list[dict[str, Any]]:
    if body.readings is not None and len(body.readings) != len(body.orders):
        raise ValueError(f"readings: one list per machine ({len(body.orders)}), got {len(body.readings)}")
    orders = [[(o.time, o.quantity, o.promised_days) for o in machine] for machine in body.orders]
    readings = None if body.readings is None else [[(r.time, r.stock, r.usage) for r in machine] for machine in body.readings]
    return bundle.forecast(orders, body.as_of, readings)


ROUTES: dict[str, TaskRoute] = {
    "next_basket": TaskRoute("recommend", "Next basket: top-k items per purchase history", NextBasketRequest,
                             NextBasketResponse, recommend, basket_items, "items"),
    "next_basket_net": TaskRoute("recommend", "Next basket (neural): top-k items per purchase history", NextBasketRequest,
                                 NextBasketResponse, recommend, basket_items, "items"),
    "purchase_outlook": TaskRoute("outlook", "Purchase outlook: when, how many, how much, churn risk", OutlookRequest,
                                  OutlookResponse, outlook, purchases, "events"),
    "purchase_outlook_net": TaskRoute("outlook", "Purchase outlook (neural): when, how many, how much, churn risk",
                                      OutlookRequest, OutlookResponse, outlook, purchases, "events"),
    "emotion": TaskRoute("emotion", "Emotion of messages: 28 labels, Ekman groups, sentiment", EmotionRequest,
                         EmotionResponse, emotion, texts, "texts"),
    "replenishment": TaskRoute("replenishment", "Replenishment: when a machine orders next and how much, with intervals",
                               ReplenishmentRequest, ReplenishmentResponse, replenishment, machine_events, "events"),
}
