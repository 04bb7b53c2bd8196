"""The features a replenishment forecaster sees at a cut-off, from one machine's raw order history and readings
(numpy only: the training code in ``twins.models.replenishment`` and the torch-free runtime share this code).

Times are in days (float) since the Unix epoch; whole days are UTC days (day 0, 1970-01-01, was a Thursday).

Besides counts, gaps and quantities, the features hold two projections of the next order on the calendar
(``proj_cycle_left``, ``proj_cover_left``): the day the machine will have used what it
needs, at its seasonal rate, on its clock. The clock is every day, or weekdays only for a machine that consumes
nothing at weekends. Such a machine's stock cannot fall over a weekend, so it never orders on a Sunday or a Monday;
with readings, its usage stands still on Saturdays and Sundays. The seasonal rate is a robust (Huber) ridge fit of
the log consumption rate between orders on one yearly sine and cosine, read half a mean gap after the last order;
with four weeks of readings or more, the seasonal shape comes from the weekly usage instead.

Readings come in either kind or both: a usage counter (cumulative units used) and stock on hand. A history with
stock readings only gets its usage counter from them (``usage_from_stock``: what the stock lost between readings,
plus the order a refill delivered); one with a counter only has its stock features from the orders (the
order-up-to identity: what was used since the last order).

``features_many`` computes the features of many (machine, cut-off) pairs at once, as scoring a fleet and building
training rows do: the same numbers as ``features`` one pair at a time, bit for bit, with the seasonal fits (most
of a machine's cost) solved as stacks of one shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

RECENT_DAYS = 14  # the recent usage rate (readings) is over this many days
YEAR_DAYS = 365.25
SEASON_RIDGE = 0.25  # ridge on the yearly sine and cosine of the log rate, per interval (chosen on validation machines)
HUBER_K = 1.0  # Huber threshold of the seasonal fit, in robust standard deviations (bursts and breakdowns are outliers)
FEATURE_LIMIT = 1e4  # every feature is clipped to +-this (days and ratios of a machine with almost no usage)
NEED_TOL = 1e-6  # clock days: a need reached up to rounding counts as reached
MAX_NEED_DAYS = 3650.0  # projections are capped at ten years of use (a rate near zero)
BLOCK = 8192  # features_many works through this many (machine, cut-off) pairs at a time (bounded memory)
WEEKDAY_MIN_ORDERS = 6  # order-only weekday detection needs this many orders: (5/7)^6 = 13 % of all-week machines pass
FEATURES = ("log_orders", "since_last", "last_gap", "mean_gap", "median_gap", "gap_cv", "log_last_q", "log_median_q",
            "q_cv", "log_rate", "mean_gap_left", "period_left", "has_telemetry", "cover_days", "above_s_days",
            "up_to_gap_q", "usage_over_order_rate", "hour_std", "log_usage_rate", "recent_over_rate",
            "last_q_over_rate_gap", "weekday_clock", "proj_cycle_left", "proj_cover_left",
            "log_season_cycle", "log_season_cover", "dow_sin", "dow_cos")


REFILL_WINDOW = 30.0  # days: a refill seen in the stock readings is matched to an order placed this long before it


@dataclass
class History:
    """One machine's orders (time, quantity, quoted lead days), sorted by time, and readings (time, stock, usage),
    sorted by time, either value nan where that reading was not taken. On construction the usage counter is
    completed: interpolated between counter readings, or derived from the stock readings where there is no counter
    (``usage_from_stock``); readings that leave neither are dropped."""

    t: np.ndarray
    q: np.ndarray
    promised: np.ndarray
    tel_t: np.ndarray = field(default_factory=lambda: np.empty(0))
    stock: np.ndarray = field(default_factory=lambda: np.empty(0))
    usage: np.ndarray = field(default_factory=lambda: np.empty(0))

    def __post_init__(self) -> None:
        counted, stocked = np.isfinite(self.usage), np.isfinite(self.stock)
        if counted.any():
            self.usage = np.interp(self.tel_t, self.tel_t[counted], self.usage[counted])
        elif stocked.any():
            self.tel_t, self.stock = self.tel_t[stocked], self.stock[stocked]
            self.usage = usage_from_stock(self.tel_t, self.stock, self.t, self.q)
        else:
            self.tel_t, self.stock, self.usage = np.empty(0), np.empty(0), np.empty(0)


def usage_from_stock(tel_t: np.ndarray, stock: np.ndarray, order_t: np.ndarray, order_q: np.ndarray) -> np.ndarray:
    """A cumulative usage counter at each stock reading: between two readings the machine used what its stock lost,
    plus what a refill brought when the stock rose (the order placed in the ``REFILL_WINDOW`` days before that
    best matches the rise plus the usual use, each order matched once). A rise no order explains counts the usual
    use (the median daily use times the days). Causal: a reading's counter reads only the orders before it."""
    lost, days = stock[:-1] - stock[1:], np.diff(tel_t)
    daily = np.where(lost >= 0, lost / np.maximum(days, 1e-6), np.nan)
    used, matched = lost.copy(), np.zeros(len(order_t), bool)
    for i in np.flatnonzero(lost < 0):
        when = tel_t[i + 1]
        before = daily[:i][np.isfinite(daily[:i])]
        usual = float(_median(before)) if len(before) else 0.0
        open_ = np.flatnonzero(~matched & (order_t < when) & (order_t >= when - REFILL_WINDOW))
        if len(open_):
            k = open_[np.argmin(np.abs(order_q[open_] - (-lost[i] + usual * days[i])))]
            matched[k] = True
            used[i] = lost[i] + order_q[k]
        else:
            used[i] = usual * days[i]
    return np.concatenate([[0.0], np.cumsum(np.maximum(used, 0.0))])


def _median(x: np.ndarray) -> np.ndarray:
    """``np.median`` along the last axis (kept for 2-d input) by one sort: the same values at a fraction of the cost
    on the short arrays of one history."""
    s = np.sort(x, axis=-1)
    n = s.shape[-1]
    mid = (s[..., (n - 1) // 2] + s[..., n // 2]) / 2
    return mid[..., None] if s.ndim > 1 else mid


def _mean(x: np.ndarray) -> float:
    """``np.mean`` of a 1-d array, summed as numpy sums it (the same value) without its per-call overhead."""
    return x.sum() / len(x)


def _std(x: np.ndarray) -> float:
    """``np.std`` of a 1-d float array, the same way."""
    d = x - _mean(x)
    return np.sqrt(np.square(d).sum() / len(x))


def _safe_log(x: float) -> float:
    return float(np.log(max(x, 1e-3)))


def weekday(day: np.ndarray) -> np.ndarray:
    """Monday 0 .. Sunday 6 of whole UTC day numbers (day 0 was a Thursday)."""
    return (day + 3) % 7


_WEEKDAYS_IN = np.array([[sum((d + r) % 7 < 5 for r in range(n)) for n in range(7)] for d in range(7)], float)
"""``[first weekday, days]``: Monday-to-Friday days among ``days`` (< 7) consecutive days from the first."""


def active_days(start: np.ndarray, end: np.ndarray, weekdays: bool) -> np.ndarray:
    """Days of the machine's clock in ``[start, end)`` (whole day numbers): all of them, or Monday to Friday."""
    start, end = np.asarray(start, np.int64), np.asarray(end, np.int64)
    n = np.maximum(end - start, 0)
    if not weekdays:
        return n.astype(float)
    weeks, rest = np.divmod(n, 7)
    return 5.0 * weeks + _WEEKDAYS_IN[weekday(start), rest]


def day_reached(day0: int, need: float, weekdays: bool) -> int:
    """The first day ``d > day0`` with ``active_days(day0, d) >= need``: a machine that starts consuming on day
    ``day0`` and needs ``need`` clock days of use orders at the start of day ``d``."""
    if not weekdays:
        return day0 + max(int(np.ceil(need - NEED_TOL)), 1)
    d = day0 + max(int(np.floor(max(need, 0.0) / 5.0)) * 7 - 7, 1)  # a week short, then day by day
    n = float(active_days(day0, d, True))
    while n < need - NEED_TOL:
        n += float((d + 3) % 7 < 5)  # day d is on the clock: active_days(day0, d + 1)
        d += 1
    return int(d)


def weekday_clock(order_days: np.ndarray, tel_days: np.ndarray, usage: np.ndarray) -> bool:
    """Whether the machine consumes on weekdays only: with two weeks of readings, its weekend usage is under a tenth
    of its weekday usage; from orders, none of ``WEEKDAY_MIN_ORDERS`` or more falls on a Sunday or a Monday."""
    if len(tel_days) >= 15:
        step = np.diff(usage)
        one_day = np.diff(tel_days) == 1
        weekend = (weekday(tel_days[1:]) >= 5) & one_day
        working = (weekday(tel_days[1:]) < 5) & one_day
        if weekend.sum() >= 2 and working.sum() >= 5:
            return bool(_median(step[weekend]) < 0.1 * _median(step[working]))
    if len(order_days) < WEEKDAY_MIN_ORDERS:
        return False
    dow = weekday(order_days)
    return not ((dow == 0) | (dow == 6)).any()


def seasonal_rates(mid: np.ndarray, rates: np.ndarray, weights: np.ndarray, at: float) -> np.ndarray:
    """Per row of ``rates [k, n]`` (consumption per clock day over intervals centred at ``mid [n]``): the fitted
    rate at ``at`` and its level without season, as ``[k, 2]``. A weighted ridge regression of the log rate on a
    yearly sine and cosine, Huber-reweighted."""
    return seasonal_fits([(mid, rates, weights, at)])[0]


def seasonal_fits(problems: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, float]]) -> list[np.ndarray]:
    """``seasonal_rates(*p)`` of each ``(mid, rates, weights, at)`` in ``problems``, the problems of one shape
    ``[k, n]`` solved as one stack: every product is summed in the order the one-problem code sums it and each
    matrix goes to the same LAPACK call, so a problem's answer does not depend on the others, bit for bit."""
    out: list[np.ndarray] = [np.empty(0)] * len(problems)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (_, rates, _, _) in enumerate(problems):
        groups.setdefault(np.shape(rates), []).append(i)
    for idx in groups.values():
        fitted = _seasonal_stack(*(np.stack([np.asarray(problems[i][f], np.float64) for i in idx]) for f in range(4)))
        for i, f in zip(idx, fitted):
            out[i] = f
    return out


def _seasonal_stack(mid: np.ndarray, rates: np.ndarray, weights: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``seasonal_rates`` of ``g`` problems of one shape: ``mid [g, n]``, ``rates [g, k, n]``, ``weights [g, n]``,
    ``at [g]`` -> ``[g, k, 2]``. A problem stops reweighting when its weights repeat, as on its own."""
    w = 2 * np.pi * mid / YEAR_DAYS
    X = np.stack([np.ones(mid.shape), np.sin(w), np.cos(w)], axis=-1)  # [g, n, 3]
    y = np.log(np.maximum(rates, 1e-9))
    ridge = np.diag([0.0, SEASON_RIDGE, SEASON_RIDGE]) * weights.mean(axis=1)[:, None, None] + 1e-9 * np.eye(3)
    ww = np.broadcast_to(weights[:, None, :], y.shape).copy()
    beta = np.empty(y.shape[:2] + (3,))
    live = np.arange(len(mid))  # the problems still reweighting
    for _ in range(6):
        Xl, yl, wl = X[live], y[live], ww[live]
        A = np.einsum("gkn,gni,gnj->gkij", wl, Xl, Xl) + ridge[live][:, None]
        b = np.linalg.solve(A, np.einsum("gkn,gni,gkn->gki", wl, Xl, yl)[..., None])[..., 0]
        beta[live] = b
        resid = np.abs(yl - b @ Xl.transpose(0, 2, 1))
        scale = 1.4826 * _median(resid) + 1e-9
        new = weights[live][:, None, :] * np.minimum(1.0, HUBER_K * scale / np.maximum(resid, 1e-12))
        ww[live] = new
        live = live[~(new == wl).all(axis=(1, 2))]  # a problem whose next round would give the same beta stops
        if not len(live):
            break
    wa = 2 * np.pi * at / YEAR_DAYS
    v = np.stack([np.ones(at.shape), np.sin(wa), np.cos(wa)], axis=-1)
    return np.exp(np.stack([(beta @ v[:, :, None])[..., 0], beta[..., 0]], axis=-1))


def features(h: History, cutoff: float) -> np.ndarray | None:
    """``FEATURES`` of a machine at ``cutoff`` from what happened strictly before it, each within
    ``FEATURE_LIMIT``; None with < 3 orders."""
    return features_many([h], [cutoff])[0]


def features_many(hs: Sequence[History], cutoffs: Sequence[float]) -> list[np.ndarray | None]:
    """``features(h, c)`` of each pair of ``zip(hs, cutoffs)``, bit for bit, with the seasonal fits of all of them
    solved together (``seasonal_fits``) rather than a few small solves per machine; the rest is per pair."""
    out: list[np.ndarray | None] = []
    for start in range(0, len(hs), BLOCK):
        heads = [_head(h, c) for h, c in zip(hs[start:start + BLOCK], cutoffs[start:start + BLOCK])]
        fits = iter(seasonal_fits([p for head in heads if head is not None for p in head.problems]))
        out += [None if head is None else head.finish([next(fits) for _ in head.problems]) for head in heads]
    return out


@dataclass
class _Head:
    """A machine's features at a cut-off up to its seasonal fits: ``values`` (all but the calendar's), what the
    calendar needs besides, and ``problems`` for ``seasonal_fits`` (the orders' fit, then the readings' if any)."""

    values: list[float]
    weekdays: bool
    dow: float
    problems: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]
    q: np.ndarray | None = None
    last_day: int = 0
    hour: float = 0.0
    cutoff: float = 0.0
    proj: float = 0.0

    def finish(self, fits: list[np.ndarray]) -> np.ndarray:
        """The features, given the fits of ``problems`` (in their order)."""
        season = [0.0, 0.0]
        if not fits:  # under two intervals on the clock: both projections are a mean gap after the last order
            cycle = cover = self.proj
        else:
            fitted = fits[0]
            if len(fits) > 1:  # readings: the season of the weekly usage, far less noisy than the orders'
                by_usage = fits[1][0]
                fitted[:, 0] = fitted[:, 1] * by_usage[0] / by_usage[1]
            q = self.q
            need = np.minimum([float(_median(q[1:])) / fitted[0, 0], float(q[-1]) / fitted[1, 0]], MAX_NEED_DAYS)
            cycle, cover = (day_reached(self.last_day, float(n), self.weekdays) + self.hour - self.cutoff
                            for n in need)
            season = [float(np.log(fitted[0, 0] / fitted[0, 1])), float(np.log(fitted[1, 0] / fitted[1, 1]))]
        calendar = [float(self.weekdays), cycle, cover, *season, np.sin(self.dow), np.cos(self.dow)]
        return np.clip(np.asarray(self.values + calendar, dtype=np.float64), -FEATURE_LIMIT, FEATURE_LIMIT)


def _head(h: History, cutoff: float) -> _Head | None:
    """``features(h, cutoff)`` up to its seasonal fits; None with < 3 orders."""
    k = np.searchsorted(h.t, cutoff)
    if k < 3:
        return None
    t, q = h.t[:k], h.q[:k]
    gaps = np.diff(t)
    since = cutoff - t[-1]
    mean_gap, median_gap = _mean(gaps), float(_median(gaps))
    rate = q[1:].sum() / max(t[-1] - t[0], 1e-6)
    day_gaps = np.round(gaps)
    period = float(_median(day_gaps))
    periodic = period >= 1 and _mean((day_gaps % period == 0) & (np.abs(gaps - day_gaps) < 0.1)) >= 0.9
    period_left = (period - since % period) if periodic else mean_gap - since
    hours = (t % 1) * 24
    out = [np.log1p(k), since, gaps[-1], mean_gap, median_gap, _std(gaps) / max(mean_gap, 1e-6), _safe_log(q[-1]),
           _safe_log(float(_median(q))), _std(q) / max(_mean(q), 1e-6), _safe_log(rate), mean_gap - since,
           period_left]
    j = np.searchsorted(h.tel_t, cutoff)
    if j >= 2 and h.usage[j - 1] <= h.usage[0]:
        j = 0  # readings whose usage never grew (a stuck or broken meter) are ignored
    if j >= 2:
        tel_t, usage = h.tel_t[:j], h.usage[:j]
        usage_rate = max((usage[-1] - usage[0]) / max(tel_t[-1] - tel_t[0], 1e-6), 1e-6)
        recent = np.searchsorted(tel_t, tel_t[-1] - RECENT_DAYS)
        recent_rate = (usage[-1] - usage[recent]) / max(tel_t[-1] - tel_t[recent], 1e-6)
        stocked = np.isfinite(h.stock[:j])
        if stocked.any():
            cover, above, gap_q = _stock_position(t, q, h.promised[:k], tel_t[stocked], h.stock[:j][stocked],
                                                  usage_rate, cutoff)
        else:  # a usage counter only: the order-up-to identity, what was used since the last order
            used = usage[-1] - np.interp(t[-1], tel_t, usage) + usage_rate * (cutoff - tel_t[-1])
            cover = above = (float(_median(q)) - used) / usage_rate
            gap_q = used / max(float(_median(q)), 1e-6)
        out += [1.0, cover, above, gap_q, usage_rate / max(rate, 1e-6), float(_std(hours)), _safe_log(usage_rate),
                recent_rate / usage_rate]
    else:
        out += [0.0, 0.0, mean_gap - since, 1.0, 1.0, float(_std(hours)), _safe_log(rate), 1.0]
    out.append(q[-1] / max(rate * gaps[-1], 1e-6))
    return _calendar(h, t, q, mean_gap, j, cutoff, out)


def _stock_position(t: np.ndarray, q: np.ndarray, promised: np.ndarray, tel_t: np.ndarray, stock: np.ndarray,
                    usage_rate: float, cutoff: float) -> tuple[float, float, float]:
    """From stock readings: days the last stock covers, days until the position (stock + open orders) falls to the
    reorder point (the median position at the orders), and the gap to the order-up-to level in order quantities."""
    lead = float(np.nanmedian(promised)) + 0.5 if np.isfinite(promised).any() else 4.0
    open_q = q[t + lead > cutoff].sum()
    before = np.searchsorted(tel_t, t) - 1
    ok = before >= 0
    tk = t[ok][:, None]
    positions = stock[before[ok]] + ((t[None, :] < tk) & (t[None, :] + lead >= tk)) @ q  # stock + open orders
    s_hat = float(_median(positions)) if ok.any() else 0.0
    up_to = float(_median(positions + q[ok])) if ok.any() else s_hat + float(_median(q))
    position = stock[-1] - usage_rate * (cutoff - tel_t[-1]) + open_q
    return stock[-1] / usage_rate, (position - s_hat) / usage_rate, (up_to - position) / max(_median(q), 1e-6)


def _calendar(h: History, t: np.ndarray, q: np.ndarray, mean_gap: float, j: int, cutoff: float,
              values: list[float]) -> _Head:
    """The calendar features (module docstring) after ``values``, up to their seasonal fits: clock, the two
    projections (days from the cut-off; negative: overdue), the seasonal factors and the cut-off's weekday.

    ``proj_cycle_left``: (s, S) logic, an order replaces what was used since the one before, so the typical
    quantity is used at the rate of the orders that FOLLOW each interval. ``proj_cover_left``: cover logic, an order
    lasts while its own quantity is used, so the last quantity at the rate of the orders that OPEN each interval."""
    day = np.floor(t).astype(np.int64)
    tel_day = np.floor(h.tel_t[:j]).astype(np.int64)
    weekdays = weekday_clock(day, tel_day, h.usage[:j])
    dow = 2 * np.pi * weekday(np.floor(cutoff)) / 7
    clock = active_days(day[:-1], day[1:], weekdays)
    ok = clock > 0
    if ok.sum() < 2:
        return _Head(values, weekdays, dow, [], proj=float(t[-1] + mean_gap - cutoff))
    mid = ((t[:-1] + t[1:]) / 2)[ok]
    at = t[-1] + mean_gap / 2  # half a mean gap after the last order
    problems = [(mid, np.stack([q[1:][ok], q[:-1][ok]]) / clock[ok], clock[ok] / _mean(clock[ok]), at)]
    by_usage = _usage_problem(h, j, at)
    if by_usage is not None:
        problems.append(by_usage)
    return _Head(values, weekdays, dow, problems, q=q, last_day=int(day[-1]), hour=t[-1] - day[-1], cutoff=cutoff)


def _usage_problem(h: History, j: int, at: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
    """The ``seasonal_rates`` problem (rate at ``at``, level) of the weekly usage of the first ``j`` readings; None
    with fewer than four weeks of them or when over a tenth of their weeks show no usage (a meter that sticks)."""
    if j < 2 * RECENT_DAYS + 1:
        return None
    week = np.arange(0, j - 7, 7)
    weekly = (h.usage[week + 7] - h.usage[week]) / np.maximum(h.tel_t[week + 7] - h.tel_t[week], 1e-6)
    if _mean(weekly > 0) < 0.9:
        return None
    return (h.tel_t[week] + h.tel_t[week + 7]) / 2, weekly[None], np.ones(len(week)), at
