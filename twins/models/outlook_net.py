"""The neural purchase outlook: how many purchase days, how much spend, P(>= 1 purchase), P(alive) and the time
to the next purchase, for any horizon in weeks.

An MLP maps a customer's purchase-day features (``twins.runtime.outlook_features``) to the parameters of an
individual purchase process, in weeks from the cut-off:

- alive at the cut-off with probability ``pi``; an alive customer stays alive each further week with
  probability ``s``, so the weeks alive in a horizon of h weeks, L, are P(L = l) = s^l (1 − s) for l < h and
  P(L = h) = s^h;
- while alive, purchase days come at rate ``lam`` a week, with Gamma(kappa) uncertainty about that rate: the
  count in l weeks is negative binomial with mean lam·l and shape ``kappa``;
- a purchase day is worth ``mu`` on average (Gamma with shape ``nu`` a day).

It is trained on the calibration period alone: the cut-off is moved back one week at a time, and the purchase-day
count and spend in the window after each moved cut-off (the horizon, or as much of it as the calibration period
holds, and shorter ``sub_horizons`` windows) are scored by the exact likelihood of that process. Since
the horizon only enters through the closed forms, the model answers for horizons longer than any window it saw
(the BTYD models' strength), while the MLP sees more of the history than (x, t_x, T): recent windows, gaps,
spend. Several members with their own seeds and validation customers are averaged (``n_members``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Self

import numpy as np
import polars as pl
import torch
from sklearn.base import BaseEstimator
from torch import nn

from twins.runtime.outlook import MAX_HORIZON_WEEKS, NET_OUTPUTS, check_horizon_weeks
from twins.runtime.outlook_features import CAL_WEEKS, Calendar, calendar_inputs, features
from twins.training import autocast_enabled, pick_device, progress

DAY_US = 86_400 * 1_000_000
MAX_WAIT_WEEKS = 260  # the waiting-time quantiles are looked for within 5 years
PREDICT_ROWS = 16_384  # rows scored at once by predict (each holds [rows, 261] float64 waiting-time curves)
MAX_ROWS = 2_000_000  # training windows a fit builds by default: a seeded sample beyond (bounds its memory and epochs)


class OutlookNet(nn.Module):
    """Standardised features -> (pi, lam, hazard, kappa, mu, nu), one row per customer."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, hidden: int = 64, spend_scale: float = 1.0) -> None:
        super().__init__()
        n_in = len(mean)
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.register_buffer("log_spend", torch.tensor(math.log(max(spend_scale, 1e-6))))
        self.body = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 6))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        o = self.body((x - self.mean) / self.std)
        pi = torch.sigmoid(o[:, 0] + 2.0)
        lam = torch.exp(torch.clamp(o[:, 1] - 1.0, -12.0, 4.0))
        hazard = nn.functional.softplus(o[:, 2] - 4.0) + 1e-6        # weekly dropout hazard: s = exp(-hazard)
        kappa = torch.exp(torch.clamp(o[:, 3], -5.0, 6.0))
        mu = torch.exp(torch.clamp(o[:, 4] + self.log_spend, -10.0, 15.0))
        nu = torch.exp(torch.clamp(o[:, 5], -4.0, 6.0))
        return pi, lam, hazard, kappa, mu, nu


# --- the process: likelihood and closed forms ------------------------------------------------------------------


def nb_log_pmf(n: torch.Tensor, mean: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """log P(N = n) of a negative binomial with ``mean`` > 0 and ``shape`` (Gamma-Poisson)."""
    return (torch.lgamma(n + shape) - torch.lgamma(shape) - torch.lgamma(n + 1)
            + shape * (torch.log(shape) - torch.log(shape + mean)) + n * (torch.log(mean) - torch.log(shape + mean)))


def lifetime_log_probs(pi: torch.Tensor, hazard: torch.Tensor, h: torch.Tensor, l_max: int) -> torch.Tensor:
    """``[batch, l_max + 1]``: log P(alive weeks in the horizon = l), l = 0..l_max (−inf beyond each row's h);
    the customer dead at the cut-off sits at l = 0."""
    l = torch.arange(l_max + 1, dtype=hazard.dtype, device=hazard.device)
    log_s, log_1ms = -hazard[:, None], torch.log(-torch.expm1(-hazard))[:, None]
    lp = torch.where(l < h[:, None], l * log_s + log_1ms, l * log_s) + torch.log(pi)[:, None]
    lp = torch.where(l > h[:, None], torch.full_like(lp, -torch.inf), lp)
    dead_now = torch.logaddexp(lp[:, 0], torch.log1p(-pi))
    return torch.cat([dead_now[:, None], lp[:, 1:]], 1)


def calendar_weeks(cal: torch.Tensor | None, l_max: int, like: torch.Tensor) -> torch.Tensor:
    """``[batch or 1, l_max + 1]``: calendar weeks in the first l weeks after the cut-off (Σ of the weekly
    multipliers ``cal`` [batch, >= l_max]), l = 0..l_max; without a calendar simply l."""
    if cal is None:
        return torch.arange(l_max + 1, dtype=like.dtype, device=like.device)[None, :]
    return torch.cat([torch.zeros_like(cal[:, :1]), torch.cumsum(cal[:, :l_max], 1)], 1).to(like.dtype)


def count_nll(params: tuple[torch.Tensor, ...], count: torch.Tensor, h: torch.Tensor,
              cal: torch.Tensor | None = None) -> torch.Tensor:
    """−log P(count purchase days in h weeks), per row; ``cal``: weekly rate multipliers after the cut-off."""
    pi, lam, hazard, kappa = params[:4]
    l_max = int(h.max())
    lp = lifetime_log_probs(pi, hazard, h, l_max)
    l = torch.arange(l_max + 1, dtype=lam.dtype, device=lam.device)
    mean = (lam[:, None] * calendar_weeks(cal, l_max, lam)).clamp_min(1e-12)
    n = count[:, None].expand_as(mean)
    ln = nb_log_pmf(n, mean, kappa[:, None].expand_as(mean))
    ln = torch.where(l == 0, torch.where(n == 0, 0.0, -torch.inf), ln)
    return -torch.logsumexp(lp + ln, 1)


def spend_nll(params: tuple[torch.Tensor, ...], count: torch.Tensor, spend: torch.Tensor) -> torch.Tensor:
    """−log density of a window's spend given its count (> 0): Gamma(count·nu, mean count·mu)."""
    mu, nu = params[4], params[5]
    shape = count * nu
    rate = nu / mu
    return -(shape * torch.log(rate) - torch.lgamma(shape) + (shape - 1) * torch.log(spend) - rate * spend)


def expected_weeks_alive(hazard: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """E[L | alive at the cut-off] = sum_{l=1..h} s^l."""
    return -torch.expm1(-hazard * h) / torch.expm1(hazard)


def expected_calendar_weeks(hazard: torch.Tensor, h: torch.Tensor, cal: torch.Tensor) -> torch.Tensor:
    """sum_{j=1..h} s^j cal_j: the calendar weeks a customer alive at the cut-off is expected to be alive for."""
    j = torch.arange(1, cal.shape[1] + 1, dtype=hazard.dtype, device=hazard.device)
    weight = torch.where(j[None, :] <= h[:, None], torch.exp(-hazard[:, None] * j), torch.zeros_like(cal))
    return (weight * cal).sum(1)


def p_none(params: tuple[torch.Tensor, ...], h: torch.Tensor, l_max: int, cal: torch.Tensor | None = None) -> torch.Tensor:
    """P(no purchase day in h weeks); ``l_max`` >= every h."""
    pi, lam, hazard, kappa = params[:4]
    lp = lifetime_log_probs(pi, hazard, h, l_max)
    l = calendar_weeks(cal, l_max, lam)
    log_zero = kappa[:, None] * (torch.log(kappa[:, None]) - torch.log(kappa[:, None] + lam[:, None] * l))
    return torch.exp(torch.logsumexp(lp + log_zero, 1))


def wait_survival(params: tuple[torch.Tensor, ...], weeks: int = MAX_WAIT_WEEKS, cal: torch.Tensor | None = None) -> torch.Tensor:
    """``[batch, weeks + 1]``: P(no purchase day in the first w weeks | alive at the cut-off), w = 0..weeks."""
    _, lam, hazard, kappa = params[:4]
    w = torch.arange(weeks + 1, dtype=lam.dtype, device=lam.device)
    cw = calendar_weeks(cal, weeks, lam)
    log_zero = kappa[:, None] * (torch.log(kappa[:, None]) - torch.log(kappa[:, None] + lam[:, None] * cw))
    log_dead_at = -hazard[:, None] * w + torch.log(-torch.expm1(-hazard))[:, None]  # P(L = l), l = w
    # dies in week l < w: no purchase with l alive weeks; alive through w: no purchase in w weeks
    died = torch.cumsum(torch.exp(log_dead_at + log_zero), 1) - torch.exp(log_dead_at + log_zero)
    return died + torch.exp(-hazard[:, None] * w + log_zero)


@dataclass(frozen=True)
class Windows:
    """Training rows: features as of a moved cut-off and what followed in ``h`` weeks."""

    x: np.ndarray
    count: np.ndarray
    spend: np.ndarray
    h: np.ndarray
    customer: np.ndarray  # customer code, for splitting by customer
    weeks_back: np.ndarray  # how far the cut-off was moved


def day_table(days: pl.DataFrame | pl.LazyFrame, cutoff: datetime) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(customer ids sorted, customer code, age in days at ``cutoff`` (negative after it), net spend) of every
    purchase day of a ``twins.evaluate.outlook.purchase_days`` table."""
    cutoff = cutoff if cutoff.tzinfo else cutoff.replace(tzinfo=timezone.utc)
    df = days.lazy().select("customer_id", "day", "spend").collect()
    ids = df["customer_id"].unique().sort()
    code = df["customer_id"].cast(pl.Enum(ids)).to_physical().to_numpy().astype(np.int64)
    age = (cutoff - df["day"]).dt.total_microseconds().to_numpy() / DAY_US
    return ids.to_list(), code, age, df["spend"].to_numpy().astype(np.float64)


def _blocks(oldest: np.ndarray, horizon_weeks: int, max_windows: int, min_history_weeks: int,
            sub_horizons: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(weeks moved k, window h, rows) of each block of training windows, in ``training_windows``' order;
    ``oldest``: the age of each customer code's oldest purchase day (0 without one)."""
    blocks, by_age = [], np.sort(oldest)
    for k in range(1, max_windows + 1):
        shift = 7.0 * k
        if by_age[-1] - shift < 7.0 * min_history_weeks:
            break
        seen = len(by_age) - int(np.searchsorted(by_age, shift, "right"))  # customers with a day before the moved cut-off
        longest = min(horizon_weeks, k)
        blocks += [(k, h, seen) for h in sorted({longest, *(v for v in sub_horizons if v < longest)})]
    return blocks


def _oldest(code: np.ndarray, age: np.ndarray) -> np.ndarray:
    """The age of each customer code's oldest purchase day (0 for a code without one)."""
    oldest = np.zeros(int(code.max()) + 1)
    np.maximum.at(oldest, code, age)
    return oldest


def count_windows(code: np.ndarray, age: np.ndarray, horizon_weeks: int, max_windows: int = 52,
                  min_history_weeks: int = 4, sub_horizons: tuple[int, ...] = (4, 13)) -> int:
    """How many rows ``training_windows`` has (before any sampling), from the customers' oldest days alone."""
    before = age > 0
    if not before.any():
        return 0
    oldest = _oldest(code[before], age[before])
    return sum(n for *_, n in _blocks(oldest, horizon_weeks, max_windows, min_history_weeks, tuple(sub_horizons)))


def _ranges(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """The concatenated index ranges ``start[i]:stop[i]``."""
    n = stop - start
    return np.repeat(start - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))


def training_windows(code: np.ndarray, age: np.ndarray, spend: np.ndarray, horizon_weeks: int,
                     max_windows: int = 52, min_history_weeks: int = 4, sub_horizons: tuple[int, ...] = (4, 13),
                     max_rows: int | None = None, seed: int = 0) -> Windows:
    """Move the cut-off back 1, 2, ... weeks (at most ``max_windows``, keeping ``min_history_weeks`` of data
    before it); each customer seen before a moved cut-off gives a row: features then, and the purchase days and
    spend in the following min(horizon, weeks moved) weeks; and a row for each shorter window in
    ``sub_horizons`` (they teach the time curve and the latest spend level). Only purchase days before the real
    cut-off (age > 0) are used. Rows come by weeks moved, then window, then customer code.

    With more rows than ``max_rows``, a seeded uniform sample of that many, in the same order
    (``np.random.default_rng(seed).choice(rows, max_rows, replace=False)``, sorted), built without the others: the
    layout is counted from each customer's oldest day, and each moved cut-off's features are computed for the
    sampled customers only, so memory is linear in the sample plus the purchase days."""
    before = age > 0
    code, age, spend = code[before], age[before], spend[before]
    if not len(age):
        raise ValueError("no purchase day before the cut-off: nothing to train the outlook on")
    blocks = _blocks(_oldest(code, age), horizon_weeks, max_windows, min_history_weeks, tuple(sub_horizons))
    if not blocks:
        raise ValueError(f"fewer than {min_history_weeks + 1} weeks of purchase days before the cut-off: "
                         "no window to train the outlook on")
    offsets = np.cumsum([0] + [n for *_, n in blocks])
    keep = None
    if max_rows is not None and offsets[-1] > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(int(offsets[-1]), int(max_rows), replace=False))
    order = np.argsort(code, kind="stable")  # each customer's days together, in their given order
    code, age, spend = code[order], age[order], spend[order]
    oldest = _oldest(code, age)
    bounds = np.searchsorted(code, np.arange(len(oldest) + 1))
    rows: list[Windows] = []
    for k in sorted({k for k, *_ in blocks}):
        shift = 7.0 * k
        seen = np.flatnonzero(oldest > shift).astype(code.dtype)
        picked = {}
        for b, (kb, h, _) in enumerate(blocks):
            if kb == k:
                lo, hi = offsets[b], offsets[b + 1]
                picked[h] = (np.arange(hi - lo) if keep is None
                             else keep[np.searchsorted(keep, lo):np.searchsorted(keep, hi)] - lo)
        need = seen if keep is None else np.unique(seen[np.concatenate(list(picked.values()))])
        if not len(need):
            continue
        days = _ranges(bounds[need], bounds[need + 1])
        row = np.repeat(np.arange(len(need)), bounds[need + 1] - bounds[need])
        a, s = age[days], spend[days]
        hist = a > shift
        x = features(row[hist], a[hist] - shift, s[hist], len(need))
        for h, pos in picked.items():
            future = ~hist & (a > shift - 7.0 * h)
            count = np.bincount(row[future], None, len(need))
            total = np.bincount(row[future], s[future], len(need))
            at = np.searchsorted(need, seen[pos])
            rows.append(Windows(x[at], count[at], total[at], np.full(len(pos), float(h)), seen[pos],
                                np.full(len(pos), float(k))))
    return Windows(*(np.concatenate([getattr(w, f) for w in rows]) for f in ("x", "count", "spend", "h", "customer", "weeks_back")))


class NeuralOutlook(BaseEstimator):
    """Neural purchase-process outlook (module docstring); scikit-learn's estimator contract.

    ``fit(code, age, spend, horizon_weeks, cutoff_day)`` takes every purchase day (customer code, age in days at
    the cut-off, net spend; rows at or after the cut-off are ignored) and the cut-off's date (days since
    1970-01-01): with ``seasonal`` and at least a year of history, a calendar (``SeasonalBetaGeoModel``'s:
    day-of-year terms of ``calendar_order`` harmonics and the ``holidays`` spans) scales every window's purchase
    rate and spend per day week by week, and its mean over recent weeks is a feature, so the network learns the
    deseasonalised level and the horizon's calendar extrapolates it; ``calendar_["status"]`` says whether it was
    fitted. ``predict(x, horizon_weeks, cal, spend_cal)`` takes ``inputs_at``'s arrays. ``max_rows``: train on a
    seeded sample of that many training windows when there are more (``training_windows``: only the sample is
    built, so time and memory follow ``max_rows`` and the purchase days, not the customers x weeks); by default
    ``MAX_ROWS``, above every benchmark's count (CDNOW's 1.85M), so a million-customer log (91M windows) fits in
    memory; None builds them all. ``precision``:
    ``"fp32"`` (the likelihood needs it; the network is small), or ``"bf16"`` autocast of the network's steps
    (``twins.training.autocast_enabled``; the likelihood still runs in fp32)."""

    def __init__(self, hidden: int = 64, n_members: int = 5, max_epochs: int = 30, patience: int = 4,
                 batch_size: int = 1024, lr: float = 2e-3, weight_decay: float = 1e-5, max_windows: int = 52,
                 sub_horizons: tuple[int, ...] = (4, 13), val_share: float = 0.1, seasonal: bool = True,
                 calendar_order: int = 3, holidays: tuple = (), max_rows: int | None = MAX_ROWS, seed: int = 0,
                 device: str | None = None, precision: str = "fp32", verbose: bool = False) -> None:
        self.hidden = hidden
        self.n_members = n_members
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_windows = max_windows
        self.sub_horizons = sub_horizons
        self.val_share = val_share
        self.seasonal = seasonal
        self.calendar_order = calendar_order
        self.holidays = holidays
        self.max_rows = max_rows
        self.seed = seed
        self.device = device
        self.precision = precision
        self.verbose = verbose

    def fit(self, code: np.ndarray, age: np.ndarray, spend: np.ndarray, horizon_weeks: int,
            cutoff_day: float | None = None, covariates: np.ndarray | None = None) -> Self:
        """``covariates``: ``[customer codes, k]`` time-invariant customer features
        (``twins.runtime.outlook_features.covariate_features``), appended to every window of that customer."""
        code, age, spend = np.asarray(code), np.asarray(age, float), np.asarray(spend, float)
        if not len(code) == len(age) == len(spend):
            raise ValueError(f"code, age and spend need one entry per purchase day; got {len(code)}, {len(age)}, {len(spend)}")
        if not (np.issubdtype(code.dtype, np.integer) and (code >= 0).all()):
            raise ValueError("code must hold non-negative integer customer codes (twins.models.outlook_net.day_table)")
        bad = np.flatnonzero(~np.isfinite(age) | ~np.isfinite(spend))
        if len(bad):
            raise ValueError(f"{len(bad)} purchase days have a non-finite age or spend (first at row {bad[0]}); drop or fix them")
        check_horizon_weeks(horizon_weeks)
        w = training_windows(code, age, spend, int(horizon_weeks), self.max_windows, sub_horizons=tuple(self.sub_horizons),
                             max_rows=self.max_rows, seed=self.seed)
        device = pick_device(self.device)
        self.calendar_ = self._fit_calendar(code, age, spend, cutoff_day)
        calendar = Calendar(self.calendar_)
        self._cal = self._scal = None
        x = w.x
        self.n_covariates_ = 0 if covariates is None else int(np.shape(covariates)[1])
        if covariates is not None:
            covariates = np.asarray(covariates, np.float32)
            if len(covariates) <= int(code.max()):
                raise ValueError(f"covariates has {len(covariates)} rows; it needs one per customer code (0..{int(code.max())})")
            x = np.concatenate([x, covariates[w.customer]], 1)
        if calendar.fitted:
            shifts = np.arange(int(w.weeks_back.max()) + 1)
            starts = cutoff_day - 7.0 * shifts
            k = w.weeks_back.astype(np.int64)
            x = np.concatenate([x, np.stack([calendar.past_features(d) for d in starts])[k]], 1).astype(np.float32)
            n = int(w.h.max())
            self._cal = torch.tensor(np.stack([calendar.weekly(d, n) for d in starts]), device=device)
            self._scal = torch.tensor(np.stack([calendar.weekly(d, n, "spend") for d in starts]), device=device)
        x = torch.tensor(x, device=device)
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        bought = (w.count > 0) & (w.spend > 0)
        spend_scale = float(w.spend[bought].sum() / w.count[bought].sum()) if bought.any() else 1.0
        data = [torch.tensor(v, dtype=torch.float32, device=device) for v in (w.count, w.spend, w.h)]
        data.append(torch.tensor(w.weeks_back, dtype=torch.int64, device=device))
        self.members_, self.history_ = [], []
        for m in range(self.n_members):
            rng = np.random.default_rng(self.seed + m)
            val_customers = rng.random(int(w.customer.max()) + 1) < self.val_share
            val = torch.tensor(val_customers[w.customer], device=device)
            torch.manual_seed(self.seed + m)
            net = OutlookNet(mean, std, self.hidden, spend_scale).to(device)
            best, log = self._train(net, x, data, val, rng)
            self.members_.append(best.cpu().eval())
            self.history_.append(log)
        if self._cal is not None:  # with the members, on the CPU (on CUDA the spend factor mixed the devices)
            self._cal, self._scal = self._cal.cpu(), self._scal.cpu()
        self.spend_factor_ = self._spend_factor(w, x.cpu(), data[3].cpu(), int(horizon_weeks))
        self._cal = self._scal = None
        self.n_windows_ = len(w.count)
        self.day_spend_ = float(np.maximum(spend[age > 0], 0.0).mean())
        self.horizon_weeks_ = int(horizon_weeks)
        return self

    def _train(self, net: OutlookNet, x: torch.Tensor, data: list[torch.Tensor], val: torch.Tensor,
               rng: np.random.Generator) -> tuple[OutlookNet, list[float]]:
        """Adam on the mean negative log-likelihood; the member keeps its best validation epoch."""
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        train_rows = torch.nonzero(~val).squeeze(1)
        amp = autocast_enabled(self.precision, x.device)
        best, best_loss, log, stale = copy.deepcopy(net), math.inf, [], 0
        for epoch in range(self.max_epochs):
            net.train()
            perm = train_rows[torch.as_tensor(rng.permutation(len(train_rows)), device=x.device)]
            batches = list(perm.split(self.batch_size))
            for i in progress(batches, f"outlook epoch {epoch + 1}", self.verbose):
                with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = self._loss(net, x[i], *(d[i] for d in data))
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                net.eval()
                v = float(self._loss(net, x[val], *(d[val] for d in data))) if val.any() else float(loss)
            log.append(v)
            if v < best_loss - 1e-5:
                best, best_loss, stale = copy.deepcopy(net), v, 0
            else:
                stale += 1
                if stale >= self.patience:
                    break
        return best, log

    def _fit_calendar(self, code: np.ndarray, age: np.ndarray, spend: np.ndarray, cutoff_day: float | None) -> dict:
        """The calendar spec (``SeasonalBetaGeoModel``'s) learnt from the purchase days before the cut-off, or a
        flat one with its reason."""
        if not self.seasonal:
            return {"status": "flat: seasonal=False"}
        if cutoff_day is None:
            return {"status": "flat: fit() got no cutoff_day, so no dates to learn a calendar from"}
        from twins.models.btyd import SeasonalBetaGeoModel

        before = age > 0
        day = np.round(cutoff_day - age[before]).astype(np.int64)
        model = SeasonalBetaGeoModel(self.calendar_order, tuple(self.holidays))
        return model.fit(code[before], day, spend[before], cutoff_day).calendar_

    def _window_calendar(self, k: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | float]:
        """(weekly rate multipliers of rows' windows, their spend multiplier over the window weighted by rate)."""
        if self._cal is None:
            return None, 1.0
        cal, scal = self._cal[k], self._scal[k]
        inside = torch.arange(1, cal.shape[1] + 1, device=cal.device)[None, :] <= h[:, None]
        weight = torch.where(inside, cal, torch.zeros_like(cal))
        return cal, ((weight * scal).sum(1) / weight.sum(1)).float()

    def _spend_factor(self, w: Windows, x: torch.Tensor, k: torch.Tensor, horizon_weeks: int) -> float:
        """Sum of spend over sum of purchase days x predicted spend per day, over the windows of the last
        horizon before the cut-off: puts the spend per day at its latest level (spend drifts, e.g. with
        prices), which the windows further back, most of the training rows, pull away from."""
        rows = (w.weeks_back <= horizon_weeks) & (w.count > 0)
        if not rows.any():
            return 1.0
        with torch.no_grad():
            mu = torch.stack([net(x[rows])[4] for net in self.members_]).mean(0)
            mu = (mu * self._window_calendar(k[rows], torch.as_tensor(w.h[rows]))[1]).double().numpy()
        return float(w.spend[rows].sum() / (w.count[rows] * mu).sum())

    def _loss(self, net: OutlookNet, x: torch.Tensor, count: torch.Tensor, spend: torch.Tensor, h: torch.Tensor,
              k: torch.Tensor) -> torch.Tensor:
        params = tuple(p.float() for p in net(x))  # in fp32 under autocast too
        cal, spend_scale = self._window_calendar(k, h)
        loss = count_nll(params, count, h, cal).sum()
        bought = (count > 0) & (spend > 0)
        if bought.any():
            params = (*params[:4], params[4] * spend_scale, params[5])
            loss = loss + spend_nll(tuple(p[bought] for p in params), count[bought], spend[bought]).sum()
        return loss / len(count)

    def inputs_at(self, code: np.ndarray, age: np.ndarray, spend: np.ndarray, rows: np.ndarray,
                  cutoff_day: float | None = None, covariates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``predict``'s (x, cal, spend_cal) for customer codes ``rows`` at the cut-off (their ``covariates``, one
        row each, when the model was fitted with covariates; the fitted calendar's features and the weeks after
        ``cutoff_day``), as the runtime computes them."""
        if (covariates is None) != (self.n_covariates_ == 0):
            raise ValueError(f"the model was fitted with {self.n_covariates_} covariate columns; pass covariates with as many")
        x = features_at(code, age, spend, rows)
        if covariates is not None:
            x = np.concatenate([x, np.asarray(covariates, np.float32)], 1)
        return calendar_inputs(Calendar(self.calendar_), x, 0.0 if cutoff_day is None else cutoff_day)

    def predict(self, x: np.ndarray, horizon_weeks: float, cal: np.ndarray | None = None,
                spend_cal: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per row: ``expected_purchases``, ``expected_spend``, ``p_any_purchase`` in ``horizon_weeks``, ``p_alive``
        (at the cut-off), ``p_alive_end`` (still alive at the horizon's end: 1 − churn risk) and the time to the next
        purchase of a customer alive at the cut-off (``next_low`` / ``next_median`` / ``next_high``, weeks; inf when
        not within 5 years), averaged over the members. ``cal`` / ``spend_cal``: ``[rows, CAL_WEEKS]`` weekly
        multipliers after the cut-off (``inputs_at``; default flat)."""
        check_horizon_weeks(round(horizon_weeks))
        scorer = OutlookScorer(self.members_, self.spend_factor_)
        parts = []
        for s in range(0, max(len(x), 1), PREDICT_ROWS):
            part = slice(s, s + PREDICT_ROWS)
            ones = np.ones((len(x[part]), CAL_WEEKS))
            c, sc = (torch.as_tensor(np.array(ones if v is None else v[part], np.float64)) for v in (cal, spend_cal))
            with torch.no_grad():
                parts.append(scorer(torch.as_tensor(np.asarray(x[part], np.float64)),
                                    torch.full((len(c),), float(horizon_weeks), dtype=torch.float64), c, sc))
        return {name: np.concatenate([p[i].numpy() for p in parts]) for i, name in enumerate(NET_OUTPUTS)}


def _quantile_weeks(survival: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The first week w (linear between whole weeks) with 1 − survival(w) >= q; inf when never within the grid."""
    cdf = 1.0 - survival
    below = (cdf < q[:, None]).to(survival.dtype)
    k = below.sum(1)                                             # first grid week at or above q (cdf is monotone)
    last = survival.shape[1] - 1
    idx = k.clamp(max=last).long()
    lo = torch.gather(cdf, 1, (idx - 1).clamp_min(0)[:, None])[:, 0]
    hi = torch.gather(cdf, 1, idx[:, None])[:, 0]
    frac = torch.where(hi > lo, (q - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(q))
    weeks = (idx - 1).clamp_min(0).to(q.dtype) + frac.clamp(0, 1)
    return torch.where(k > last, torch.full_like(q, torch.inf), torch.where(k == 0, torch.zeros_like(q), weeks))


class OutlookScorer(nn.Module):
    """``forward(x, h, cal, spend_cal)``: float64 features ``[batch, N_FEATURES (+ the calendar's)]``, horizons in
    weeks ``[batch]`` (rounded, 1..``max_horizon_weeks``) and weekly rate and spend multipliers after the cut-off
    ``[batch, CAL_WEEKS]`` -> the ``NET_OUTPUTS``, averaged over float64 copies of the members (the waiting time
    from the averaged survival curve; ``interval`` central probability around the median); spend per purchase
    day is the members' times ``spend_factor`` (``NeuralOutlook.spend_factor_``)."""

    def __init__(self, members: list[OutlookNet], spend_factor: float = 1.0, interval: float = 0.8,
                 max_horizon_weeks: int = MAX_HORIZON_WEEKS) -> None:
        super().__init__()
        self.members = nn.ModuleList(copy.deepcopy(m).double() for m in members)
        self.spend_factor = spend_factor
        self.max_horizon_weeks = max_horizon_weeks
        self.quantiles = ((1 - interval) / 2, 0.5, (1 + interval) / 2)

    def forward(self, x: torch.Tensor, h: torch.Tensor, cal: torch.Tensor, spend_cal: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = torch.clamp(torch.round(h), 1.0, float(self.max_horizon_weeks))
        count = spend = p_any = p_alive = p_end = survival = 0.0
        near, spend_near = cal[:, : self.max_horizon_weeks], (cal * spend_cal)[:, : self.max_horizon_weeks]
        for net in self.members:
            params = net(x)
            pi, lam, hazard, _, mu, _ = params
            count = count + pi * lam * expected_calendar_weeks(hazard, h, near)
            spend = spend + pi * lam * expected_calendar_weeks(hazard, h, spend_near) * mu * self.spend_factor
            p_any = p_any + 1.0 - p_none(params, h, self.max_horizon_weeks, near)
            p_alive = p_alive + pi
            p_end = p_end + pi * torch.exp(-hazard * h)
            survival = survival + wait_survival(params, cal=cal[:, :MAX_WAIT_WEEKS])
        k = float(len(self.members))
        survival = survival / k
        waits = [_quantile_weeks(survival, torch.full_like(h, q)) for q in self.quantiles]
        return count / k, p_alive / k, p_any / k, spend / k, *waits, p_end / k


def horizon_weeks(horizon_days: float) -> int:
    """The whole number of weeks the neural outlook answers for (at least 1)."""
    return max(1, int(round(horizon_days / 7.0)))


def features_at(code: np.ndarray, age: np.ndarray, spend: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Features at the cut-off (age 0) of customer codes ``rows`` (in that order), from their purchase days."""
    index = np.full(int(max(code.max(initial=0), rows.max(initial=0))) + 1, -1)
    index[rows] = np.arange(len(rows))
    keep = (age > 0) & (index[code] >= 0)
    return features(index[code[keep]], age[keep], spend[keep], len(rows))
