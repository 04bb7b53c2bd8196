"""Buy-till-you-die models in PyTorch: BG/NBD, MBG/NBD and Gamma-Gamma, fitted by maximum likelihood.

- ``BetaGeoModel``: BG/NBD (Fader, Hardie & Lee, "Counting your customers the easy way", Marketing Science 2005).
  Repeat purchases follow a Poisson process with rate lambda ~ Gamma(r, alpha); after each repeat purchase the
  customer drops out with probability p ~ Beta(a, b).
- ``ModifiedBetaGeoModel``: MBG/NBD (Batislam, Denizel & Filiztekin, IJRM 2007; Wagner & Hoppe's erratum, 2008):
  as BG/NBD, but the customer may also drop out right after the first purchase (time 0), so a customer with no
  repeat purchase is not certainly alive.
- ``GammaGammaModel``: spend per transaction (Fader, Hardie & Lee, "RFM and CLV", JMR 2005): values ~ Gamma(p, nu)
  with nu ~ Gamma(q, gamma), independent of the purchase process.

Data are per customer: x = number of repeat purchases, t_x = time of the last purchase measured from the first,
T = time from the first purchase to the end of calibration, all in one time unit. Everything is float64 and runs
on ``device`` (cuda if available, else cpu). Methods accept numpy arrays, sequences or tensors and return a
tensor (on the model's device) if any input is a tensor, else a numpy array.

The conditional expectation needs the Gauss hypergeometric function. With the Euler transformation
2F1(a, b; c; z) = (1 - z)^(c-a-b) 2F1(c-a, c-b; c; z) the BG/NBD expectation becomes
C/(a-1) [1 - (1-z)^(a-1) 2F1(C-r-x, a-1; C; z)] P(alive), C = a+b+x-1 (+1 for MBG/NBD): the power no longer
depends on x and the series converges faster as x grows, so heavy buyers neither overflow nor give NaN. The
series is summed in log space (sign tracked separately) over a fixed number of terms, which keeps the scoring
module a static graph for ONNX. ``HYP2F1_TERMS`` = 256 terms give a relative error below 1e-12 against
``scipy.special.hyp2f1`` for z = t / (alpha + T + t) <= 0.75, i.e. horizons up to 3 (alpha + T) (checked in
tests/test_btyd.py: at most 2e-14); beyond that it grows fast (up to 1e-5 at z = 0.9 and 0.1 at 0.95 for the
worst parameters tried). ``expected_purchases`` therefore doubles the number of terms until the series' tail
estimate is below 1e-14 of the result (up to ``MAX_HYP2F1_TERMS``); the scoring module keeps the fixed ``n_terms``
it was built with (pass more for long horizons).
"""

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Self

import numpy as np
import torch
from torch import nn

from twins.runtime.outlook_features import (MIN_CALENDAR_WEEKS, Calendar, calendar_design, calendar_summary,
                                          holiday_spans)

ArrayLike = np.ndarray | torch.Tensor | Sequence[float] | float
Output = np.ndarray | torch.Tensor

HYP2F1_TERMS = 256
MAX_HYP2F1_TERMS = 1 << 17
LOG_BOUND = 30.0  # log-parameters are clamped to [-30, 30] so that the likelihood stays finite
MAX_LOG_SE = 10.0  # a parameter whose log has a larger standard error is not identified
BLOCK_ELEMENTS = 1 << 21  # rows x terms per block when summing the series (16 MiB per float64 temporary)


class ConvergenceError(RuntimeError):
    """Maximum-likelihood estimation failed; the message says which data problem is the likely cause."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- hypergeometric series ------------------------------------------------------------------------------------


def _series(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, z: torch.Tensor,
            n_terms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_{k=1..n} prod_{j=1..k-1} rho_j`` with ``rho_j = (a+j)(b+j) z / ((c+j)(j+1))``, for c > -1 and
    0 <= z < 1, and an estimate of the rest of the series (inf where it may not converge);
    ``2F1(a, b; c; z) = 1 + a b z / c * sum``. Summed in log space with the signs of (a+j)(b+j) counted apart."""
    j = torch.arange(1, n_terms, dtype=z.dtype, device=z.device)
    numerator = (a[..., None] + j) * (b[..., None] + j) / (j + 1)
    flips = torch.cumsum((numerator < 0).to(z.dtype), -1)
    sign = 1 - 2 * (flips - 2 * torch.floor(flips / 2))
    log_terms = (torch.cumsum(torch.log(torch.abs(numerator)), -1) + j * torch.log(z)[..., None]
                 - torch.cumsum(torch.log(c[..., None] + j), -1))
    terms = sign * torch.exp(log_terms)
    ratio = torch.maximum(torch.abs((a + n_terms) * (b + n_terms)) * z / ((c + n_terms) * (n_terms + 1)), z)
    tail = torch.where(ratio < 1, torch.abs(terms[..., -1]) * ratio / (1 - ratio), torch.full_like(ratio, torch.inf))
    return 1 + terms.sum(-1), tail


def hyp2f1(a: ArrayLike, b: ArrayLike, c: ArrayLike, z: ArrayLike, n_terms: int = HYP2F1_TERMS) -> torch.Tensor:
    """Gauss hypergeometric 2F1(a, b; c; z) for c > 0 and 0 <= z < 1, as
    (1 - z)^(c-a-b) 2F1(c-a, c-b; c; z) summed over ``n_terms`` terms (float64, broadcast)."""
    a, b, c, z = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64) for v in (a, b, c, z)))
    total, _ = _series(c - a, c - b, c, z, n_terms)
    return torch.pow(1 - z, c - a - b) * (1 + (c - a) * (c - b) * z / c * total)


# --- BG/NBD and MBG/NBD closed forms --------------------------------------------------------------------------

BG_PARAMS = ("r", "alpha", "a", "b")
GG_PARAMS = ("p", "q", "gamma")


def _bg_x_terms(theta: Sequence[torch.Tensor], x: torch.Tensor, modified: bool) -> torch.Tensor:
    """The part of the log-likelihood that depends on x only."""
    r, alpha, a, b = theta
    m = float(modified)
    return (torch.lgamma(r + x) - torch.lgamma(r) + r * torch.log(alpha)
            + torch.lgamma(a + b) + torch.lgamma(b + x + m) - torch.lgamma(b) - torch.lgamma(a + b + x + m))


def _log_odds_dead(theta: Sequence[torch.Tensor], x: torch.Tensor, t_x: torch.Tensor, T: torch.Tensor,
                   modified: bool) -> torch.Tensor:
    """log P(dropped out by T | history) / P(alive at T | history); -inf for BG/NBD customers with x == 0."""
    r, alpha, a, b = theta
    can_die = torch.ones_like(x, dtype=torch.bool) if modified else x > 0
    x_safe = torch.where(can_die, x, torch.ones_like(x))  # keeps log(b + x - 1) finite where it is not used
    odds = (torch.log(a) - torch.log(b + x_safe - 1 + float(modified))
            + (r + x) * (torch.log(alpha + T) - torch.log(alpha + t_x)))
    return torch.where(can_die, odds, torch.full_like(odds, -torch.inf))


def _bg_log_likelihood(theta: Sequence[torch.Tensor], x: torch.Tensor, t_x: torch.Tensor, T: torch.Tensor,
                       modified: bool, x_terms: torch.Tensor | None = None) -> torch.Tensor:
    """Per-customer log-likelihood; ``x_terms`` may pass ``_bg_x_terms`` precomputed (gathered from unique x)."""
    r, alpha, _, _ = theta
    x_terms = _bg_x_terms(theta, x, modified) if x_terms is None else x_terms
    log_odds = _log_odds_dead(theta, x, t_x, T, modified)
    return x_terms - (r + x) * torch.log(alpha + T) + torch.logaddexp(log_odds, torch.zeros_like(log_odds))


def _p_alive(theta: Sequence[torch.Tensor], x: torch.Tensor, t_x: torch.Tensor, T: torch.Tensor,
             modified: bool) -> torch.Tensor:
    return torch.sigmoid(-_log_odds_dead(theta, x, t_x, T, modified))


def _p_purchase_if_alive(theta: Sequence[torch.Tensor], x: torch.Tensor, T: torch.Tensor,
                         t: torch.Tensor) -> torch.Tensor:
    """P(a purchase in (T, T+t] | alive at T): E[1 - exp(-lambda t)] over the rate posterior Gamma(r+x, alpha+T)."""
    r, alpha, _, _ = theta
    return -torch.expm1((r + x) * torch.log1p(-t / (alpha + T + t)))


def _expected_if_alive(theta: Sequence[torch.Tensor], x: torch.Tensor, T: torch.Tensor, t: torch.Tensor,
                       modified: bool, n_terms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[purchases in (T, T+t] | alive at T, x], estimated relative error from truncating the series)."""
    r, alpha, a, b = theta
    z = t / (alpha + T + t)
    log1mz = torch.log1p(-z)
    shape_c = a + b + x - 1 + float(modified)
    shape_a = a + b - 1 + float(modified) - r  # = shape_c - (r + x)
    shape_b = a - 1
    total, tail = _series(shape_a, shape_b, shape_c, z, n_terms)
    # C/B [1 - (1-z)^B 2F1(A, B; C; z)] with 2F1 = 1 + B A z/C total: B divides out, so a == 1 is no singularity
    power = torch.exp(shape_b * log1mz)
    scale = torch.where(shape_b == 0, -log1mz, -torch.expm1(shape_b * log1mz) / shape_b)
    expected = shape_c * scale - power * shape_a * z * total
    return expected, power * torch.abs(shape_a) * z * tail / torch.abs(expected).clamp_min(1e-300)


class BetaGeoScorer(nn.Module):
    """Closed-form BG/NBD or MBG/NBD scores; ``forward(x, t_x, T, t)`` on float64 ``[batch]`` tensors returns
    (expected purchases in (T, T+t], P(alive at T), P(at least one purchase in (T, T+t])).

    Float64 because the series sums terms of alternating sign and subtracts nearly equal numbers for short
    horizons; the inputs are four numbers per customer, so the cost of doubles does not matter. The series has a
    fixed ``n_terms`` (see the module docstring for its accuracy); each temporary takes batch x n_terms x 8 bytes
    (200 MB for 100k rows at 256 terms), so score large populations in batches.
    """

    def __init__(self, params: Mapping[str, float], modified: bool, n_terms: int = HYP2F1_TERMS) -> None:
        super().__init__()
        for name in BG_PARAMS:
            self.register_buffer(name, torch.tensor(float(params[name]), dtype=torch.float64))
        self.modified = modified
        self.n_terms = n_terms

    def forward(self, x: torch.Tensor, t_x: torch.Tensor, T: torch.Tensor,
                t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        theta = (self.r, self.alpha, self.a, self.b)
        p_alive = _p_alive(theta, x, t_x, T, self.modified)
        expected, _ = _expected_if_alive(theta, x, T, t, self.modified, self.n_terms)
        return p_alive * expected, p_alive, p_alive * _p_purchase_if_alive(theta, x, T, t)


# --- Gamma-Gamma ----------------------------------------------------------------------------------------------


def _gg_log_likelihood(theta: Sequence[torch.Tensor], x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Log density of the mean m of x transaction values: x m ~ Gamma(p x, nu), nu ~ Gamma(q, gamma)."""
    p, q, gamma = theta
    px = p * x
    return (torch.lgamma(px + q) - torch.lgamma(px) - torch.lgamma(q) + q * torch.log(gamma)
            + (px - 1) * torch.log(m) + px * torch.log(x) - (px + q) * torch.log(gamma + x * m))


def _gg_expected_spend(theta: Sequence[torch.Tensor], x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Posterior mean spend per transaction: a weighted mean of the population mean gamma p / (q - 1) and m."""
    p, q, gamma = theta
    px = p * x
    m_used = torch.where(x > 0, m, torch.zeros_like(m))  # weight 0 where x == 0: the population mean
    return ((q - 1) / (px + q - 1)) * (gamma * p / (q - 1)) + (px / (px + q - 1)) * m_used


class GammaGammaScorer(nn.Module):
    """``forward(x, m)`` on float64 ``[batch]`` tensors: expected spend per transaction given x repeat purchases
    with mean value m (the population mean where x == 0)."""

    def __init__(self, params: Mapping[str, float]) -> None:
        super().__init__()
        for name in GG_PARAMS:
            self.register_buffer(name, torch.tensor(float(params[name]), dtype=torch.float64))

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return _gg_expected_spend((self.p, self.q, self.gamma), x, m)


# --- inputs, outputs, optimisation ----------------------------------------------------------------------------


def _as_tensors(device: torch.device, **values: ArrayLike) -> list[torch.Tensor]:
    """1-D float64 tensors on ``device``, broadcast to one length."""
    out = []
    for name, value in values.items():
        if isinstance(value, torch.Tensor):
            tensor = value.detach()
        else:
            tensor = torch.tensor(np.asarray(value, dtype=np.float64))
        if tensor.ndim > 1:
            raise ValueError(f"{name} must be a scalar or 1-D, got shape {tuple(tensor.shape)}")
        out.append(tensor.to(device=device, dtype=torch.float64).reshape(-1))
    try:
        return list(torch.broadcast_tensors(*out))
    except RuntimeError:
        lengths = {name: len(tensor) for name, tensor in zip(values, out)}
        raise ValueError(f"inputs have different lengths: {lengths}") from None


def _output(result: torch.Tensor, *inputs: object) -> Output:
    if any(isinstance(value, torch.Tensor) for value in inputs):
        return result
    return result.cpu().numpy()


def _reject(bad: torch.Tensor, problem: str) -> None:
    """ValueError naming the (first ten) row indices where ``bad`` holds."""
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        shown = ", ".join(map(str, rows[:10])) + (f", ... ({len(rows)} rows)" if len(rows) > 10 else "")
        raise ValueError(f"{problem} at row(s) {shown}")


def _check_counts(x: torch.Tensor) -> None:
    _reject(~torch.isfinite(x), "frequency x is not finite")
    _reject(x < 0, "frequency x is negative")
    _reject(x != torch.floor(x), "frequency x is not a whole number")


def _check_rfm(x: torch.Tensor, t_x: torch.Tensor, T: torch.Tensor) -> None:
    _check_counts(x)
    _reject(~torch.isfinite(t_x) | ~torch.isfinite(T), "recency t_x or age T is not finite")
    _reject(t_x < 0, "recency t_x is negative")
    _reject(t_x > T, "recency t_x is after the end of the period T")
    _reject((x == 0) & (t_x != 0), "recency t_x is not 0 although there is no repeat purchase (x == 0)")


def _check_horizon(t: torch.Tensor) -> None:
    _reject(~torch.isfinite(t) | (t < 0), "horizon t is negative or not finite")


def _weights(weights: ArrayLike | None, n: int, device: torch.device) -> torch.Tensor:
    if weights is None:
        return torch.ones(n, dtype=torch.float64, device=device)
    (w,) = _as_tensors(device, weights=weights)
    if len(w) != n:
        raise ValueError(f"weights has length {len(w)}, expected {n}")
    _reject(~torch.isfinite(w) | (w < 0), "weight is negative or not finite")
    if not bool(w.sum() > 0):
        raise ValueError("weights sum to 0")
    return w


def _unpack(log_theta: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.clamp(log_theta, -LOG_BOUND, LOG_BOUND))


def _lbfgs(objective: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
           max_iter: int) -> tuple[float, torch.Tensor, int, float] | None:
    """L-BFGS (strong Wolfe) from ``start`` until the objective stops decreasing in float64 (or ``max_iter``):
    (loss, end point, iterations, largest gradient component), or None if the loss or gradient is not finite."""
    theta = start.clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-16,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = objective(theta)
        loss.backward()
        return loss

    def finite(loss: torch.Tensor) -> bool:
        return bool(torch.isfinite(loss) and torch.isfinite(theta.grad).all() and torch.isfinite(theta).all())

    if not finite(closure()):  # torch's line search cannot start from a non-finite loss
        return None
    optimiser.step(closure)
    loss = closure()
    if not finite(loss):
        return None
    n_iter = int(optimiser.state[theta].get("n_iter", 0))
    return loss.item(), theta.detach().clone(), n_iter, theta.grad.abs().max().item()


def _minimise(objective: Callable[[torch.Tensor], torch.Tensor], starts: Sequence[torch.Tensor], max_iter: int,
              data_summary: str) -> tuple[torch.Tensor, int, float]:
    """The best finite ``_lbfgs`` end point over ``starts``, its iterations and largest gradient component."""
    ends = [end for start in starts if (end := _lbfgs(objective, start, max_iter)) is not None]
    if not ends:
        raise ConvergenceError(f"the log-likelihood or its gradient is not finite from any of the {len(starts)} "
                               f"starts: the data hold extreme values ({data_summary})")
    _, log_theta, n_iter, gradient = min(ends, key=lambda end: end[0])
    return log_theta, n_iter, gradient


def _check_identified(objective: Callable[[torch.Tensor], torch.Tensor], log_theta: torch.Tensor, total: float,
                      names: Sequence[str], hint: str) -> None:
    """ConvergenceError when the observed information (Hessian of the total negative log-likelihood in the
    log-parameters) leaves a parameter undetermined: standard error of its log above ``MAX_LOG_SE``, or a
    singular or indefinite matrix. A flat likelihood lets L-BFGS drift towards 0 or infinity and stop anywhere."""
    information = torch.autograd.functional.hessian(objective, log_theta) * total
    try:
        variance = torch.linalg.inv(information).diagonal().tolist()
    except torch.linalg.LinAlgError:
        variance = [float("inf")] * len(names)
    loose = [f"{name}={float(np.exp(v)):.4g}" for name, v, var in zip(names, log_theta.tolist(), variance)
             if not 0 < var <= MAX_LOG_SE ** 2]
    if loose:
        raise ConvergenceError(f"{', '.join(loose)} not identified by these data (standard error of the log above "
                               f"{MAX_LOG_SE:g}): the likelihood has no finite maximum ({hint}); a penalizer > 0 "
                               "keeps the parameters finite")


class _MaximumLikelihood:
    """Hyper-parameters and the fitting loop shared by the models."""

    _names: tuple[str, ...]
    _divergence_hint: str

    def __init__(self, penalizer: float = 0.0, n_starts: int = 3, max_iter: int = 500, tol: float = 1e-6,
                 device: str | torch.device | None = None) -> None:
        self.penalizer = penalizer
        self.n_starts = n_starts
        self.max_iter = max_iter
        self.tol = tol
        self.device = device

    @classmethod
    def from_params(cls, params: Mapping[str, float], device: str | torch.device | None = None) -> Self:
        """A model with given (e.g. published) parameters, ready to predict and sample."""
        missing = [name for name in cls._names if name not in params]
        if missing:
            raise ValueError(f"params lacks {missing}")
        bad = [name for name in cls._names if not (np.isfinite(params[name]) and params[name] > 0)]
        if bad:
            raise ValueError(f"parameters {bad} must be positive and finite")
        model = cls(device=device)
        model.params_ = {name: float(params[name]) for name in cls._names}
        model.device_ = torch.device(device) if device is not None else default_device()
        return model

    def _fit(self, log_likelihood: Callable[[torch.Tensor], torch.Tensor], weights: torch.Tensor,
             starts: list[list[float]], data_summary: str) -> None:
        """Maximise ``sum(weights * log_likelihood(theta))`` over log-parameters from the first ``n_starts`` of
        ``starts``; the first start is also the centre of the penalty. Sets the learned attributes."""
        if self.penalizer < 0 or self.n_starts < 1 or self.max_iter < 1 or self.tol <= 0:
            raise ValueError("need penalizer >= 0, n_starts >= 1, max_iter >= 1 and tol > 0")
        total, device = weights.sum(), weights.device
        log_starts = [torch.log(torch.tensor(s, dtype=torch.float64, device=device)) for s in starts]
        centre = log_starts[0]

        def objective(log_theta: torch.Tensor) -> torch.Tensor:
            penalty = self.penalizer * ((log_theta - centre) ** 2).sum()
            return -(weights * log_likelihood(_unpack(log_theta))).sum() / total + penalty

        log_starts = log_starts[: self.n_starts]
        log_theta, self.n_iter_, gradient = _minimise(objective, log_starts, self.max_iter, data_summary)
        _check_identified(objective, log_theta, float(total), self._names, self._divergence_hint)
        self.converged_ = gradient <= self.tol
        if not self.converged_:
            warnings.warn(f"L-BFGS stopped after {self.n_iter_} iterations with a gradient of {gradient:.2g} > "
                          f"tol={self.tol:g}; the estimates may be inaccurate", RuntimeWarning, stacklevel=3)
        theta = _unpack(log_theta)
        with torch.no_grad():
            self.log_likelihood_ = float((weights * log_likelihood(theta)).sum())
        self.params_ = dict(zip(self._names, theta.tolist()))
        self.device_ = device

    def _theta(self) -> list[torch.Tensor]:
        if not hasattr(self, "params_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(...) or from_params(...) first")
        return [torch.tensor(self.params_[name], dtype=torch.float64, device=self.device_) for name in self._names]


class _BetaGeo(_MaximumLikelihood):
    """BG/NBD and MBG/NBD; ``_modified`` selects the variant."""

    _names = BG_PARAMS
    _modified: bool
    _divergence_hint = ("r and alpha grow together when purchase rates look homogeneous; a and b grow together "
                        "when dropout probabilities do, which small samples often suggest; a -> 0 or b -> infinity "
                        "when almost nobody seems to drop out, e.g. every repeat buyer bought near the end")

    def fit(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, weights: ArrayLike | None = None) -> Self:
        """Fit to per-customer x (repeat purchases), t_x (time of the last purchase) and T (age); ``weights``
        counts customers sharing a row (default 1 each)."""
        device = torch.device(self.device) if self.device is not None else default_device()
        x, t_x, T = _as_tensors(device, frequency=frequency, recency=recency, T=T)
        _check_rfm(x, t_x, T)
        w = _weights(weights, len(x), device)
        repeat = float((w * x).sum())
        if repeat == 0:
            raise ValueError("no customer has a repeat purchase (all frequency == 0): r and alpha are not identified")
        rate = repeat / max(float((w * T).sum()), 1e-300)  # repeat purchases per unit time, sets alpha's scale
        starts = [[1.0, 1.0 / rate, 1.0, 1.0], [0.25, 0.25 / rate, 0.8, 2.5], [4.0, 4.0 / rate, 2.0, 10.0],
                  [0.1, 0.1 / rate, 0.3, 0.5]]
        x_unique, inverse = torch.unique(x, return_inverse=True)  # lgamma terms once per distinct x

        def log_likelihood(theta: torch.Tensor) -> torch.Tensor:
            x_terms = _bg_x_terms(theta, x_unique, self._modified)[inverse]
            return _bg_log_likelihood(theta, x, t_x, T, self._modified, x_terms)

        summary = f"largest x {float(x.max()):.4g}, largest T {float(T.max()):.4g}"
        self._fit(log_likelihood, w, starts, summary)
        return self

    def _history(self, **values: ArrayLike) -> list[torch.Tensor]:
        tensors = _as_tensors(self.device_, **values)
        _check_rfm(*tensors[:3])
        if len(tensors) == 4:
            _check_horizon(tensors[3])
        return tensors

    def log_likelihood(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Output:
        """Per-customer log-likelihood of (x, t_x, T)."""
        theta = self._theta()
        x_, t_x_, T_ = self._history(x=x, t_x=t_x, T=T)
        return _output(_bg_log_likelihood(theta, x_, t_x_, T_, self._modified), x, t_x, T)

    def expected_purchases(self, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Output:
        """Expected number of purchases in (T, T + t] given the history (x, t_x, T).

        Computed in blocks of about ``BLOCK_ELEMENTS`` series terms; rows whose series has not converged (tail
        estimate above 1e-14 of the result) are redone with twice the terms, up to ``MAX_HYP2F1_TERMS``."""
        theta = self._theta()
        x_, t_x_, T_, t_ = self._history(x=x, t_x=t_x, T=T, t=t)
        expected = torch.empty_like(x_)
        todo, n_terms = torch.arange(len(x_), device=x_.device), HYP2F1_TERMS
        while len(todo):
            retry = []
            for rows in todo.split(max(1, BLOCK_ELEMENTS // n_terms)):
                expected[rows], tail = _expected_if_alive(theta, x_[rows], T_[rows], t_[rows], self._modified, n_terms)
                retry.append(rows[tail > 1e-14])
            todo = torch.cat(retry)
            if len(todo) and n_terms == MAX_HYP2F1_TERMS:
                warnings.warn(f"the 2F1 series has not converged in {n_terms} terms for {len(todo)} row(s) (horizon "
                              "t very long against alpha + T); their expected purchases may be inaccurate",
                              RuntimeWarning, stacklevel=2)
                break
            n_terms *= 2
        return _output(expected * _p_alive(theta, x_, t_x_, T_, self._modified), t, x, t_x, T)

    def p_alive(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Output:
        """P(the customer has not dropped out by T | x, t_x, T)."""
        theta = self._theta()
        x_, t_x_, T_ = self._history(x=x, t_x=t_x, T=T)
        return _output(_p_alive(theta, x_, t_x_, T_, self._modified), x, t_x, T)

    def p_at_least_one(self, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Output:
        """P(at least one purchase in (T, T + t] | x, t_x, T) = P(alive) (1 - ((alpha+T)/(alpha+T+t))^(r+x))."""
        theta = self._theta()
        x_, t_x_, T_, t_ = self._history(x=x, t_x=t_x, T=T, t=t)
        p_alive = _p_alive(theta, x_, t_x_, T_, self._modified)
        return _output(p_alive * _p_purchase_if_alive(theta, x_, T_, t_), t, x, t_x, T)

    def purchase_distribution(self, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike,
                              max_count: int) -> Output:
        """P(X(T, T+t] = k | x, t_x, T) for k = 0..``max_count`` (``[rows, max_count + 1]``; the mass above
        ``max_count`` is left out, so rows sum to at most 1).

        Given the history, a customer alive at T has rate lambda ~ Gamma(r + x, alpha + T) and dropout
        p ~ Beta(a, b + x) (b + x + 1 for MBG/NBD), independent, and starts afresh (the Poisson process is
        memoryless), so the count is BG/NBD's unconditional P(X(t) = k) (Fader, Hardie & Lee 2005, eq. 8) with
        those parameters; a customer who has dropped out buys nothing:
        P(alive) [B(a, b'+k)/B(a, b') NB(k) + 1{k>0} B(a+1, b'+k-1)/B(a, b') P(NB > k-1)] + (1 - P(alive)) 1{k=0},
        NB the negative binomial of the Poisson count over the horizon, NB(k) = Γ(r'+k)/(Γ(r') k!) (1-q)^r' q^k,
        q = t / (alpha' + t), r' = r + x, alpha' = alpha + T, b' = b + x (+ 1)."""
        theta = self._theta()
        x_, t_x_, T_, t_ = self._history(x=x, t_x=t_x, T=T, t=t)
        if max_count < 0:
            raise ValueError(f"max_count must be >= 0, got {max_count}")
        r, alpha, a, b = theta
        k = torch.arange(max_count + 1, dtype=torch.float64, device=x_.device)
        r1, b1 = (r + x_)[:, None], (b + x_ + float(self._modified))[:, None]
        log_q = torch.log(t_ / (alpha + T_ + t_))[:, None]
        log_1mq = torch.log1p(-t_ / (alpha + T_ + t_))[:, None]
        log_nb = torch.lgamma(r1 + k) - torch.lgamma(r1) - torch.lgamma(k + 1) + r1 * log_1mq + k * log_q
        log_nb = torch.where(k == 0, r1 * log_1mq, log_nb)  # 0 · log 0 where t == 0
        nb = torch.exp(log_nb)
        above = (1 - torch.cumsum(nb, -1)).clamp_min(0)  # P(NB > k)
        log_beta = lambda u, v: torch.lgamma(u) + torch.lgamma(v) - torch.lgamma(u + v)  # noqa: E731
        stay = torch.exp(log_beta(a, b1 + k) - log_beta(a, b1)) * nb
        k1 = k[1:]
        drop = torch.exp(log_beta(a + 1, b1 + k1 - 1) - log_beta(a, b1)) * above[:, :-1]
        alive = _p_alive(theta, x_, t_x_, T_, self._modified)[:, None]
        pmf = alive * torch.cat([stay[:, :1], stay[:, 1:] + drop], -1)
        pmf[:, 0] += 1 - alive[:, 0]
        return _output(pmf, t, x, t_x, T)

    def quantile_purchases(self, q: float, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Output:
        """The q-quantile of the number of purchases in (T, T + t] given the history: the smallest k with
        P(X <= k) >= q (``q`` = 0.5: the median, the point forecast that minimises the expected absolute error).
        Rows in blocks of about ``BLOCK_ELEMENTS`` (rows x counts) elements, so memory does not follow the
        customers times the largest count; a row's answer does not depend on its block."""
        if not 0 < q < 1:
            raise ValueError(f"q must be in (0, 1), got {q}")
        x_, t_x_, T_, t_ = self._history(x=x, t_x=t_x, T=T, t=t)
        means = torch.as_tensor(self.expected_purchases(t_, x_, t_x_, T_))
        order = torch.argsort(means)  # blocks of similar means: each block's counts follow its own largest
        width = (4 * means[order]).long() + 17  # counts a row's block needs, non-decreasing
        quantile = torch.empty_like(x_)
        start = 0
        while start < len(x_):
            ahead = width[start:start + BLOCK_ELEMENTS // 17]
            fits = torch.arange(1, len(ahead) + 1, device=ahead.device) * ahead <= BLOCK_ELEMENTS
            rows = order[start:start + max(1, int(fits.sum()))]
            quantile[rows] = self._quantile_block(q, float(means[rows].max()), t_[rows], x_[rows], t_x_[rows], T_[rows])
            start += len(rows)
        return _output(quantile, t, x, t_x, T)

    def _quantile_block(self, q: float, largest_mean: float, t: torch.Tensor, x: torch.Tensor, t_x: torch.Tensor,
                        T: torch.Tensor) -> torch.Tensor:
        """``quantile_purchases`` of some rows, their largest expected count given."""
        max_count = int(4 * largest_mean) + 16
        while True:
            pmf = torch.as_tensor(self.purchase_distribution(t, x, t_x, T, max_count))
            cdf = torch.cumsum(pmf, -1)
            reached = cdf[:, -1] >= q
            if bool(reached.all()) or max_count > 1 << 20:
                break
            max_count *= 2
        if not bool(reached.all()):
            raise ValueError(f"the {q} quantile of the count lies above {max_count} for some rows (horizon too long)")
        return (cdf < q - 1e-12).sum(-1).to(torch.float64)

    def expected_purchases_new(self, t: ArrayLike) -> Output:
        """E[X(t)]: expected repeat purchases in the first t time units of a new customer."""
        return self.expected_purchases(t, 0.0, 0.0, 0.0)

    def sample(self, n: int, T: ArrayLike, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` customers (x, t_x, T) drawn from the model's generative process over ages ``T`` (scalar or n)."""
        r, alpha, a, b = (float(v) for v in self._theta())
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        T = np.broadcast_to(np.asarray(T, dtype=np.float64), (n,)).copy()
        if not np.all(np.isfinite(T) & (T >= 0)):
            raise ValueError("T must be finite and >= 0")
        rng = np.random.default_rng(seed)
        lam = rng.gamma(r, 1 / alpha, n)
        p = rng.beta(a, b, n)
        u = 1 - rng.random(n)  # (0, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            # repeat purchases before dropping out: geometric on {1, 2, ...} (BG/NBD) or {0, 1, ...} (MBG/NBD)
            lifetime = np.where(p > 0, np.floor(np.log(u) / np.log1p(-p)), np.inf) + (0 if self._modified else 1)
        n_events = rng.poisson(lam * T)  # purchases the customer would make in (0, T] if never dropping out
        x = np.minimum(n_events, lifetime)
        # the x-th of n_events uniform purchase times on (0, T] is T * Beta(x, n_events - x + 1)
        t_x = np.where(x > 0, T * rng.beta(np.maximum(x, 1), n_events - x + 1), 0.0)
        return x.astype(np.float64), t_x, T

    def scoring_module(self, n_terms: int = HYP2F1_TERMS) -> BetaGeoScorer:
        """A CPU ``nn.Module`` with the fitted parameters, for export (see ``BetaGeoScorer``)."""
        self._theta()
        return BetaGeoScorer(self.params_, self._modified, n_terms)


class BetaGeoModel(_BetaGeo):
    """BG/NBD (Fader, Hardie & Lee 2005): after each repeat purchase a customer drops out with probability p.

    Hyper-parameters: ``penalizer`` adds ``penalizer * sum((log theta - log theta0) ** 2)`` to the mean negative
    log-likelihood, shrinking towards theta0 = (r 1, alpha 1 / rate, a 1, b 1), where rate = repeat purchases per
    unit of age in the data (so the penalty does not depend on the time unit; it keeps every parameter finite when
    the data do not identify it); ``n_starts`` deterministic starts (theta0 first, the others scaled to the same
    rate) are tried and the best end point kept; each runs L-BFGS until the objective stops decreasing in float64
    or for ``max_iter`` iterations; ``tol`` bounds the largest gradient component (mean negative log-likelihood
    with respect to the log-parameters) at the end for the fit to count as converged; ``device`` (default cuda if
    available). Parameters the data leave undetermined (standard error of the log above 10) raise
    ``ConvergenceError``.

    Learned: ``params_`` ({r, alpha, a, b}), ``log_likelihood_`` (weighted sum at the optimum, no penalty),
    ``n_iter_`` (L-BFGS iterations of the chosen start), ``converged_`` (gradient <= ``tol``; a RuntimeWarning
    otherwise), ``device_``.
    """

    _modified = False


class ModifiedBetaGeoModel(_BetaGeo):
    """MBG/NBD (Batislam et al. 2007): as ``BetaGeoModel`` (same hyper-parameters, attributes and methods), but a
    customer may also drop out right after the first purchase, so P(alive) < 1 even with no repeat purchase."""

    _modified = True


class GammaGammaModel(_MaximumLikelihood):
    """Gamma-Gamma spend model (Fader, Hardie & Lee 2005, "RFM and CLV"), fitted on repeat buyers only.

    Hyper-parameters as for ``BetaGeoModel``; the penalty's centre is (p 1, q 2, gamma = mean m), whose
    population mean spend gamma p / (q - 1) is the data's. Learned: ``params_`` ({p, q, gamma}),
    ``log_likelihood_``, ``n_iter_``, ``converged_``, ``device_``.
    """

    _names = GG_PARAMS
    _divergence_hint = ("p and gamma grow together when spend varies little within customers; q -> infinity "
                        "when it varies little between them")

    def fit(self, frequency: ArrayLike, monetary_value: ArrayLike, weights: ArrayLike | None = None) -> Self:
        """Fit to repeat buyers' x (repeat purchases, > 0) and m (mean value of those purchases, > 0)."""
        device = torch.device(self.device) if self.device is not None else default_device()
        x, m = self._checked(device, frequency, monetary_value)
        w = _weights(weights, len(x), device)
        mean = float((w * m).sum() / w.sum())
        starts = [[1.0, 2.0, mean], [5.0, 3.0, 2.0 * mean / 5.0], [20.0, 10.0, 9.0 * mean / 20.0], [1.0, 1.0, 1.0]]
        summary = f"largest x {float(x.max()):.4g}, m between {float(m.min()):.4g} and {float(m.max()):.4g}"
        self._fit(lambda theta: _gg_log_likelihood(theta, x, m), w, starts, summary)
        return self

    @staticmethod
    def _checked(device: torch.device, frequency: ArrayLike, monetary_value: ArrayLike) -> list[torch.Tensor]:
        x, m = _as_tensors(device, frequency=frequency, monetary_value=monetary_value)
        _check_counts(x)
        _reject(x == 0, "frequency x is 0 (fit Gamma-Gamma on repeat buyers only)")
        _reject(~torch.isfinite(m) | (m <= 0), "monetary value m is not positive and finite")
        return [x, m]

    def log_likelihood(self, x: ArrayLike, m: ArrayLike) -> Output:
        """Per-customer log density of the mean repeat-transaction value m given x (x > 0, m > 0)."""
        theta = self._theta()
        return _output(_gg_log_likelihood(theta, *self._checked(self.device_, x, m)), x, m)

    def _population_mean_check(self) -> None:
        if self.params_["q"] <= 1:
            raise ValueError(f"q = {self.params_['q']:.4g} <= 1: the population mean spend gamma p / (q - 1) is "
                             "infinite, so expected spend is undefined")

    def expected_spend_per_transaction(self, x: ArrayLike, m: ArrayLike) -> Output:
        """E[spend per transaction | x, m] = (q-1)/(px+q-1) * gamma p/(q-1) + px/(px+q-1) * m; where x == 0 the
        population mean gamma p / (q - 1) (m is ignored there). Needs q > 1."""
        theta = self._theta()
        self._population_mean_check()
        x_, m_ = _as_tensors(self.device_, x=x, m=m)
        _check_counts(x_)
        _reject((x_ > 0) & (~torch.isfinite(m_) | (m_ <= 0)), "monetary value m is not positive and finite")
        return _output(_gg_expected_spend(theta, x_, m_), x, m)

    def scoring_module(self) -> GammaGammaScorer:
        """A CPU ``nn.Module`` computing ``expected_spend_per_transaction`` (see ``GammaGammaScorer``)."""
        self._theta()
        self._population_mean_check()
        return GammaGammaScorer(self.params_)


# --- BG/NBD on the calendar ------------------------------------------------------------------------------------


class SeasonalBetaGeoModel:
    """BG/NBD whose purchase rate is scaled by a calendar multiplier shared by every customer, and Gamma-Gamma on
    spend divided by a calendar multiplier of the spend per purchase day.

    A customer's repeat purchases follow a Poisson process with rate lambda·s(t), s a daily multiplier:
    log s = Fourier terms of the day of the year (``order`` harmonics) + one effect per holiday span
    (``holidays``, ``twins.runtime.outlook_features.holiday_spans``), the Fourier part normalised to a mean of 1
    over a year. In calendar time τ(t) = ∫ s, the process is BG/NBD's, so the likelihood is BG/NBD's on the
    summary in calendar time (x, τ(t_x), τ(T)) times Π s(t_j) over the repeat purchase days; the rate and dropout
    parameters and the calendar are fitted jointly by L-BFGS (``ridge`` · |coefs|² added to the mean negative
    log-likelihood). Spend: the log spend of each purchase day, centred per customer, is regressed on the same
    design (ridge) for the spend multiplier; Gamma-Gamma is fitted on spend divided by it.

    With less than ``MIN_CALENDAR_WEEKS`` of history before the cut-off the calendar is not identified: it stays
    flat (plain BG/NBD + Gamma-Gamma), a RuntimeWarning says so, and ``calendar_["status"]`` records why.
    Learned: ``calendar_`` (the spec ``twins.runtime.outlook_features.Calendar`` reads), ``counts_``
    (``BetaGeoModel`` in calendar weeks), ``spend_`` (``GammaGammaModel`` or None)."""

    def __init__(self, order: int = 3, holidays: Sequence = (), ridge: float = 1e-4, max_iter: int = 300) -> None:
        self.order = order
        self.holidays = holidays
        self.ridge = ridge
        self.max_iter = max_iter

    def fit(self, code: np.ndarray, day: np.ndarray, spend: np.ndarray, cutoff_day: float) -> Self:
        """``code``: customer code of each purchase day; ``day``: whole days since 1970-01-01 (UTC); ``spend``:
        the day's net spend; only days before ``cutoff_day`` are used."""
        code, day, spend = np.asarray(code, np.int64), np.asarray(day, np.int64), np.asarray(spend, np.float64)
        keep = day < cutoff_day
        code, day, spend = code[keep], day[keep], spend[keep]
        if not len(day):
            raise ValueError("no purchase day before the cut-off: nothing to fit the seasonal BG/NBD on")
        holidays = holiday_spans(list(self.holidays))
        weeks = (cutoff_day - day.min()) / 7.0
        spec: dict = {"order": self.order, "holidays": holidays, "history_weeks": round(float(weeks), 1)}
        _, code = np.unique(code, return_inverse=True)
        n_rows = int(code.max()) + 1
        flat = Calendar(spec)
        s = calendar_summary(flat, code, day, spend, n_rows, cutoff_day, 7.0)
        counts = BetaGeoModel(penalizer=1e-3).fit(s["x"], s["t_x"], s["T"])
        if weeks < MIN_CALENDAR_WEEKS:
            spec["status"] = (f"flat: the history before the cut-off spans {weeks:.1f} weeks, under the "
                              f"{MIN_CALENDAR_WEEKS} a seasonal profile needs; plain BG/NBD")
            warnings.warn(f"seasonal outlook: {spec['status']}", RuntimeWarning, stacklevel=2)
        else:
            lo, hi = int(day.min()), int(np.floor(cutoff_day))
            design = torch.tensor(calendar_design(np.arange(lo, hi + 1), self.order, holidays))
            year = torch.tensor(calendar_design(np.arange(10_957, 10_957 + 365), self.order, [])[:, : 2 * self.order])
            first = np.full(n_rows, hi)
            np.minimum.at(first, code, day)
            last = np.zeros(n_rows, np.int64)
            np.maximum.at(last, code, day)
            x = torch.tensor(np.bincount(code, minlength=n_rows) - 1.0)
            repeat = torch.tensor(day[day > first[code]] - lo)
            i_first, i_last = torch.tensor(first - lo), torch.tensor(last - lo)
            frac = float(cutoff_day - hi)
            n_coef = design.shape[1]

            def log_s(coefs: torch.Tensor) -> torch.Tensor:
                offset = -torch.logsumexp(year @ coefs[: 2 * self.order], 0) + math.log(365.0)
                return design @ coefs + offset

            def objective(v: torch.Tensor) -> torch.Tensor:
                theta, coefs = _unpack(v[:4]), v[4:]
                g = log_s(coefs)
                cum = torch.cat([g.new_zeros(1), torch.cumsum(torch.exp(g), 0)]) / 7.0
                c_cut = cum[hi - lo] + frac * torch.exp(g[hi - lo]) / 7.0
                t_x, T = cum[i_last] - cum[i_first], c_cut - cum[i_first]
                ll = _bg_log_likelihood(theta, x, t_x, T, False).sum() + g[repeat].sum()
                return -ll / n_rows + self.ridge * (coefs ** 2).sum()

            start = torch.cat([torch.log(torch.tensor([counts.params_[k] for k in BG_PARAMS], dtype=torch.float64)),
                               torch.zeros(n_coef, dtype=torch.float64)])
            end = _lbfgs(objective, start, self.max_iter)
            if end is None:
                raise ConvergenceError("seasonal BG/NBD: the likelihood is not finite; the calendar cannot be fitted")
            v = end[1]
            coefs = v[4:]
            offset = float(-torch.logsumexp(year @ coefs[: 2 * self.order], 0) + math.log(365.0))
            spec |= {"count": coefs.tolist(), "count_offset": offset}
            spec |= _spend_calendar(code, day, spend, self.order, holidays, self.ridge)
            spec["status"] = f"fitted on {weeks:.1f} weeks of history"
            counts = BetaGeoModel.from_params(dict(zip(BG_PARAMS, _unpack(v[:4]).tolist())), device="cpu")
        self.calendar_ = spec
        self.counts_ = counts
        s = calendar_summary(Calendar(spec), code, day, spend, n_rows, cutoff_day, 7.0)
        repeat_buyers = (s["x"] > 0) & (s["m"] > 0)
        try:
            try:
                self.spend_ = GammaGammaModel().fit(s["x"][repeat_buyers], s["m"][repeat_buyers])
            except ConvergenceError:
                self.spend_ = GammaGammaModel(penalizer=0.01).fit(s["x"][repeat_buyers], s["m"][repeat_buyers])
        except (ValueError, ConvergenceError):
            self.spend_ = None
        self.day_spend_ = float(np.maximum(spend, 0).mean())
        return self

    def predict(self, row: np.ndarray, day: np.ndarray, spend: np.ndarray, n_rows: int, cutoff_day: float,
                horizon_days: float) -> dict[str, np.ndarray]:
        """``expected_purchases``, ``median_purchases`` (of the count's predictive distribution in calendar time,
        ``BetaGeoModel.quantile_purchases``), ``expected_spend``, ``p_any_purchase``, ``p_alive`` per row
        (customers) from their purchase days before ``cutoff_day`` (as ``fit``) over ``horizon_days``."""
        keep = np.asarray(day) < cutoff_day
        s = calendar_summary(Calendar(self.calendar_), np.asarray(row)[keep], np.asarray(day)[keep],
                             np.asarray(spend)[keep], n_rows, cutoff_day, horizon_days)
        x, t_x, T, t = s["x"], s["t_x"], s["T"], s["t"]
        count = np.asarray(self.counts_.expected_purchases(t, x, t_x, T), float)
        if self.spend_ is None:
            per_day = np.full(n_rows, self.day_spend_)
        else:
            per_day = np.asarray(self.spend_.expected_spend_per_transaction(np.where(s["m"] > 0, x, 0), s["m"]), float)
        median = np.asarray(self.counts_.quantile_purchases(0.5, t, x, t_x, T), float)
        return {"expected_purchases": count, "median_purchases": median, "expected_spend": count * per_day * s["spend_scale"],
                "p_any_purchase": np.asarray(self.counts_.p_at_least_one(t, x, t_x, T), float),
                "p_alive": np.asarray(self.counts_.p_alive(x, t_x, T), float)}


def _spend_calendar(code: np.ndarray, day: np.ndarray, spend: np.ndarray, order: int, holidays: list[dict],
                    ridge: float) -> dict:
    """Ridge regression of the purchase days' log spend, centred per customer, on the calendar design."""
    ok = spend > 0
    code, day, y = code[ok], day[ok], np.log(spend[ok])
    n = np.bincount(code)
    y = y - (np.bincount(code, y) / np.maximum(n, 1))[code]
    several = n[code] > 1
    X = calendar_design(day[several], order, holidays)
    X = X - X.mean(0)
    coefs = np.linalg.solve(X.T @ X + ridge * len(X) * np.eye(X.shape[1]), X.T @ y[several]) if len(X) else np.zeros(X.shape[1])
    year = calendar_design(np.arange(10_957, 10_957 + 365), order, [])[:, : 2 * order]
    offset = -float(np.log(np.exp(year @ coefs[: 2 * order]).mean()))
    return {"spend": coefs.tolist(), "spend_offset": offset}
