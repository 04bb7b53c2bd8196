"""The purchase outlook (BG/NBD + Gamma-Gamma closed forms) as one module, exported as an ONNX bundle that the
torch-free runtime (``twins.runtime.OutlookBundle``) feeds from a customer's raw purchase history."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from twins.export import check_parity, export_bundle
from twins.models.btyd import BetaGeoModel, GammaGammaModel
from twins.models.outlook_net import NeuralOutlook, OutlookScorer as NeuralScorer, horizon_weeks
from twins.runtime.outlook import INPUTS, NET_OUTPUTS
from twins.runtime.outlook_features import CAL_WEEKS, CAL_WINDOWS, NAMES, Calendar, covariate_names

TASK = "purchase_outlook"
OUTPUTS = ("expected_purchases", "p_alive", "p_any_purchase", "expected_spend", "next_low", "next_median", "next_high")


class OutlookScorer(nn.Module):
    """``forward(x, t_x, T, m, t)`` on float64 ``[batch]`` tensors (repeat purchase days, time of the last, age,
    mean spend of the repeat days, horizon; model time units) -> expected purchase days and spend in the horizon,
    P(alive), P(>= 1 purchase), and the quantiles (``interval`` low, median, high) of the time to the next
    purchase of an alive customer: (α+T)((1−q)^(−1/(r+x)) − 1), the Lomax waiting time of the rate posterior.
    Gamma-Gamma needs a positive mean spend: where m <= 0 the spend per purchase day is the population mean."""

    def __init__(self, bgnbd: BetaGeoModel, gamma_gamma: GammaGammaModel, interval: float = 0.8) -> None:
        super().__init__()
        self.counts = bgnbd.scoring_module()
        self.spend = gamma_gamma.scoring_module()
        q = torch.tensor([(1 - interval) / 2, 0.5, (1 + interval) / 2], dtype=torch.float64)
        self.register_buffer("quantiles", q)

    def forward(self, x, t_x, T, m, t):
        expected, p_alive, p_any = self.counts(x, t_x, T, t)
        spend = expected * self.spend(torch.where(m > 0, x, torch.zeros_like(x)), m)  # m <= 0: population mean
        shape, scale = (self.counts.r + x).unsqueeze(1), (self.counts.alpha + T).unsqueeze(1)
        wait = scale * (torch.pow(1.0 - self.quantiles, -1.0 / shape) - 1.0)
        return expected, p_alive, p_any, spend, wait[:, 0], wait[:, 1], wait[:, 2]


def export_outlook(bgnbd: BetaGeoModel, gamma_gamma: GammaGammaModel, out_dir: str | Path, *, horizon_days: float,
                   unit_days: float = 7.0, interval: float = 0.8, name: str = "purchase-outlook", version: str = "1",
                   metrics: dict[str, float] | None = None, run_id: str | None = None, overwrite: bool = False,
                   spend: str = "net", calendar: dict | None = None, provenance: dict | None = None,
                   count_by: str = "day") -> Path:
    """Export the outlook of fitted models, check parity at several batch sizes, return the bundle folder.
    ``spend``: the models' spend is ``net`` of returns or ``gross`` (the runtime then leaves returns out).
    ``calendar``: a fitted ``SeasonalBetaGeoModel.calendar_`` (its ``counts_`` and ``spend_`` as the models): the
    runtime then computes the summary in calendar weeks and scales spend by the horizon's spend multiplier."""
    if calendar and "count" in calendar and unit_days != 7.0:
        raise ValueError(f"a calendar outlook counts time in weeks: unit_days must be 7, got {unit_days:g}")
    scorer = OutlookScorer(bgnbd, gamma_gamma, interval)
    manifest = {
        "name": name, "version": version, "task": TASK,
        "model": "BG/NBD + Gamma-Gamma" + (" on the calendar" if calendar and "count" in calendar else ""),
        "params": {"bgnbd": bgnbd.params_, "gamma_gamma": gamma_gamma.params_},
        "preprocessing": {"unit_days": unit_days, "horizon_days": horizon_days, "interval": interval,
                          "purchase_day": "UTC calendar day; several purchases on one day count once",
                          "m": "mean spend of the repeat purchase days (the first day excluded)", "spend": spend,
                          "calendar": calendar or {}, "count_by": count_by},
        "metrics": dict(metrics or {}), "training_run_id": run_id, **(provenance or {}),  # twins.provenance
    }

    def batch(n: int, seed: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        T = torch.rand(n, generator=g, dtype=torch.float64) * 50 + 0.5
        t_x = T * torch.rand(n, generator=g, dtype=torch.float64)
        x = torch.randint(0, 40, (n,), generator=g).to(torch.float64)
        t_x = torch.where(x > 0, t_x, torch.zeros_like(t_x))
        m = torch.where(x > 0, torch.rand(n, generator=g, dtype=torch.float64) * 80 + 1, torch.zeros_like(t_x))
        return x, t_x, T, m, torch.full((n,), horizon_days / unit_days, dtype=torch.float64)

    path = export_bundle(scorer, batch(8, 0), out_dir, manifest, input_names=INPUTS, output_names=OUTPUTS,
                         dynamic_axes={k: {0: "batch"} for k in INPUTS}, overwrite=overwrite)
    check_parity(scorer, path, [batch(n, n) for n in (1, 5, 64)], atol=1e-6)
    return path


NET_TASK = "purchase_outlook_net"


def export_neural_outlook(model: NeuralOutlook, out_dir: str | Path, *, horizon_days: float, interval: float = 0.8,
                          name: str = "purchase-outlook-net", version: str = "1", metrics: dict[str, float] | None = None,
                          run_id: str | None = None, overwrite: bool = False, spend: str = "net",
                          provenance: dict | None = None, covariates: list[dict] | None = None, count_by: str = "day") -> Path:
    """Export a fitted ``NeuralOutlook`` (all members, averaged in the graph) with its closed forms; the runtime
    (``twins.runtime.OutlookNetBundle``) computes the features and the calendar's weekly multipliers (the spec in
    the manifest's ``preprocessing.calendar``) from raw histories and as_of. Parity is checked at several
    batch sizes and horizons: 5e-3 absolute (weeks, for the waiting-time quantiles: where the survival curve is
    nearly flat, 1e-12 in it moves the interpolated quantile by ~1e-4, and the calendar's cumulative sums over 260
    weeks add such differences; measured up to 2.4e-3 on random smooth calendars) plus 1e-6 relative; the counts,
    spend and probabilities are checked against the model at rtol 1e-6 where the bundle is used."""
    scorer = NeuralScorer(model.members_, model.spend_factor_, interval)
    calendar = Calendar(model.calendar_)
    covariates = covariates or []
    if len(covariate_names(covariates)) != model.n_covariates_:
        raise ValueError(f"covariates spec gives {len(covariate_names(covariates))} columns, the model was fitted with "
                         f"{model.n_covariates_}: pass the spec its covariates were encoded with")
    names = [*NAMES, *covariate_names(covariates), *(f"calendar_{w}w" for w in CAL_WINDOWS if calendar.fitted)]
    manifest = {
        "name": name, "version": version, "task": NET_TASK, "model": f"neural outlook ({len(model.members_)} members)",
        "params": model.get_params(),
        "preprocessing": {"horizon_days": 7.0 * horizon_weeks(horizon_days), "unit_days": 7.0, "interval": interval,
                          "features": names, "new_customer_day_spend": model.day_spend_, "calendar": model.calendar_,
                          "covariates": covariates, "count_by": count_by,
                          "purchase_day": "UTC calendar day; several purchases on one day count once", "spend": spend},
        "metrics": dict(metrics or {}), "training_run_id": run_id, **(provenance or {}),  # twins.provenance
    }

    def batch(n: int, seed: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        x = scorer.members[0].mean + scorer.members[0].std * torch.randn(n, len(names), generator=g, dtype=torch.float64)
        # smooth random seasons, as calendars are: log multiplier a·cos(2π week / 52 + phase), a up to 0.5
        amplitude, phase = (0.5 * torch.rand(n, 1, generator=g, dtype=torch.float64) for _ in range(2))
        weeks = torch.arange(CAL_WEEKS, dtype=torch.float64)[None, :]
        cal = torch.exp(amplitude * torch.cos(2 * torch.pi * weeks / 52 + 12.0 * phase))
        return x, torch.randint(1, 60, (n,), generator=g).double(), cal, torch.exp(0.3 * torch.log(cal))

    inputs = ("x", "h", "cal", "spend_cal")
    path = export_bundle(scorer, batch(8, 0), out_dir, manifest, input_names=inputs, output_names=NET_OUTPUTS,
                         dynamic_axes={k: {0: "batch"} for k in inputs}, overwrite=overwrite)
    check_parity(scorer, path, [batch(n, n) for n in (1, 5, 64)], atol=5e-3, rtol=1e-6)
    return path
