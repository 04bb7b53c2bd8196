"""Next-order forecasts from a machine's raw order history and optional readings (task ``replenishment``):
numpy + onnxruntime."""

from datetime import datetime, timedelta, timezone

import numpy as np

from twins.runtime.bundle import Bundle, BundleError, need, need_strings
from twins.runtime.outlook import _to_us, positive
from twins.runtime.replenishment_features import FEATURES, History, features_many

DAY_US = 86_400_000_000
INPUT = "features"
#: the graph's outputs: the 10/50/90 % quantiles of log1p(days to the next order) and of log(quantity)
LOG_OUTPUTS = ("log1p_time_low", "log1p_time", "log1p_time_high", "log_quantity_low", "log_quantity",
               "log_quantity_high")


MAX_DAYS = 3650.0  # answers further out than ten years read ten years (a machine that has all but stopped)
MAX_LOG_QUANTITY = 50.0  # and quantities are capped at e^50, so that no answer overflows


def history(orders: list[tuple], readings: list[tuple] | None = None) -> History:
    """A ``History`` (days since the epoch, sorted) from ``(time, quantity)`` or ``(time, quantity, promised_days)``
    orders and ``(time, stock, usage)`` readings; times are datetimes (naive = UTC) or ISO 8601 strings. Quantities
    must be finite and >= 0. A reading may leave out one of its values (None or nan: a machine that reports stock
    only, or a usage counter only); the other must be finite, and stock >= 0 (``ValueError`` names the entry)."""
    o = [(_to_us(row[0]), float(row[1]), float(row[2]) if len(row) > 2 and row[2] is not None else np.nan)
         for row in orders]
    r = [(_to_us(when), _value(stock), _value(usage)) for when, stock, usage in readings or []]
    for j, (_, quantity, _) in enumerate(o):
        if not (np.isfinite(quantity) and quantity >= 0):
            raise ValueError(f"orders[{j}]: quantity {orders[j][1]!r} must be a finite number >= 0 (a return or a "
                             "cancellation is not an order: leave it out)")
    for j, (_, stock, usage) in enumerate(r):
        given = [v for v in (stock, usage) if not np.isnan(v)]
        if not given or not np.isfinite(given).all() or stock < 0:
            raise ValueError(f"readings[{j}]: give stock (>= 0) or usage or both as finite numbers (the other None), "
                             f"got {tuple(readings[j][1:])!r}")
    o.sort()
    r.sort()
    o_arr, r_arr = np.array(o, dtype=np.float64).reshape(-1, 3), np.array(r, dtype=np.float64).reshape(-1, 3)
    return History(o_arr[:, 0] / DAY_US, o_arr[:, 1], o_arr[:, 2], r_arr[:, 0] / DAY_US, r_arr[:, 1], r_arr[:, 2])


def _value(v) -> float:
    """A reading's value; None is nan (not taken)."""
    return np.nan if v is None else float(v)


class ReplenishmentBundle(Bundle):
    """When a machine orders next and how much, each with an interval (the bundle's ``interval``, 80 %), from its
    raw orders and, where it sends them, its stock and usage readings."""

    def __init__(self, path, manifest: dict, session) -> None:
        super().__init__(path, manifest, session)
        where = self.manifest_path
        self.horizon_days = positive(manifest, "preprocessing.horizon_days", where)
        self.interval = need(manifest, "preprocessing.interval", float, where)
        names = tuple(need_strings(manifest, "features", where))
        if names != FEATURES:
            raise BundleError(f"{where}: the bundle's features {names} differ from this runtime's "
                              f"{FEATURES}; re-export the bundle or install the runtime it was exported with")
        names_in, names_out = [v["name"] for v in manifest["inputs"]], tuple(v["name"] for v in manifest["outputs"])
        if names_in != [INPUT] or names_out != LOG_OUTPUTS:
            raise BundleError(f"{where}: task 'replenishment' needs input {INPUT!r} and outputs "
                              f"{LOG_OUTPUTS}; re-export the bundle")
        if self.graph_width(INPUT) != len(FEATURES):
            raise BundleError(f"{path / 'model.onnx'}: the graph reads {self.graph_width(INPUT)} features, this "
                              f"runtime computes {len(FEATURES)}; re-export the bundle")

    def forecast(self, orders: list[list[tuple]], as_of: datetime | str,
                 readings: list[list[tuple] | None] | None = None) -> list[dict]:
        """One answer per machine (``orders[i]``, with ``readings[i]`` if given; only what is before ``as_of`` is
        read): ``next_order`` (median time) with ``next_order_low`` / ``next_order_high``, ``days`` (to the next
        order) with ``days_low`` / ``days_high``, ``quantity`` with ``quantity_low`` / ``quantity_high``, and
        ``known``. A machine with fewer than 3 orders before ``as_of`` is answered with ``known`` False and None."""
        if readings is not None and len(readings) != len(orders):
            raise ValueError(f"readings must have one entry per machine ({len(orders)}), got {len(readings)}")
        as_of_us = _to_us(as_of)
        cutoff = as_of_us / DAY_US
        hs = []
        for i, o in enumerate(orders):
            try:
                hs.append(history(o, readings[i] if readings is not None else None))
            except ValueError as error:
                raise ValueError(f"machine {i}: {error}") from None
        rows = features_many(hs, [cutoff] * len(hs))
        known = [i for i, x in enumerate(rows) if x is not None]
        X = np.array([rows[i] for i in known], dtype=np.float32).reshape(-1, len(FEATURES))
        raw = self.run({INPUT: X}) if len(known) else {name: np.empty(0, np.float32) for name in LOG_OUTPUTS}
        log_t, log_q = (np.stack([raw[n] for n in LOG_OUTPUTS[k:k + 3]]).astype(np.float64) for k in (0, 3))
        days = np.clip(np.expm1(np.minimum(log_t, np.log1p(MAX_DAYS))), 0.0, None)  # rows: low, median, high
        qty = np.exp(np.minimum(log_q, MAX_LOG_QUANTITY))
        start = datetime.fromtimestamp(as_of_us / 1e6, tz=timezone.utc)
        answers = [{"known": False, **{k: None for k in ("next_order", "next_order_low", "next_order_high", "days",
                                                         "days_low", "days_high", "quantity", "quantity_low",
                                                         "quantity_high")}} for _ in orders]
        for j, i in enumerate(known):
            low, mid, high = (float(d) for d in days[:, j])
            answers[i] = {"known": True, "days": mid, "days_low": low, "days_high": high,
                          "next_order": start + timedelta(days=mid), "next_order_low": start + timedelta(days=low),
                          "next_order_high": start + timedelta(days=high), "quantity": float(qty[1, j]),
                          "quantity_low": float(qty[0, j]), "quantity_high": float(qty[2, j])}
        return answers
