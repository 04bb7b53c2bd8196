"""Features of a customer's purchase days as of a cut-off, for the neural purchase outlook (numpy only).

Training (``twins.models.outlook_net``) and the torch-free runtime (``twins.runtime.outlook_net``) both call
``features``, so a bundle sees exactly what the network was trained on. Input is flat: one entry per purchase day
before the cut-off, with the customer's row, the day's age (days from the day's start to the cut-off, > 0) and
its net spend. Time is in weeks.
"""

import numpy as np

WINDOWS = (1, 2, 4, 8, 13, 26, 52)  # weeks before the cut-off with a count feature each
NAMES = ("log_T", "log_x", "log_t_x", "log_recency", "x_per_week", "recency_share", "log_gap_sd",
         *[f"{kind}_{w}w" for w in WINDOWS for kind in ("log_count", "rate")],
         "active_week_share", "log_day_spend", "log_first_spend", "log_recent_day_spend")
N_FEATURES = len(NAMES)


def features(row: np.ndarray, age_days: np.ndarray, spend: np.ndarray, n_rows: int,
             new_day_spend: float | None = None) -> np.ndarray:
    """``[n_rows, N_FEATURES]`` float32 features (``NAMES``). Every input array has one entry per (customer,
    purchase day); ``age_days`` > 0. Rows without a purchase day get the features of a customer whose one
    purchase day is the cut-off day itself, spending ``new_day_spend`` (default: the mean spend per purchase day
    of the other rows)."""
    row = np.asarray(row, np.int64)
    age = np.asarray(age_days, np.float64) / 7.0
    spend = np.maximum(np.asarray(spend, np.float64), 0.0)
    if len(row) and (age.min() <= 0 or not np.isfinite(age).all()):
        raise ValueError("purchase day ages must be finite and > 0 (days strictly before the cut-off)")
    count = lambda mask=None: np.bincount(row, None if mask is None else mask.astype(np.float64), n_rows)  # noqa: E731
    total = lambda values: np.bincount(row, values, n_rows)  # noqa: E731
    n = count()
    known = n > 0
    T = np.zeros(n_rows)
    np.maximum.at(T, row, age)
    recency = np.full(n_rows, np.inf)
    np.minimum.at(recency, row, age)
    recency[~known] = 0.0
    x = np.maximum(n - 1, 0)
    t_x = T - recency
    gap = np.where(x > 0, t_x / np.maximum(x, 1), 0.0)
    # spread of the gaps between consecutive purchase days (sorted by customer, then age)
    order = np.lexsort((age, row))
    r, a = row[order], age[order]
    same = r[1:] == r[:-1]
    gaps = np.diff(a)[same]
    gap_sq = np.bincount(r[1:][same], gaps ** 2, n_rows)
    gap_sd = np.sqrt(np.maximum(np.where(x > 0, gap_sq / np.maximum(x, 1), 0.0) - gap ** 2, 0.0))
    span = np.maximum(T, 1.0 / 7.0)
    cols = [np.log1p(T), np.log1p(x), np.log1p(t_x), np.log1p(recency), x / span, recency / span, np.log1p(gap_sd)]
    for w in WINDOWS:
        c = count(age <= w)
        cols += [np.log1p(c), c / np.minimum(w, span)]
    weeks = np.unique(row * 10_000 + np.floor(age - 1e-9).astype(np.int64)) // 10_000
    cols.append(np.bincount(weeks, None, n_rows) / np.ceil(span))
    day_spend = total(spend) / np.maximum(n, 1)
    first = np.zeros(n_rows)
    oldest = np.r_[~same, True] if len(r) else np.zeros(0, bool)  # the oldest day of each customer
    first[r[oldest]] = spend[order][oldest]
    recent = age <= 13
    recent_spend = np.where(count(recent) > 0, total(spend * recent) / np.maximum(count(recent), 1), day_spend)
    cols += [np.log1p(day_spend), np.log1p(first), np.log1p(recent_spend)]
    out = np.stack(cols, 1)
    if not known.all():
        if new_day_spend is None:
            new_day_spend = float(total(spend).sum() / n.sum()) if known.any() else 0.0
        out[~known] = new_customer(new_day_spend)
    return out.astype(np.float32)


def new_customer(day_spend: float) -> np.ndarray:
    """Features of a customer whose one purchase day is the cut-off day, spending ``day_spend``."""
    return features(np.zeros(1, np.int64), np.ones(1), np.full(1, day_spend), 1)[0]


# --- the calendar: week-of-year and holiday multipliers of the purchase rate and the spend per purchase day ------

YEAR_DAYS = 365.25
MIN_CALENDAR_WEEKS = 52  # a seasonal profile is learnt only from at least a year of history
CAL_WINDOWS = (1, 4, 13, 26, 52)  # weeks before the cut-off whose mean calendar multiplier is a feature


def holiday_spans(holidays: list) -> list[dict]:
    """Normalised holiday entries ``{"date", "before", "after"}``: ``date`` is ``MM-DD`` (every year) or
    ``YYYY-MM-DD`` (once); the effect covers ``before`` days before the date to ``after`` days after it. A plain
    string is a date with before = after = 0."""
    out = []
    for i, h in enumerate(holidays or []):
        entry = {"date": h, "before": 0, "after": 0} if isinstance(h, str) else dict(h)
        date = str(entry.get("date", ""))
        try:
            np.datetime64(date if len(date) == 10 else f"2000-{date}", "D")
        except ValueError:
            raise ValueError(f"holidays[{i}]: date {date!r} must be MM-DD (every year) or YYYY-MM-DD (once)") from None
        before, after = int(entry.get("before", 0)), int(entry.get("after", 0))
        if before < 0 or after < 0:
            raise ValueError(f"holidays[{i}]: before and after must be >= 0 days, got {before}, {after}")
        out.append({"date": date, "before": before, "after": after})
    return out


def calendar_design(day: np.ndarray, order: int, holidays: list[dict]) -> np.ndarray:
    """``[len(day), 2 * order + len(holidays)]``: cos/sin of the day-of-year phase (harmonics 1..order) and one
    0/1 column per holiday span. ``day``: whole days since 1970-01-01 (UTC)."""
    d = np.asarray(day, np.int64).astype("datetime64[D]")
    year = d.astype("datetime64[Y]")
    phase = 2 * np.pi * (d - year.astype("datetime64[D]")).astype(np.float64) / YEAR_DAYS
    cols = [f(k * phase) for k in range(1, order + 1) for f in (np.cos, np.sin)]
    years = year.astype(np.int64) + 1970
    for h in holidays:
        if len(h["date"]) == 10:
            centre = np.full(len(d), np.datetime64(h["date"], "D"))
        else:  # the holiday of this day's year, or of the next / previous one when the span crosses new year
            at = lambda y: (np.char.add((y).astype(str), "-" + h["date"])).astype("datetime64[D]")  # noqa: E731
            centre = at(years)
            nearer = [at(years + 1), at(years - 1)]
            for other in nearer:
                centre = np.where(np.abs((other - d).astype(np.int64)) < np.abs((centre - d).astype(np.int64)), other, centre)
        off = (d - centre).astype(np.int64)
        cols.append(((off >= -h["before"]) & (off <= h["after"])).astype(np.float64))
    return np.stack(cols, 1) if cols else np.zeros((len(d), 0))


class Calendar:
    """Daily multipliers of the purchase rate (``kind="count"``) and of the spend per purchase day (``"spend"``)
    from a fitted spec (``twins.models.btyd.SeasonalBetaGeoModel.calendar_``): log multiplier = design · coefs +
    offset. An empty spec, or one without coefficients (history shorter than a year), is flat: every
    multiplier 1."""

    def __init__(self, spec: dict | None) -> None:
        self.spec = dict(spec or {})
        self.order = int(self.spec.get("order", 0))
        self.holidays = holiday_spans(self.spec.get("holidays", []))
        self.fitted = "count" in self.spec

    def daily(self, day: np.ndarray, kind: str = "count") -> np.ndarray:
        """Multiplier of each whole day ``day`` (days since 1970-01-01)."""
        day = np.asarray(day, np.int64)
        if not self.fitted or kind not in self.spec:
            return np.ones(len(day))
        coefs = np.asarray(self.spec[kind], np.float64)
        return np.exp(calendar_design(day, self.order, self.holidays) @ coefs + float(self.spec[f"{kind}_offset"]))

    def weekly(self, start_day: float, weeks: int, kind: str = "count") -> np.ndarray:
        """``[weeks]``: mean multiplier of the days of each week from ``start_day`` (the cut-off's day)."""
        first = int(np.floor(start_day))
        return self.daily(np.arange(first, first + 7 * weeks), kind).reshape(weeks, 7).mean(1)

    def warp(self, t_days: np.ndarray) -> np.ndarray:
        """Calendar time in weeks (Σ of the daily multipliers / 7) from day 0 of ``t_days``' range to each of
        ``t_days`` (fractional days count the started day's share): differences of it replace elapsed weeks."""
        t = np.asarray(t_days, np.float64)
        if not self.fitted or not len(t):
            return t / 7.0
        lo, hi = int(np.floor(t.min())), int(np.floor(t.max()))
        s = self.daily(np.arange(lo, hi + 1))
        cum = np.r_[0.0, np.cumsum(s)]
        i = np.floor(t).astype(np.int64) - lo
        return (cum[i] + (t - np.floor(t)) * s[i] + lo) / 7.0

    def unwarp(self, start_day: float, weeks: np.ndarray, max_days: int = 36_525) -> np.ndarray:
        """Real days from ``start_day`` after which ``weeks`` calendar weeks have passed (inf beyond
        ``max_days``): turns waiting times in calendar time back into dates."""
        w = np.asarray(weeks, np.float64)
        if not self.fitted:
            return 7.0 * w
        first = int(np.floor(start_day))
        frac = start_day - first
        s = self.daily(np.arange(first, first + max_days + 1))
        cum = np.r_[0.0, np.cumsum(s)]
        target = 7.0 * w + frac * s[0]
        real = np.interp(np.where(np.isfinite(target), target, 0.0), cum, np.arange(len(cum), dtype=np.float64)) - frac
        return np.where(np.isfinite(target) & (target <= cum[-1]), real, np.inf)

    def past_features(self, cutoff_day: float) -> np.ndarray:
        """Mean count multiplier over the last w weeks before the cut-off, w in ``CAL_WINDOWS``."""
        first = int(np.floor(cutoff_day))
        s = self.daily(np.arange(first - 7 * max(CAL_WINDOWS), first))
        return np.array([s[-7 * w:].mean() for w in CAL_WINDOWS])


def calendar_summary(calendar: Calendar, row: np.ndarray, day: np.ndarray, spend: np.ndarray, n_rows: int,
                     cutoff_day: float, horizon_days: float) -> dict[str, np.ndarray | float]:
    """The BTYD summary in calendar time of purchase days (``row``, whole ``day`` since 1970-01-01, net
    ``spend``) before ``cutoff_day``: ``x`` repeat days, ``t_x`` and ``T`` (calendar weeks from the first day to
    the last / to the cut-off), ``m`` (mean repeat-day spend divided by the day's spend multiplier, floored at 0),
    ``t`` (calendar weeks of the horizon) and ``spend_scale`` (the horizon's spend multiplier, weighted by its
    count multipliers). With a flat calendar these are the plain summary's values. Rows without a purchase day
    are zeros (a new customer)."""
    row, day, spend = np.asarray(row, np.int64), np.asarray(day, np.float64), np.asarray(spend, np.float64)
    n = np.bincount(row, minlength=n_rows)
    first, last = np.full(n_rows, np.inf), np.full(n_rows, -np.inf)
    np.minimum.at(first, row, day)
    np.maximum.at(last, row, day)
    known = n > 0
    first, last = np.where(known, first, cutoff_day), np.where(known, last, cutoff_day)
    end = cutoff_day + horizon_days
    c_first, c_last, c_cut, c_end = np.split(calendar.warp(np.r_[first, last, cutoff_day, end]), [n_rows, 2 * n_rows, 2 * n_rows + 1])
    x = np.maximum(n - 1, 0).astype(np.float64)
    repeat = day > first[row]
    adjusted = spend / calendar.daily(day.astype(np.int64), "spend") if len(day) else spend
    # several units (orders) on the first day: all but one are repeats, each worth that day's mean
    n_first = np.bincount(row, ~repeat, n_rows)
    first_total = np.bincount(row, adjusted * ~repeat, n_rows)
    repeat_total = np.bincount(row, adjusted * repeat, n_rows) + first_total * (n_first - 1) / np.maximum(n_first, 1)
    m = np.where(x > 0, repeat_total / np.maximum(x, 1), 0.0)
    horizon = np.arange(int(np.floor(cutoff_day)), int(np.ceil(end)))
    s = calendar.daily(horizon)
    return {"x": x, "t_x": np.where(known, c_last - c_first, 0.0), "T": np.where(known, c_cut[0] - c_first, 0.0),
            "m": np.maximum(m, 0.0), "t": float(c_end[0] - c_cut[0]),
            "spend_scale": float((s * calendar.daily(horizon, "spend")).sum() / s.sum())}


CAL_WEEKS = 261  # weeks of calendar multipliers the neural outlook's graph takes (its waiting times look 260 ahead)


def calendar_inputs(calendar: Calendar, x: np.ndarray, cutoff_day: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The neural outlook's inputs at a cut-off besides the horizon: the features ``x`` (with the calendar's
    ``past_features`` appended when it is fitted), and ``[rows, CAL_WEEKS]`` count and spend multipliers of the
    weeks after the cut-off (ones for a flat calendar); one cut-off, so those two are one row repeated, as
    read-only views (no memory per row: 4 GiB at a million customers as copies)."""
    rows = len(x)
    if calendar.fitted:
        x = np.concatenate([x, np.tile(calendar.past_features(cutoff_day), (rows, 1))], 1).astype(np.float32)
    repeat = lambda v: np.broadcast_to(v, (rows, len(v)))  # noqa: E731
    return x, repeat(calendar.weekly(cutoff_day, CAL_WEEKS)), repeat(calendar.weekly(cutoff_day, CAL_WEEKS, "spend"))


# --- customer covariates (time-invariant attributes) --------------------------------------------------------------

MAX_LEVELS = 20  # a categorical covariate keeps its most frequent levels; the others read as unknown


def _number(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def covariate_spec(names: list[str], attributes: list[dict]) -> list[dict]:
    """How each covariate ``names`` is encoded, from the training customers' ``attributes`` (one dict per
    customer, missing keys or None = unknown): ``numeric`` when every known value is a number, else
    ``category`` with its most frequent ``levels`` (at most ``MAX_LEVELS``)."""
    spec = []
    for name in names:
        known = [a.get(name) for a in attributes if a and a.get(name) is not None]
        if not known:
            raise ValueError(f"covariate {name!r}: no customer has a value; check the source's customer_attributes columns")
        if all(_number(v) is not None for v in known):
            spec.append({"name": name, "kind": "numeric"})
        else:
            values, counts = np.unique(np.array([str(v) for v in known]), return_counts=True)
            levels = values[np.argsort(-counts, kind="stable")][:MAX_LEVELS]
            spec.append({"name": name, "kind": "category", "levels": sorted(levels.tolist())})
    return spec


def covariate_names(spec: list[dict]) -> list[str]:
    """The columns ``covariate_features`` writes."""
    out = []
    for c in spec:
        out += [c["name"]] if c["kind"] == "numeric" else [f"{c['name']}={v}" for v in c["levels"]]
        out.append(f"{c['name']}_missing")
    return out


def covariate_features(spec: list[dict], attributes: list[dict | None]) -> np.ndarray:
    """``[len(attributes), len(covariate_names(spec))]`` float32: a numeric value (0 when unknown) or one-hot levels
    (all 0 for an unseen level), and a missing flag per covariate."""
    cols = []
    for c in spec:
        values = [(a or {}).get(c["name"]) for a in attributes]
        missing = np.array([v is None or (c["kind"] == "numeric" and _number(v) is None) for v in values], np.float64)
        if c["kind"] == "numeric":
            cols.append(np.array([_number(v) or 0.0 for v in values]))
        else:
            text = np.array(["" if v is None else str(v) for v in values])
            cols += [(text == level).astype(np.float64) for level in c["levels"]]
        cols.append(missing)
    return (np.stack(cols, 1) if cols else np.zeros((len(attributes), 0))).astype(np.float32)
