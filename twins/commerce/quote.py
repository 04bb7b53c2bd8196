"""The quote step: a buyer's twin, the product and the request -> the seller's offer for this agent.

The buyer's machine twin (``twins machines``: id ``<customer_id>/<item_id>`` in the twin store's ``machine`` kind
of a source, by default ``ucp_orders``) and the buyer's emotion profile of the same source where it has one (kind
``emotion``, ``twins emotions``) fill the twin columns of ``twins.commerce.policies.FEATURES``; the twin policy turns
them into an offer. A buyer without a twin gets the twin-free fallback (the bandit's ONNX export when the service has
one, else the twin policy's offer to a first buyer). Prices are integers in the catalog currency's minor unit.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from twins.commerce.catalog import Product
from twins.commerce.dealings import Dealings
from twins.commerce.policies import COL, EXPRESS_DAYS, FEATURES, TwinPolicy


@dataclass(frozen=True)
class Offer:
    list_price: int
    price: int          # opening unit price
    floor: int          # lowest unit price the seller agrees to (never shown)
    rounds: int         # concession rounds
    promise_days: float
    express: bool
    basis: str          # "twin" or "fallback"


class LatestTwins:
    """The latest snapshot of one source's twins of ``kind``; ``refresh`` follows the store's LATEST pointer."""

    def __init__(self, store_root: Path, source: str, kind: str) -> None:
        self.store_root, self.source, self.kind = Path(store_root), source, kind
        self.label: str | None = None
        self.error: str | None = None
        self._snapshot = None
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Open the snapshot LATEST names when it moved; True when a new one is served."""
        from twins.twin.store import SnapshotError, TwinStore

        store = TwinStore(self.store_root)
        try:
            label = store.latest(self.source, self.kind)
            if label == self.label:
                return False
            snap = store.open(self.source, self.kind, label)
            snap.index()
        except (SnapshotError, OSError) as error:
            self.error = str(error)
            return False
        with self._lock:
            self._snapshot, self.label, self.error = snap, label, None
        return True

    def row(self, twin_id: str) -> dict | None:
        from twins.twin.store import TwinNotFound

        snap = self._snapshot
        if snap is None:
            return None
        try:
            return snap.get(twin_id)
        except TwinNotFound:
            return None


class MachineTwins(LatestTwins):
    """The latest machine twins of one source (id ``<customer_id>/<item_id>``) and, where the source has any, its
    emotion profiles (kind ``emotion``, ``twins emotions``; ``emotions.error`` says why there are none)."""

    def __init__(self, store_root: Path, source: str) -> None:
        super().__init__(store_root, source, "machine")
        self.emotions = LatestTwins(store_root, source, "emotion")

    def refresh(self) -> bool:
        """Follow both kinds' LATEST pointers; True when either moved."""
        emotions = self.emotions.refresh()
        return super().refresh() or emotions

    def get(self, customer_id: str, item_id: str) -> dict | None:
        return self.row(f"{customer_id}/{item_id}")

    def emotion(self, customer_id: str) -> dict | None:
        return self.emotions.row(customer_id)


def twin_features(twin: dict, now: datetime | None = None) -> dict[str, float]:
    """The policy's twin columns from a machine twin row (``twins.twin.machine.build_machine_twins``): its revealed
    reservation price, its orders, and the days until its next order is due (last order + its review period, else
    its usual quantity over its consumption rate; negative when overdue) counted from ``now``."""
    def num(key: str) -> float:
        value = twin.get(key)
        return float(value) if isinstance(value, (int, float)) else math.nan

    rate, review, quantity = num("rate"), num("review_days"), num("order_quantity")
    gap = review if math.isfinite(review) else quantity / rate if rate > 0 else math.nan
    last = twin.get("last_order")
    now = now or datetime.now(timezone.utc)
    due = (last - now).total_seconds() / 86_400 + gap if isinstance(last, datetime) else math.nan
    return {"reservation_price": num("reservation_price"), "machine_likeness": 1.0, "n_orders": num("n_orders"),
            "days_to_next_order": due}


def emotion_features(profile: dict) -> dict[str, float]:
    """The policy's emotion columns from an emotion profile (``twins.twin.emotion.emotion_profiles``): the mean
    negative-sentiment probability of the recent messages and its trend (nan where the profile has none, e.g. no
    recent messages, or a snapshot written before ``recent_negative`` existed)."""
    def num(key: str) -> float:
        value = profile.get(key)
        return float(value) if isinstance(value, (int, float)) else math.nan

    return {"negative_share": num("recent_negative"), "negative_trend": num("negative_trend")}


class Quoter:
    """Offers per (buyer, product, quantity): the twin ``policy`` for buyers with a machine twin, an emotion profile
    or a record in the seller's ``dealings`` (``twins.commerce.dealings``), ``fallback`` (any estimator with the
    policies' ``predict``) for the others."""

    def __init__(self, twins: MachineTwins | None, policy=None, fallback=None, dealings: Dealings | None = None) -> None:
        self.twins, self.policy = twins, policy or TwinPolicy()
        self.fallback, self.dealings = fallback or self.policy, dealings

    def features(self, customer_id: str, product: Product, quantity: int, declared: bool) -> tuple[np.ndarray, bool]:
        X = np.full((1, len(FEATURES)), np.nan)
        X[0, COL["list_price"]], X[0, COL["unit_cost"]] = product.list_price(quantity), product.unit_cost
        X[0, COL["quantity"]], X[0, COL["agent_declared"]], X[0, COL["counter_ratio"]] = quantity, float(declared), 0.0
        twin = self.twins.get(customer_id, product.id) if self.twins is not None else None
        own = self.dealings.features((customer_id, product.id)) if self.dealings is not None else None
        emotion = self.twins.emotion(customer_id) if self.twins is not None else None
        for name, value in {**(twin_features(twin) if twin else {}),
                            **(emotion_features(emotion) if emotion else {})}.items():
            X[0, COL[name]] = value
        for name, value in (own or {}).items():  # a counter seen since the twin was built lowers its reservation
            X[0, COL[name]] = np.fmin(X[0, COL[name]], value) if name == "reservation_price" else value
        return X, any(x is not None for x in (twin, own, emotion))

    def quote(self, customer_id: str, product: Product, quantity: int, declared: bool) -> Offer:
        X, known = self.features(customer_id, product, quantity, declared)
        price, floor, rounds, days = (float(v) for v in (self.policy if known else self.fallback).predict(X)[0])
        express = days <= EXPRESS_DAYS and product.express_days is not None
        price_i = max(int(round(price)), product.unit_cost)
        return Offer(list_price=product.list_price(quantity), price=price_i,
                     floor=min(max(int(math.ceil(floor)), product.unit_cost), price_i), rounds=int(rounds),
                     promise_days=product.express_days if express else product.lead_days, express=express,
                     basis="twin" if known else "fallback")
