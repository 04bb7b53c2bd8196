"""The seller's catalog: products with structured attributes (price tiers, lead time, stock, compatibility).

Read from a YAML or JSON file (``twins sell --catalog``); prices and costs are integers in the currency's minor
unit. ``unit_cost`` is the seller's own and never leaves the service (``Product.public``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr, model_validator

from twins.config import read_yaml, validate


class PriceTier(BaseModel):
    min_quantity: int = Field(ge=1)
    price: int = Field(ge=0)


class Product(BaseModel):
    id: str = Field(min_length=1, max_length=256)
    title: str
    price: int = Field(ge=0, description="list unit price, minor units")
    unit_cost: int = Field(ge=0, description="the seller's unit cost, minor units (never shown to buyers)")
    lead_days: float = Field(gt=0, description="standard delivery, days")
    express_days: float | None = Field(None, gt=0, description="express delivery, days (none: no express)")
    stock: int = Field(ge=0)
    price_tiers: list[PriceTier] = []
    attributes: dict[str, Any] = {}
    compatible_with: list[str] = []

    def list_price(self, quantity: int) -> int:
        """The unit list price for ``quantity``: the tier with the highest ``min_quantity`` at or below it."""
        tiers = [t for t in self.price_tiers if t.min_quantity <= quantity]
        return max(tiers, key=lambda t: t.min_quantity).price if tiers else self.price

    def public(self) -> dict[str, Any]:
        return self.model_dump(exclude={"unit_cost"})


class Catalog(BaseModel):
    currency: str = Field(pattern="^[a-z]{3}$")
    products: list[Product] = Field(min_length=1)
    _by_id: dict[str, Product] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _unique(self) -> "Catalog":
        ids = [p.id for p in self.products]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"product ids must be unique; repeated: {dup[:10]}")
        self._by_id = {p.id: p for p in self.products}
        return self

    def get(self, product_id: str) -> Product | None:
        return self._by_id.get(product_id)

    def search(self, query: str = "", compatible_with: str | None = None, max_price: int | None = None,
               max_lead_days: float | None = None, in_stock: bool = False, quantity: int = 1,
               limit: int = 20) -> list[Product]:
        """Products whose id, title or attribute values contain every word of ``query`` (case-insensitive) and
        that pass the filters, cheapest first at ``quantity``."""
        words = query.lower().split()
        found = []
        for p in self.products:
            text = " ".join([p.id, p.title, *map(str, p.attributes.values())]).lower()
            if any(w not in text for w in words):
                continue
            if compatible_with is not None and compatible_with not in p.compatible_with:
                continue
            if max_price is not None and p.list_price(quantity) > max_price:
                continue
            if max_lead_days is not None and min(p.lead_days, p.express_days or p.lead_days) > max_lead_days:
                continue
            if in_stock and p.stock < quantity:
                continue
            found.append(p)
        return sorted(found, key=lambda p: (p.list_price(quantity), p.id))[:limit]


def load_catalog(path: str | Path) -> Catalog:
    """Read and check a catalog file; errors name the file and each bad key."""
    return validate(Catalog, read_yaml(path), path)
