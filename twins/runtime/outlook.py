"""Purchase outlook from a customer's raw purchase history (task ``purchase_outlook``): numpy + onnxruntime."""

from datetime import datetime, timedelta, timezone

import numpy as np

from twins.runtime.bundle import Bundle, BundleError, need
from twins.runtime.outlook_features import (CAL_WEEKS, CAL_WINDOWS, N_FEATURES, Calendar, calendar_inputs, calendar_summary,
                                           covariate_features, covariate_names, features)

DAY_US = 86_400_000_000
MAX_WAIT_DAYS = 36_525  # a next purchase further than 100 years out is answered as None (not expected)
INPUTS = ("x", "t_x", "T", "m", "t")
MAX_HORIZON_WEEKS = 104  # the neural outlook answers horizons of 1..104 whole weeks
NET_OUTPUTS = ("expected_purchases", "p_alive", "p_any_purchase", "expected_spend", "next_low", "next_median", "next_high",
               "p_alive_end")


def _to_us(value) -> int:
    """Microseconds since the epoch (UTC) of a datetime (naive = UTC) or an ISO 8601 string."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"a purchase time must be a datetime or an ISO 8601 string, not {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1_000_000)


def net_purchase_days(purchases: list[tuple], as_of_us: int, gross: bool = False) -> dict[int, float]:
    """{UTC day start (µs): net amount} of the purchase days before ``as_of`` in a history of (time, amount)
    lines, as ``twins.evaluate.outlook`` summarises events: a day with a purchase (amount >= 0) is one purchase
    day worth its net amount; negative amounts are returns, and a day with returns only is no purchase day.
    ``gross``: returns are left out of the amounts (the bundle's ``preprocessing.spend``)."""
    net: dict[int, float] = {}
    bought: set[int] = set()
    for line in purchases:
        when, amount = line[0], line[1]
        us = _to_us(when)
        if us < as_of_us and not (gross and amount < 0):
            day = us // DAY_US * DAY_US
            net[day] = net.get(day, 0.0) + float(amount)
            if amount >= 0:
                bought.add(day)
    return {d: net[d] for d in sorted(bought)}


def purchase_units(purchases: list[tuple], as_of_us: int, gross: bool = False, by_order: bool = False) -> list[tuple[int, float]]:
    """(UTC day start in µs, amount) of each counted purchase unit before ``as_of``, by day: the purchase days of
    ``net_purchase_days``; ``by_order``: each order with a purchase (lines grouped by their third element, the
    order id, or by their time where there is none), at the day of its first line, worth its lines' amounts."""
    if not by_order:
        return list(net_purchase_days(purchases, as_of_us, gross).items())
    orders: dict[object, list] = {}
    for line in purchases:
        us, amount = _to_us(line[0]), float(line[1])
        if us < as_of_us and not (gross and amount < 0):
            key = line[2] if len(line) > 2 and line[2] is not None else us
            first, total, bought = orders.get(key, (us, 0.0, False))
            orders[key] = (min(first, us), total + amount, bought or amount >= 0)
    return sorted((first // DAY_US * DAY_US, total) for first, total, bought in orders.values() if bought)


def summary(purchases: list[tuple], as_of_us: int, unit_days: float, gross: bool = False,
            by_order: bool = False) -> tuple[float, float, float, float]:
    """(x, t_x, T, m) of one history of (time, amount) lines before ``as_of`` (``net_purchase_days``). ``m`` is
    the mean of the repeat days, floored at 0 (the bundle then answers with the population's mean spend per
    purchase day). No purchase before as_of: a new customer (0, 0, 0, 0)."""
    units = purchase_units(purchases, as_of_us, gross, by_order)
    if not units:
        return 0.0, 0.0, 0.0, 0.0
    unit = unit_days * DAY_US
    x = len(units) - 1
    first = [amount for day, amount in units if day == units[0][0]]  # several orders on the first day: one is the first
    repeat = sum(amount for _, amount in units[len(first):]) + sum(first) * (len(first) - 1) / len(first)
    m = max(repeat / x, 0.0) if x else 0.0
    return float(x), (units[-1][0] - units[0][0]) / unit, (as_of_us - units[0][0]) / unit, m


def answers(out: dict[str, np.ndarray], known: np.ndarray, as_of_us: int, unit_days: float, horizon_days: float) -> list[dict]:
    """The outlook bundles' plain answers, one per row of their outputs (waiting times in ``unit_days``).
    ``churn_risk`` is the probability of being gone by the horizon's end: 1 − P(alive) for BG/NBD, whose customers
    drop out only right after a purchase, 1 − ``p_alive_end`` for the neural outlook."""
    start = datetime.fromtimestamp(as_of_us / 1e6, tz=timezone.utc)
    alive_end = out.get("p_alive_end", out["p_alive"])  # BG/NBD: nobody drops out between purchases

    def when(w: float) -> datetime | None:
        days = float(w) * unit_days
        return start + timedelta(days=days) if np.isfinite(days) and days <= MAX_WAIT_DAYS else None

    return [{"expected_purchases": float(out["expected_purchases"][i]), "expected_spend": float(out["expected_spend"][i]),
             "p_alive": float(out["p_alive"][i]), "churn_risk": 1.0 - float(alive_end[i]),
             "p_any_purchase": float(out["p_any_purchase"][i]), "next_purchase": when(out["next_median"][i]),
             "next_purchase_low": when(out["next_low"][i]), "next_purchase_high": when(out["next_high"][i]),
             "known": bool(known[i]), "horizon_days": horizon_days}
            for i in range(len(known))]


def positive(manifest: dict, key: str, where) -> float:
    """The finite number > 0 at ``key`` of the manifest."""
    value = need(manifest, key, float, where)
    if value <= 0:
        raise BundleError(f"{where}: {key!r} must be > 0, got {value}; re-export the bundle")
    return value


def check_horizon_weeks(weeks: int) -> None:
    if not 1 <= weeks <= MAX_HORIZON_WEEKS:
        raise ValueError(f"the neural outlook answers horizons of 1 to {MAX_HORIZON_WEEKS} whole weeks, got {weeks}")


def checked_horizon(default: float, horizon_days: float | None) -> float:
    horizon = default if horizon_days is None else float(horizon_days)
    if not horizon > 0:
        raise ValueError(f"horizon_days must be > 0, got {horizon}")
    return horizon


class OutlookBundle(Bundle):
    """How many purchase days and how much spend in a horizon, P(alive), churn risk and the time to the next
    purchase with an interval, from raw histories of ``(time, amount)`` purchases (returns as negative amounts;
    a third element, the order id, is read when the bundle counts orders: ``preprocessing.count_by``)."""

    def __init__(self, path, manifest: dict, session) -> None:
        super().__init__(path, manifest, session)
        where = self.manifest_path
        self.unit_days = positive(manifest, "preprocessing.unit_days", where)
        self.horizon_days = positive(manifest, "preprocessing.horizon_days", where)
        if tuple(v["name"] for v in manifest["inputs"]) != INPUTS:
            raise BundleError(f"{where}: task 'purchase_outlook' needs inputs {INPUTS}; re-export the bundle")
        missing = set(NET_OUTPUTS[:-1]) - {v["name"] for v in manifest["outputs"]}
        if missing:
            raise BundleError(f"{where}: task 'purchase_outlook' lacks outputs {sorted(missing)}; re-export the bundle")
        try:
            self.calendar = Calendar(manifest["preprocessing"].get("calendar"))
        except (TypeError, ValueError, KeyError) as error:
            raise BundleError(f"{where}: preprocessing.calendar is not a calendar spec ({error}); re-export the bundle") from None
        if self.calendar.fitted and self.unit_days != 7.0:
            raise BundleError(f"{where}: a calendar bundle counts time in weeks (preprocessing.unit_days 7), got "
                              f"{self.unit_days:g}; re-export the bundle")

    def score(self, histories: list[list[tuple]], as_of: datetime | str, horizon_days: float | None = None) -> list[dict]:
        """One answer per history: ``expected_purchases``, ``expected_spend``, ``p_alive``, ``churn_risk``,
        ``p_any_purchase`` in the horizon (default: the exported one), ``next_purchase`` (median, given alive),
        ``next_purchase_low`` / ``next_purchase_high`` (None when further than 100 years out), and ``known`` (False: no purchase before as_of, answered
        with the population's values for a new customer)."""
        as_of_us = _to_us(as_of)
        horizon = checked_horizon(self.horizon_days, horizon_days)
        gross, by_order = self.manifest["preprocessing"].get("spend") == "gross", self.manifest["preprocessing"].get("count_by") == "order"
        if self.calendar.fitted:
            return self._score_on_calendar(histories, as_of_us, horizon, gross, by_order)
        rows = np.array([summary(h, as_of_us, self.unit_days, gross, by_order) for h in histories], dtype=np.float64).reshape(-1, 4)
        feeds = {name: np.ascontiguousarray(rows[:, i]) for i, name in enumerate(INPUTS[:4])}
        feeds["t"] = np.full(len(rows), horizon / self.unit_days)
        known = (rows[:, 2] > 0) | (rows[:, 0] > 0)
        return answers(self.run(feeds), known, as_of_us, self.unit_days, horizon)

    def _score_on_calendar(self, histories: list[list[tuple]], as_of_us: int, horizon: float, gross: bool,
                           by_order: bool) -> list[dict]:
        """BG/NBD on the calendar (``twins.models.btyd.SeasonalBetaGeoModel``): the summary and the horizon in
        calendar weeks (``calendar_summary``), spend times the horizon's spend multiplier, waiting times turned
        back into real time."""
        row, day, spend = [], [], []
        for i, history in enumerate(histories):
            for start, amount in purchase_units(history, as_of_us, gross, by_order):
                row.append(i)
                day.append(start // DAY_US)
                spend.append(amount)
        as_of_day = as_of_us / DAY_US
        s = calendar_summary(self.calendar, np.array(row, np.int64), np.array(day, np.int64), np.array(spend, np.float64),
                             len(histories), as_of_day, horizon)
        feeds = {name: np.ascontiguousarray(s[name], np.float64) for name in INPUTS[:4]}
        feeds["t"] = np.full(len(histories), s["t"])
        out = self.run(feeds)
        out["expected_spend"] = out["expected_spend"] * s["spend_scale"]
        for key in ("next_low", "next_median", "next_high"):
            out[key] = self.calendar.unwarp(as_of_day, out[key]) / 7.0
        known = np.bincount(np.array(row, np.int64), minlength=len(histories)) > 0
        return answers(out, known, as_of_us, 7.0, horizon)


class OutlookNetBundle(Bundle):
    """The neural purchase outlook (task ``purchase_outlook_net``, ``twins.models.outlook_net``): the same
    answers as ``OutlookBundle`` from the same raw histories of ``(time, amount)`` purchases; horizons are whole
    weeks (the answer's ``horizon_days`` says which). A history with no purchase day before as_of is answered as
    a customer whose first purchase is on the as-of day, spending the training customers' mean per purchase day."""

    def __init__(self, path, manifest: dict, session) -> None:
        super().__init__(path, manifest, session)
        where = self.manifest_path
        self.horizon_days = positive(manifest, "preprocessing.horizon_days", where)
        self.new_day_spend = need(manifest, "preprocessing.new_customer_day_spend", float, where)
        try:
            self.calendar = Calendar(manifest["preprocessing"].get("calendar"))
        except (TypeError, ValueError, KeyError) as error:
            raise BundleError(f"{where}: preprocessing.calendar is not a calendar spec ({error}); re-export the bundle") from None
        self.covariates = manifest["preprocessing"].get("covariates") or []
        try:
            width = len(covariate_names(self.covariates))
        except (TypeError, KeyError, AttributeError) as error:
            raise BundleError(f"{where}: preprocessing.covariates is not a covariate spec ({error!r}); re-export the bundle") from None
        n_features = N_FEATURES + width + (len(CAL_WINDOWS) if self.calendar.fitted else 0)
        if (tuple(v["name"] for v in manifest["inputs"]) != ("x", "h", "cal", "spend_cal")
                or self.graph_width("x") != n_features or self.graph_width("cal") != CAL_WEEKS):
            raise BundleError(f"{where}: task 'purchase_outlook_net' needs inputs x [batch, {n_features}], h [batch], "
                              f"cal and spend_cal [batch, {CAL_WEEKS}] (this runtime's features and calendar); "
                              "re-export the bundle")
        missing = set(NET_OUTPUTS) - {v["name"] for v in manifest["outputs"]}
        if missing:
            raise BundleError(f"{path}/manifest.json: task 'purchase_outlook_net' lacks outputs {sorted(missing)}; "
                              "re-export the bundle")

    def score(self, histories: list[list[tuple]], as_of: datetime | str, horizon_days: float | None = None,
              attributes: list[dict | None] | None = None) -> list[dict]:
        """One answer per history (keys as ``OutlookBundle.score``). ``attributes``: one dict per history with the
        customer's covariates (``preprocessing.covariates`` names; a missing one reads as unknown)."""
        if attributes is not None and len(attributes) != len(histories):
            raise ValueError(f"attributes has {len(attributes)} entries for {len(histories)} histories; give one per history")
        as_of_us = _to_us(as_of)
        days = checked_horizon(self.horizon_days, horizon_days)
        weeks = round(days / 7.0)
        if abs(days - 7.0 * weeks) > 1e-9 or not 1 <= weeks <= MAX_HORIZON_WEEKS:
            raise ValueError(f"horizon_days={days:g}: the neural outlook answers whole weeks, 7 to {7 * MAX_HORIZON_WEEKS} "
                             f"days (1 to {MAX_HORIZON_WEEKS} weeks); e.g. {7 * min(max(weeks, 1), MAX_HORIZON_WEEKS)}")
        row, age, spend = [], [], []
        for i, history in enumerate(histories):
            for day, amount in purchase_units(history, as_of_us, self.manifest["preprocessing"].get("spend") == "gross",
                                              self.manifest["preprocessing"].get("count_by") == "order"):
                row.append(i)
                age.append((as_of_us - day) / DAY_US)
                spend.append(amount)
        x = features(np.array(row, np.int64), np.array(age), np.array(spend), len(histories), self.new_day_spend)
        if self.covariates:
            x = np.concatenate([x, covariate_features(self.covariates, attributes or [None] * len(histories))], 1)
        x, cal, spend_cal = calendar_inputs(self.calendar, x, as_of_us / DAY_US)
        out = self.run({"x": x.astype(np.float64), "h": np.full(len(histories), float(weeks)), "cal": cal,
                        "spend_cal": spend_cal})
        known = np.bincount(np.array(row, np.int64), minlength=len(histories)) > 0
        return answers(out, known, as_of_us, 7.0, 7.0 * weeks)
