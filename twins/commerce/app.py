"""The agent-facing seller API (``twins sell``): catalog, checkout sessions with a quote and negotiation, ledger.

Routes (OpenAPI at ``/openapi.json``, docs at ``/docs``):

- ``GET /.well-known/ucp``: discovery (protocol versions, capabilities, endpoints);
- ``POST /catalog/search``, ``POST /catalog/lookup``, ``GET /catalog/items/{id}``: products with structured
  attributes (price tiers, lead time, stock, compatibility);
- ``POST /checkout_sessions``: create; every line is quoted for this buyer (``twins.commerce.quote``: its twin, or
  the twin-free fallback) with the price, the discount off list and the delivery promise;
- ``POST /checkout_sessions/{id}``: update (new quantities are quoted again; a ``counter`` is answered accept,
  counter or decline per line by the shared concession schedule, ``twins.commerce.negotiation``);
- ``POST /checkout_sessions/{id}/complete``: the order, at the agreed (else the current) prices, is written to the
  ledger (``twins.commerce.ledger``: a UCP ``order_created`` line, on disk before the answer) for the next
  ``twins ingest configs/sources/ucp_orders.yaml``; ``POST /checkout_sessions/{id}/cancel`` (with an intent
  trace); ``GET /checkout_sessions/{id}``; ``GET /health``.

Every session event is also written as an ACP line (``configs/sources/acp_checkouts.yaml``). Agents identify with
``UCP-Agent: profile="<uri>"`` (an order from a declared agent is ingested with actor ``machine``); no human-only
barrier (no CAPTCHA, cookie or browser check); limits per agent (``twins.commerce.ratelimit``), on body size and
time (``twins.serve.limits``) and, optionally, a bearer token (``twins.serve.auth``).
"""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from twins.commerce import negotiation, protocol
from twins.commerce.catalog import Catalog, Product
from twins.commerce.dealings import Dealings
from twins.commerce.ledger import Ledger
from twins.commerce.quote import Offer, Quoter
from twins.commerce.ratelimit import AgentRateLimit, Buckets, agent_profile
from twins.commerce.shapes import (
    CancelRequest,
    CatalogResponse,
    CheckoutCreate,
    CheckoutSession,
    CheckoutUpdate,
    CompleteRequest,
    Counter,
    FulfillmentOption,
    LineItem,
    LineItemRef,
    Link,
    LookupRequest,
    Message,
    NegotiationLine,
    ProductView,
    SearchRequest,
    Total,
)
from twins.serve.auth import BearerAuth
from twins.serve.limits import BodyLimit, Limits

UCP_AGENT = Header(None, alias="UCP-Agent", description='the buying agent\'s profile: profile="<uri>"')


@dataclass
class Line:
    product: Product
    quantity: int
    offer: Offer
    round: int = 0
    decision: str = "open"
    unit_price: int = 0          # the seller's current price (agreed once accepted)
    suggested: int | None = None

    def __post_init__(self) -> None:
        self.unit_price = self.unit_price or self.offer.price


@dataclass
class Session:
    id: str
    customer_id: str
    agent: str | None
    lines: list[Line]
    status: str = "ready_for_payment"
    order_id: str | None = None
    created: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class SellSettings:
    """Service bounds; each names the ``twins sell`` flag that sets it."""

    agent_rate: float = 20.0         # --agent-rate: requests a second per agent
    agent_burst: int = 40            # --agent-burst
    max_sessions: int = 100_000      # --max-sessions: open checkout sessions (oldest expired first)
    session_ttl: float = 3600.0      # --session-ttl: seconds an open session is kept
    poll: float = 30.0               # --poll: seconds between checks for new machine twins
    flush: float = 1.0               # seconds between ledger flushes of session events


class Seller:
    """The service's state: catalog, quoter, open sessions, ledgers."""

    def __init__(self, catalog: Catalog, quoter: Quoter, home: Path, settings: SellSettings) -> None:
        self.catalog, self.quoter, self.settings = catalog, quoter, settings
        self.orders, self.events = Ledger(home / "commerce" / "ucp"), Ledger(home / "commerce" / "acp")
        if quoter.dealings is None:
            quoter.dealings = Dealings.from_ledger(home / "commerce" / "acp")
        self.dealings = quoter.dealings
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()

    def product(self, item_id: str) -> Product:
        product = self.catalog.get(item_id)
        if product is None:
            raise HTTPException(404, f"no product {item_id!r} in the catalog; find ids with POST /catalog/search")
        return product

    def view(self, product: Product, quantity: int = 1) -> ProductView:
        return ProductView(**product.public(), currency=self.catalog.currency, unit_price=product.list_price(quantity))

    def quote_lines(self, customer_id: str, items, declared: bool) -> list[Line]:
        return [Line(p, i.quantity, self.quoter.quote(customer_id, p, i.quantity, declared))
                for i in items for p in [self.product(i.id)]]

    def open_session(self, customer_id: str, agent: str | None, lines: list[Line]) -> Session:
        with self.lock:
            if len(self.sessions) >= self.settings.max_sessions:
                self._expire()
            if len(self.sessions) >= self.settings.max_sessions:
                raise HTTPException(503, f"{self.settings.max_sessions:,} checkout sessions open (--max-sessions); "
                                         "complete or cancel some, or retry later")
            session = Session("cs_" + uuid.uuid4().hex, customer_id, agent, lines)
            self.sessions[session.id] = session
        return session

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.settings.session_ttl
        for sid in [s.id for s in self.sessions.values() if s.created < cutoff or s.status in ("completed", "canceled")]:
            del self.sessions[sid]

    def session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise HTTPException(404, f"no checkout session {session_id!r} (expired after --session-ttl, or never "
                                     "created); create one with POST /checkout_sessions")
        return session

    def record(self, session: Session, event: str, sync: bool = False, **payload) -> None:
        self.events.append(protocol.envelope(event, session.customer_id, session.agent,
                                             checkout_session=acp_session(session, self.catalog.currency).model_dump(),
                                             **payload),
                           sync=sync)


def counter_price(line: Line, counter: Counter) -> int:
    if counter.suggested_unit_price is not None:
        return counter.suggested_unit_price
    return int(round(line.offer.list_price * (1 - counter.requested_discount_percent / 100)))


def answer(line: Line, counter: Counter) -> None:
    """The seller's move on one line: accept, counter (its next level) or decline (its last price stands)."""
    asked = counter_price(line, counter)
    line.suggested = asked
    if line.decision in ("accept", "decline"):
        return
    line.round += 1
    o = line.offer
    decision, price = negotiation.respond(np.array([o.price], float), np.array([o.floor], float),
                                          np.array([o.rounds], float), line.round, np.array([asked], float))
    line.decision = negotiation.DECISIONS[int(decision[0])]
    line.unit_price = asked if line.decision == "accept" else max(int(np.ceil(price[0])), o.floor)


def acp_session(session: Session, currency: str) -> CheckoutSession:
    items, quotes = [], []
    for n, line in enumerate(session.lines):
        base_unit = max(line.offer.list_price, line.unit_price)
        base = base_unit * line.quantity
        total = line.unit_price * line.quantity
        items.append(LineItem(id=f"li_{n}", item=LineItemRef(id=line.product.id, quantity=line.quantity),
                              base_amount=base, discount=base - total, subtotal=total, tax=0, total=total))
        quotes.append(NegotiationLine(item_id=line.product.id, list_unit_price=line.offer.list_price,
                                      unit_price=line.unit_price, decision=line.decision, round=line.round,
                                      rounds_left=max(line.offer.rounds - line.round, 0)
                                      if line.decision in ("open", "counter") else 0,
                                      suggested_unit_price=line.suggested))
    base, total = sum(i.base_amount for i in items), sum(i.total for i in items)
    slowest = max(session.lines, key=lambda x: x.offer.promise_days)
    express = all(x.offer.express for x in session.lines)
    messages = [Message(type="info", content=f"{q.item_id}: {q.decision}, unit price {q.unit_price}")
                for q in quotes if q.decision != "open"]
    return CheckoutSession(
        id=session.id, status=session.status, currency=currency, line_items=items,
        totals=[Total(type="items_base_amount", display_text="Items", amount=base),
                Total(type="items_discount", display_text="Discount", amount=base - total),
                Total(type="total", display_text="Total", amount=total)],
        fulfillment_options=[FulfillmentOption(id="express" if express else "standard",
                                               title="Express" if express else "Standard",
                                               delivery_days=slowest.offer.promise_days)],
        messages=messages, links=[Link(type="terms_of_use", url="https://seller.example/terms")],
        negotiation=quotes, order_id=session.order_id)


def _answer(session: Session, currency: str, status: int = 200) -> Response:
    """The session as JSON; ``response_model`` documents it, and a ``Response`` is not validated again."""
    return Response(acp_session(session, currency).model_dump_json(), status, media_type="application/json")


def create_app(catalog: Catalog, quoter: Quoter, home: Path, settings: SellSettings = SellSettings(),
               limits: Limits = Limits(), token: str | None = None) -> FastAPI:
    seller = Seller(catalog, quoter, Path(home), settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = threading.Event()
        twins = quoter.twins

        def background() -> None:
            last_poll = time.monotonic()
            while not stop.wait(settings.flush):
                seller.events.flush()
                if twins is not None and settings.poll > 0 and time.monotonic() - last_poll >= settings.poll:
                    twins.refresh()
                    last_poll = time.monotonic()

        if twins is not None:
            twins.refresh()
        worker = threading.Thread(target=background, name="twins-sell", daemon=True)
        worker.start()
        try:
            yield
        finally:
            stop.set()
            worker.join(timeout=5)
            seller.events.flush()

    app = FastAPI(title="twins seller API", version="1", lifespan=lifespan,
                  description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    app.state.seller = seller

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": f"http_{exc.status_code}", "message": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()][:20]
        return JSONResponse({"error": "invalid_request", "message": "the request does not match the schema "
                             "(see /openapi.json)", "errors": errors}, status_code=422)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/.well-known/ucp")
    async def discovery() -> dict:
        return {"ucp": {"version": protocol.UCP_VERSION}, "acp": {"version": protocol.ACP_VERSION},
                "capabilities": ["catalog.search", "catalog.lookup", "checkout", "checkout.negotiation",
                                 "order.webhook"],
                "endpoints": {"catalog_search": "/catalog/search", "catalog_lookup": "/catalog/lookup",
                              "checkout_sessions": "/checkout_sessions", "openapi": "/openapi.json"},
                "negotiation": "POST /checkout_sessions/{id} with counter.suggested_unit_price or "
                               "counter.requested_discount_percent; answered per line in `negotiation`"}

    @app.post("/catalog/search", response_model=CatalogResponse)
    async def search(request: SearchRequest) -> CatalogResponse:
        f = request.filters
        found = catalog.search(request.query, f.compatible_with, f.max_unit_price, f.max_lead_days, f.in_stock,
                               request.quantity, request.limit)
        return CatalogResponse(products=[seller.view(p, request.quantity) for p in found])

    @app.post("/catalog/lookup", response_model=CatalogResponse)
    async def lookup(request: LookupRequest) -> CatalogResponse:
        found = [(i, catalog.get(i)) for i in request.ids]
        return CatalogResponse(products=[seller.view(p) for _, p in found if p is not None],
                               missing=[i for i, p in found if p is None])

    @app.get("/catalog/items/{item_id}", response_model=ProductView)
    async def item(item_id: str) -> ProductView:
        return seller.view(seller.product(item_id))

    @app.post("/checkout_sessions", response_model=CheckoutSession, status_code=201)
    async def create(request: CheckoutCreate, ucp_agent: str | None = UCP_AGENT) -> Response:
        agent = agent_profile({"ucp-agent": ucp_agent or ""})
        lines = seller.quote_lines(request.buyer.customer_id, request.items, agent is not None)
        session = seller.open_session(request.buyer.customer_id, agent, lines)
        for line in lines:
            seller.dealings.quoted((session.customer_id, line.product.id))
        seller.record(session, "checkout_session.created")
        return _answer(session, catalog.currency, 201)

    @app.get("/checkout_sessions/{session_id}", response_model=CheckoutSession)
    async def get(session_id: str) -> Response:
        return _answer(seller.session(session_id), catalog.currency)

    def open_(session_id: str) -> Session:
        session = seller.session(session_id)
        if session.status in ("completed", "canceled"):
            raise HTTPException(409, f"checkout session {session_id} is {session.status}; create a new one")
        return session

    @app.post("/checkout_sessions/{session_id}", response_model=CheckoutSession)
    async def update(session_id: str, request: CheckoutUpdate) -> Response:
        countered: list[Line] = []
        with seller.lock:
            session = open_(session_id)
            if request.items is not None:
                session.lines = seller.quote_lines(session.customer_id, request.items, session.agent is not None)
            if request.counter is not None:
                ids = {x.product.id for x in session.lines}
                if request.counter.item_id is not None and request.counter.item_id not in ids:
                    raise HTTPException(422, f"counter.item_id {request.counter.item_id!r} is not a line of this "
                                             f"session (lines: {sorted(ids)})")
                countered = [x for x in session.lines if request.counter.item_id in (None, x.product.id)]
                for line in countered:
                    answer(line, request.counter)
                    seller.dealings.countered((session.customer_id, line.product.id), line.suggested)
        if not countered:
            seller.record(session, "checkout_session.updated")
        for line in countered:  # one line each: the ACP source reads one suggested price per line
            one = Session(session.id, session.customer_id, session.agent, [line], session.status)
            seller.record(one, "checkout_session.updated",
                          negotiation={"suggested_unit_price": line.suggested, "decision": line.decision})
        return _answer(session, catalog.currency)

    @app.post("/checkout_sessions/{session_id}/complete", response_model=CheckoutSession)
    async def complete(session_id: str, request: CompleteRequest | None = None) -> Response:
        with seller.lock:
            session = open_(session_id)
            short = [x.product.id for x in session.lines if x.product.stock < x.quantity]
            if short:
                raise HTTPException(409, f"not enough stock for {short}; update the quantities or cancel")
            for x in session.lines:
                x.product.stock -= x.quantity
                seller.dealings.took((session.customer_id, x.product.id), x.unit_price, countered=x.round > 0)
            session.status, session.order_id = "completed", "ord_" + uuid.uuid4().hex
        order = protocol.ucp_order(session.order_id, session.id, [
            {"item_id": x.product.id, "title": x.product.title, "unit_price": x.unit_price, "quantity": x.quantity}
            for x in session.lines], currency=catalog.currency.upper())
        line = protocol.envelope("order_created", session.customer_id, session.agent, order=order)
        await run_in_threadpool(seller.orders.append, line, True)  # on disk before the answer
        await run_in_threadpool(seller.record, session, "checkout_session.completed", True)
        return _answer(session, catalog.currency)

    @app.post("/checkout_sessions/{session_id}/cancel", response_model=CheckoutSession)
    async def cancel(session_id: str, request: CancelRequest | None = None) -> Response:
        with seller.lock:
            session = open_(session_id)
            session.status = "canceled"
            for x in session.lines:
                seller.dealings.lost((session.customer_id, x.product.id))
        payload = {"request": request.model_dump(exclude_none=True)} if request and request.intent_trace else {}
        seller.record(session, "checkout_session.canceled", **payload)
        return _answer(session, catalog.currency)

    app.add_middleware(AgentRateLimit, buckets=Buckets(settings.agent_rate, settings.agent_burst))
    if token:
        app.add_middleware(BearerAuth, token=token)
    app.add_middleware(BodyLimit, limits=limits)
    return app
