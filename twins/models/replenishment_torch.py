"""A PyTorch forecaster of a machine's next order: time until it (days) and its quantity, each as the 10/50/90 %
quantiles (for an 80 % interval), from ``twins.models.replenishment.FEATURES``.

An MLP over standardised features with two heads of three non-crossing quantiles (median, and softplus gaps down
and up), in log space: ``log1p`` of the time, ``log`` of the quantity. Trained with the pinball loss; a censored
time (no order within the horizon H: T > H) contributes only where a quantile falls below ``log1p(H)``, by the
pinball loss against that bound (the truth is at least there). Standardisation lives in the module as buffers
(the net takes raw features). ``members`` nets with their own seeds are averaged in log space
(``ReplenishmentEnsemble``); each member's quantiles are ordered, so their average is too. The intervals may be
calibrated after fitting (``interval_scale``, ``ReplenishmentForecaster.scale_intervals``): each net holds a factor
on its log-space gaps down and up (1: as trained), so the exported graph carries it. Before that factor, the time
interval's gaps may be made to follow each series' own dispersion (``ReplenishmentForecaster.interval_blend``: a
normalised, locally adaptive conformal score): the gaps become the geometric blend, with weight ``blend``, of the
net's gaps and the series' own gap spread (the standard deviation of its past gaps, at least an hour) carried
into log space around the net's median; 0 is the net's alone. Likewise, after fitting, a
machine whose orders have come at one exact period (``EXACT_MIN_ORDERS`` or more, every gap the same to
``EXACT_GAP_CV``) may be answered by its period (``exact_periods``: the next order one period after the last, the
interval an hour either side) instead of the net, whose smooth answer misses such a clock by about half a day.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from twins.models.btyd import default_device
from twins.training import autocast_enabled
from twins.runtime.replenishment import MAX_DAYS, MAX_LOG_QUANTITY
from twins.runtime.replenishment_features import FEATURE_LIMIT, FEATURES

MAX_LOG1P_DAYS = float(np.log1p(MAX_DAYS))  # answers are capped as the runtime caps them

OUTPUTS = ("time_low", "time", "time_high", "quantity_low", "quantity", "quantity_high")
EXACT_MIN_ORDERS = 5  # an exact period needs this many orders (four equal gaps)
EXACT_GAP_CV = 1e-3  # gaps' std / mean at most this: the same gap to minutes (a weekly clock to 10 minutes)
HOUR = 1 / 24


class ReplenishmentNet(nn.Module):
    """``forward(features [batch, F] float32)`` -> six ``[batch]`` tensors, ``OUTPUTS`` in order. Features are
    first held inside the range seen in training (``low``, ``high``): a machine unlike any training one (a stock
    that covers years) gets the answer of the nearest training range instead of an extrapolated one."""

    def __init__(self, n_features: int, hidden: int, mean: np.ndarray, std: np.ndarray,
                 low: np.ndarray | None = None, high: np.ndarray | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.register_buffer("low", torch.as_tensor(np.full(n_features, -FEATURE_LIMIT) if low is None else low,
                                                    dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(np.full(n_features, FEATURE_LIMIT) if high is None else high,
                                                     dtype=torch.float32))
        self.register_buffer("spread", torch.ones(2))  # factor on the interval gaps of time, of quantity
        self.register_buffer("periods", torch.zeros(()))  # 1: exactly periodic machines answered by their period
        self.register_buffer("blend", torch.zeros(()))  # weight of the series' own gap spread in the time interval
        self.body = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.time = nn.Linear(hidden, 3)
        self.quantity = nn.Linear(hidden, 3)

    @staticmethod
    def _quantiles(raw: torch.Tensor, spread: torch.Tensor, gaps: tuple[torch.Tensor, torch.Tensor] | None = None
                   ) -> torch.Tensor:
        """Median and the gaps down and up (the net's softplus gaps, or ``gaps``) times ``spread``."""
        mid = raw[:, 1]
        down, up = gaps or (nn.functional.softplus(raw[:, 0]), nn.functional.softplus(raw[:, 2]))
        return torch.stack([mid - spread * down, mid, mid + spread * up], 1)

    def _time_gaps(self, x: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The time interval's log-space gaps down and up: the net's, blended geometrically (weight ``blend``) with
        the series' own: its gap spread (std of its past gaps in days, at least an hour) either side of the answer in
        days, in log1p space."""
        net = (nn.functional.softplus(raw[:, 0]), nn.functional.softplus(raw[:, 2]))
        sigma = (x[:, FEATURES.index("gap_cv")] * x[:, FEATURES.index("mean_gap")]).clamp_min(HOUR)
        mid = raw[:, 1].detach()
        days = torch.expm1(mid.clamp_max(MAX_LOG1P_DAYS)).clamp_min(0.0)  # the answer in days: [days -+ sigma] in log1p
        own = (mid - torch.log1p((days - sigma).clamp_min(0.0)), torch.log1p(days + sigma) - mid)
        return tuple(torch.where(self.blend > 0, torch.exp((1 - self.blend) * torch.log(n.clamp_min(1e-9))
                                                           + self.blend * torch.log(o.clamp_min(1e-9))), n)
                     for n, o in zip(net, own))

    def log_quantiles(self, x: torch.Tensor, trained: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-space time and quantity quantiles ``[batch, 3]`` each; ``trained``: the time interval as the net
        learns it, before the options set after the fit (blend, exact periods): fewer steps for training, the same
        numbers while those options are off."""
        h = self.body((torch.maximum(torch.minimum(x, self.high), self.low) - self.mean) / self.std)
        raw, q = self.time(h), self._quantiles(self.quantity(h), self.spread[1])
        if trained:
            return self._quantiles(raw, self.spread[0]), q
        t = self._quantiles(raw, self.spread[0], self._time_gaps(x, raw))
        f = {name: x[:, FEATURES.index(name)] for name in ("log_orders", "gap_cv", "period_left")}
        exact = (self.periods > 0) & (f["log_orders"] >= np.log1p(EXACT_MIN_ORDERS)) & (f["gap_cv"] <= EXACT_GAP_CV)
        left = f["period_left"].clamp(0.0, MAX_DAYS)
        clock = torch.log1p(torch.stack([(left - HOUR).clamp_min(0.0), left, left + HOUR], 1))
        return torch.where(exact[:, None], clock, t), q

    def forward(self, x: torch.Tensor):
        t, q = self.log_quantiles(x)
        t, q = torch.expm1(t.clamp_max(MAX_LOG1P_DAYS)).clamp_min(0.0), torch.exp(q.clamp_max(MAX_LOG_QUANTITY))
        return t[:, 0], t[:, 1], t[:, 2], q[:, 0], q[:, 1], q[:, 2]


class ReplenishmentEnsemble(nn.Module):
    """The mean of several ``ReplenishmentNet``'s log-space quantiles; same interface as one net."""

    def __init__(self, nets: list[ReplenishmentNet]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    @property
    def mean(self) -> torch.Tensor:  # the input scale (for probes such as the export's)
        return self.nets[0].mean

    @property
    def std(self) -> torch.Tensor:
        return self.nets[0].std

    def log_quantiles(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [net.log_quantiles(x) for net in self.nets]
        return torch.stack([t for t, _ in outs]).mean(0), torch.stack([q for _, q in outs]).mean(0)

    forward = ReplenishmentNet.forward


def pinball(pred: torch.Tensor, target: torch.Tensor, taus: torch.Tensor, lower_bound: torch.Tensor | None = None) -> torch.Tensor:
    """Mean pinball loss of ``pred [n, k]`` at quantiles ``taus [k]``; rows flagged in ``lower_bound`` only know
    target <= truth, so only predictions below the target are penalised there."""
    diff = target[:, None] - pred
    loss = torch.maximum(taus * diff, (taus - 1) * diff)
    if lower_bound is not None:
        loss = torch.where(lower_bound[:, None], taus * diff.clamp_min(0.0), loss)
    return loss.mean()


class ReplenishmentForecaster(BaseEstimator):
    """Fit on feature rows with targets (time, quantity, censored); predict median and interval of both.
    ``precision``: ``"fp32"``, or ``"bf16"`` autocast of the network (the loss stays fp32)."""

    def __init__(self, hidden: int = 64, epochs: int = 60, batch_size: int = 512, lr: float = 3e-3,
                 weight_decay: float = 1e-4, interval: float = 0.8, members: int = 1, seed: int = 0,
                 device: str | None = None, precision: str = "fp32") -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.interval = interval
        self.members = members
        self.seed = seed
        self.device = device
        self.precision = precision

    def fit(self, X: np.ndarray, T: np.ndarray, Q: np.ndarray, censored: np.ndarray,
            horizon: float | np.ndarray) -> Self:
        """``T``/``Q`` may be nan where ``censored`` (no order within ``horizon`` days: one number, or one per row
        when rows were watched for different spans, ``Samples.bound``)."""
        if not (isinstance(self.members, int) and self.members >= 1):
            raise ValueError(f"members must be an integer >= 1, got {self.members!r}")
        self.device_ = torch.device(self.device) if self.device else default_device()
        self.horizon_ = float(np.max(horizon))
        x = torch.as_tensor(X, dtype=torch.float32, device=self.device_)
        cens = torch.as_tensor(censored, device=self.device_)
        t = torch.log1p(torch.as_tensor(np.where(censored, horizon, T), dtype=torch.float32, device=self.device_))
        q = torch.log(torch.as_tensor(np.where(censored, 1.0, Q), dtype=torch.float32, device=self.device_))
        std = X.std(0)
        nets, losses = [], []
        for member in range(self.members):
            seed = self.seed + 1000 * member
            torch.manual_seed(seed)
            net = ReplenishmentNet(X.shape[1], self.hidden, X.mean(0), np.where(std > 0, std, 1.0), X.min(0),
                                   X.max(0)).to(self.device_)
            losses.append(self._train(net, x, t, q, cens, seed))
            nets.append(net.eval())
        self.net_ = nets[0] if self.members == 1 else ReplenishmentEnsemble(nets).eval()
        self.loss_ = float(np.mean(losses))
        return self

    def _train(self, net: ReplenishmentNet, x: torch.Tensor, t: torch.Tensor, q: torch.Tensor, cens: torch.Tensor,
               seed: int) -> float:
        """Pinball-loss training of one member; returns its last batch loss."""
        taus = torch.tensor([(1 - self.interval) / 2, 0.5, (1 + self.interval) / 2], device=self.device_)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay, foreach=True)
        steps = self.epochs * int(np.ceil(len(x) / self.batch_size))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=steps)
        g = torch.Generator(device="cpu").manual_seed(seed)
        amp = autocast_enabled(self.precision, self.device_)
        net.train()
        for _ in range(self.epochs):
            for idx in torch.randperm(len(x), generator=g).split(self.batch_size):
                idx = idx.to(self.device_)
                with torch.autocast(self.device_.type, dtype=torch.bfloat16, enabled=amp):
                    lt, lq = net.log_quantiles(x[idx], trained=True)
                seen = ~cens[idx]
                loss = pinball(lt.float(), t[idx], taus, cens[idx]) + pinball(lq[seen].float(), q[idx][seen], taus)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        return float(loss.detach())

    def scale_intervals(self, time: float = 1.0, quantity: float = 1.0) -> Self:
        """Set the factor on the log-space interval gaps (of time, of quantity) of every net: 1 is the trained
        interval; ``interval_scale`` finds the factor that makes validation rows' coverage ``interval``."""
        if not hasattr(self, "net_"):
            raise RuntimeError("ReplenishmentForecaster is not fitted; call fit first")
        for net in getattr(self.net_, "nets", [self.net_]):
            net.spread.copy_(torch.tensor([time, quantity]))
        return self

    def interval_blend(self, blend: float = 0.0) -> Self:
        """Weight in [0, 1] of each series' own gap spread in the time interval's gaps (module docstring) in every
        net; 0: the net's gaps as trained. Set it before ``interval_scale`` calibrates the factor."""
        if not hasattr(self, "net_"):
            raise RuntimeError("ReplenishmentForecaster is not fitted; call fit first")
        if not 0.0 <= blend <= 1.0:
            raise ValueError(f"blend must be within [0, 1], got {blend!r}")
        for net in getattr(self.net_, "nets", [self.net_]):
            net.blend.fill_(float(blend))
        return self

    def exact_periods(self, on: bool = True) -> Self:
        """Answer machines with an exact period by it (module docstring) in every net, or not (as trained)."""
        if not hasattr(self, "net_"):
            raise RuntimeError("ReplenishmentForecaster is not fitted; call fit first")
        for net in getattr(self.net_, "nets", [self.net_]):
            net.periods.fill_(float(on))
        return self

    def predict(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """``OUTPUTS`` as float64 arrays."""
        if not hasattr(self, "net_"):
            raise RuntimeError("ReplenishmentForecaster is not fitted; call fit first")
        with torch.no_grad():
            out = self.net_(torch.as_tensor(X, dtype=torch.float32, device=self.device_))
        return {name: v.double().cpu().numpy() for name, v in zip(OUTPUTS, out)}


def exact_period_rows(X: np.ndarray) -> np.ndarray:
    """The rows ``ReplenishmentForecaster.exact_periods`` answers by their period when on (as the net decides, in
    float32): ``EXACT_MIN_ORDERS`` orders or more, gap CV at most ``EXACT_GAP_CV``. Their interval is the clock's
    hour either side, untouched by ``scale_intervals`` and ``interval_blend``: calibrate on the other rows."""
    x = np.asarray(X, dtype=np.float32)
    return ((x[:, FEATURES.index("log_orders")] >= np.float32(np.log1p(EXACT_MIN_ORDERS)))
            & (x[:, FEATURES.index("gap_cv")] <= np.float32(EXACT_GAP_CV)))


def interval_scale(out: dict[str, np.ndarray], T: np.ndarray, censored: np.ndarray, horizon: float,
                   level: float = 0.8) -> float:
    """Split-conformal factor on the time intervals' log-space gaps: the smallest that makes ``level`` of the rows'
    intervals (``predict``'s output, made with factor 1) hold their truth, by the (n + 1) rank of each row's own
    factor. A censored row (``T`` > ``horizon``) is held once the upper end reaches the horizon."""
    mid, low, high = (np.log1p(out[k]) for k in ("time", "time_low", "time_high"))
    y = np.log1p(np.where(censored, horizon, T))
    down, up = np.maximum(mid - low, 1e-9), np.maximum(high - mid, 1e-9)
    need = np.where(censored, np.maximum(y - mid, 0.0) / up, np.where(y < mid, (mid - y) / down, (y - mid) / up))
    rank = min(int(np.ceil((len(need) + 1) * level)), len(need))
    return float(np.sort(need)[rank - 1])
