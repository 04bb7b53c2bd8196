"""The replenishment forecaster (``twins.models.replenishment_torch``) as an ONNX bundle that the torch-free
runtime (``twins.runtime.ReplenishmentBundle``) feeds from a machine's raw orders and readings.

The graph outputs the quantiles in the net's log space (``log1p`` of the days, ``log`` of the quantity); the runtime
maps them back in float64. Parity within 1e-4 there is a relative 1e-4 on the answers, which float32 can keep for
quantities in the hundreds (an absolute 1e-4 on the units themselves it cannot).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from twins.export import check_parity, export_bundle
from twins.models.replenishment_torch import ReplenishmentForecaster, ReplenishmentNet
from twins.runtime.replenishment import INPUT, LOG_OUTPUTS
from twins.runtime.replenishment_features import FEATURES, RECENT_DAYS

TASK = "replenishment"


class LogQuantiles(nn.Module):
    """``forward(features [batch, F])`` -> the net's six log-space quantiles, ``LOG_OUTPUTS`` in order."""

    def __init__(self, net: ReplenishmentNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        t, q = self.net.log_quantiles(x)
        return t[:, 0], t[:, 1], t[:, 2], q[:, 0], q[:, 1], q[:, 2]


def export_replenishment(model: ReplenishmentForecaster, out_dir: str | Path, *, name: str = "replenishment",
                         version: str = "1", metrics: dict[str, float] | None = None, run_id: str | None = None,
                         overwrite: bool = False, provenance: dict | None = None) -> Path:
    """Export a fitted forecaster (its net takes the raw ``FEATURES``; standardisation is inside), check parity
    within 1e-4 (log space) at several batch sizes, return the bundle folder."""
    if not hasattr(model, "net_"):
        raise RuntimeError("ReplenishmentForecaster is not fitted; call fit first")
    net = copy.deepcopy(model.net_).to("cpu").eval()
    scorer = LogQuantiles(net)
    manifest = {
        "name": name, "version": version, "task": TASK, "model": "MLP quantile forecaster (10/50/90 %)",
        "params": {"hidden": model.hidden, "epochs": model.epochs, "members": model.members, "seed": model.seed},
        "features": list(FEATURES),
        "preprocessing": {"horizon_days": model.horizon_, "interval": model.interval, "recent_days": RECENT_DAYS,
                          "min_orders": 3, "time_unit": "days since the Unix epoch",
                          "features": "twins.runtime.replenishment_features.features"},
        "metrics": dict(metrics or {}), "training_run_id": run_id,
        **(provenance or {}),  # data_source, data_until: twins.provenance
    }

    def batch(n: int, seed: int) -> tuple[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return (net.mean + net.std * torch.randn(n, len(FEATURES), generator=g),)

    path = export_bundle(scorer, batch(8, 0), out_dir, manifest, input_names=[INPUT], output_names=LOG_OUTPUTS,
                         dynamic_axes={"x": {0: "batch"}}, overwrite=overwrite)
    check_parity(scorer, path, [batch(n, n) for n in (1, 5, 64, 1000)], atol=1e-4)
    return path
