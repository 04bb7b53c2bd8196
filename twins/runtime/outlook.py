"""Purchase outlook from a customer's raw purchase history (task ``purchase_outlook``): numpy + onnxruntime."""

from datetime import datetime, timedelta, timezone

import numpy as np

from twins.runtime.bundle import Bundle, BundleError

DAY_US = 86_400_000_000
MAX_WAIT_DAYS = 36_525  # a next purchase further than 100 years out is answered as None (not expected)
INPUTS = ("x", "t_x", "T", "m", "t")


def _to_us(value) -> int:
    """Microseconds since the epoch (UTC) of a datetime (naive = UTC) or an ISO 8601 string."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"a purchase time must be a datetime or an ISO 8601 string, not {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1_000_000)


def summary(purchases: list[tuple], as_of_us: int, unit_days: float) -> tuple[float, float, float, float]:
    """(x, t_x, T, m) of one history of (time, amount) lines before ``as_of``, as ``twins.evaluate.outlook``
    summarises events: a UTC day with a purchase (amount >= 0) is one purchase day worth its net amount;
    negative amounts are returns, and a day with returns only is no purchase day. ``m`` is the mean of the
    repeat days, floored at 0 (the bundle then answers with the population's mean spend per purchase day). No purchase before as_of: a new customer (0, 0, 0, 0)."""
    net: dict[int, float] = {}
    bought: set[int] = set()
    for when, amount in purchases:
        us = _to_us(when)
        if us < as_of_us:
            day = us // DAY_US * DAY_US
            net[day] = net.get(day, 0.0) + float(amount)
            if amount >= 0:
                bought.add(day)
    if not bought:
        return 0.0, 0.0, 0.0, 0.0
    days = {d: net[d] for d in bought}
    order = sorted(days)
    unit = unit_days * DAY_US
    x = len(order) - 1
    m = max(float(np.mean([days[d] for d in order[1:]])), 0.0) if x else 0.0
    return float(x), (order[-1] - order[0]) / unit, (as_of_us - order[0]) / unit, m


class OutlookBundle(Bundle):
    """How many purchase days and how much spend in a horizon, P(alive), churn risk and the time to the next
    purchase with an interval, from raw histories of ``(time, amount)`` purchases (returns as negative amounts)."""

    def __init__(self, path, manifest: dict, session) -> None:
        super().__init__(path, manifest, session)
        try:
            pre = manifest["preprocessing"]
            self.unit_days, self.horizon_days = float(pre["unit_days"]), float(pre["horizon_days"])
        except (KeyError, TypeError, ValueError) as error:
            raise BundleError(f"{path}/manifest.json: task 'purchase_outlook' needs preprocessing.unit_days and "
                              f"horizon_days ({error!r}); re-export with twins.models.outlook_export") from None
        if tuple(v["name"] for v in manifest["inputs"]) != INPUTS:
            raise BundleError(f"{path}/manifest.json: task 'purchase_outlook' needs inputs {INPUTS}; re-export the bundle")

    def score(self, histories: list[list[tuple]], as_of: datetime | str, horizon_days: float | None = None) -> list[dict]:
        """One answer per history: ``expected_purchases``, ``expected_spend``, ``p_alive``, ``churn_risk``,
        ``p_any_purchase`` in the horizon (default: the exported one), ``next_purchase`` (median, given alive),
        ``next_purchase_low`` / ``next_purchase_high`` (None when further than 100 years out), and ``known`` (False: no purchase before as_of, answered
        with the population's values for a new customer)."""
        as_of_us = _to_us(as_of)
        horizon = self.horizon_days if horizon_days is None else float(horizon_days)
        if not horizon > 0:
            raise ValueError(f"horizon_days must be > 0, got {horizon}")
        rows = np.array([summary(h, as_of_us, self.unit_days) for h in histories], dtype=np.float64).reshape(-1, 4)
        feeds = {name: np.ascontiguousarray(rows[:, i]) for i, name in enumerate(INPUTS[:4])}
        feeds["t"] = np.full(len(rows), horizon / self.unit_days)
        out = self.run(feeds)
        start = datetime.fromtimestamp(as_of_us / 1e6, tz=timezone.utc)
        def when(w: float) -> datetime | None:
            days = float(w) * self.unit_days
            return start + timedelta(days=days) if np.isfinite(days) and days <= MAX_WAIT_DAYS else None

        return [{"expected_purchases": float(out["expected_purchases"][i]), "expected_spend": float(out["expected_spend"][i]),
                 "p_alive": float(out["p_alive"][i]), "churn_risk": 1.0 - float(out["p_alive"][i]),
                 "p_any_purchase": float(out["p_any_purchase"][i]), "next_purchase": when(out["next_median"][i]),
                 "next_purchase_low": when(out["next_low"][i]), "next_purchase_high": when(out["next_high"][i]),
                 "known": bool(rows[i, 2] > 0 or rows[i, 0] > 0), "horizon_days": horizon}
                for i in range(len(rows))]
