"""GPU readiness: a short training of every network twins trains, on the accelerator in fp32 and bf16 autocast,
against the same training on the CPU in fp32, and a DDP step; one table, a JSON of the figures, exit code 1 on any
failed check.

    python -m experiments.device_check --out /tmp/device_check.json   # CUDA when available (< 8 min on one GPU)
    python -m experiments.device_check --dry --out /tmp/dry.json      # CPU only, tiny sizes (< 1 min on 2 cores)

``--benchmarks`` also writes the table into BENCHMARKS.md ("GPU readiness") and logs the figures to MLflow.

Networks (each through its estimator's own ``fit``, on seeded generated data): the next-basket network
(``NeuralNextBasket``, with the full softmax and with ``sampled_items``), the neural outlook (``NeuralOutlook``,
one member), the replenishment forecaster (``ReplenishmentForecaster``) and the emotion classifier with the small
encoder (``EmotionClassifier``, dropout 0: CPU and CUDA draw different dropout masks), each with ``precision``
``"fp32"`` or ``"bf16"`` (autocast of every training step; the next-basket and emotion estimators' default on
CUDA, an option for the outlook and replenishment, whose default stays fp32). Compared loss: the last epoch's
mean training loss (next basket, emotion),
the validation NLL after the last epoch (outlook), the last batch's pinball loss (replenishment). Every run starts
from the same weights and visits the same batches, so the difference is arithmetic alone:

* fp32: ``|loss - cpu| <= 2e-3 * max(|cpu|, 0.1)``. CUDA and CPU kernels sum in other orders (and scatter-add's
  atomics in any order), about 1e-6 relative per step; a few hundred optimiser steps amplify that to 1e-5..1e-4.
  A real fault (a tensor left on the wrong device, a mask or dtype bug) moves the loss by percents.
* bf16: ``|loss - cpu| <= 5e-2 * max(|cpu|, 0.1)``. bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2 %
  per operand); through two to four matmuls and a few hundred steps the loss drifts by up to a few percent, while
  NaN, overflow or a broken autocast path does far more.

DDP step (the two networks twins trains under ``torchrun``: next basket and emotion): a 2-process step where two
GPUs exist (nccl), else one process on the one GPU (nccl), and 2 processes with gloo on CPU; each rank takes its
half of a fixed batch through ``DistributedDataParallel``. Checks: the all-reduced gradients equal one process's
full-batch gradients (``max |g - g_full| <= 1e-4 * max |g_full|``), the mean of the ranks' losses equals the
full-batch loss (fp32 rule above) and after an SGD step every rank holds the same weights (exactly).

Epoch time is the estimator's fit wall time over its epochs (data preparation included; CUDA synchronised); the
first row also carries the process's one-time start-up costs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from twins.emotion.classifier import SMALL, EmotionClassifier, EmotionNet
from twins.emotion.encoder import Encoder, EncoderConfig
from twins.models.nbr_net import NeuralNextBasket, RepeatExploreNet
from twins.models.outlook_net import NeuralOutlook
from twins.models.replenishment_torch import ReplenishmentForecaster
from twins.runtime.next_basket_features import network_inputs

FP32_TOL, BF16_TOL, GRAD_TOL, LOSS_FLOOR = 2e-3, 5e-2, 1e-4, 0.1
CUTOFF_DAY = 20_000.0  # the outlook's cut-off, days since 1970-01-01 (2024-10-04)
SIZES = {  # dry: CPU, tiny; full: what one GPU runs in a few minutes (the CPU reference included)
    "dry": {"users": 160, "items": 80, "texts": 64, "customers": 200, "windows": 4, "rows": 2_000, "epochs": 2,
            "batch": 32, "text_batch": 16, "max_length": 16, "ddp_batch": 8},
    "full": {"users": 20_000, "items": 3_000, "texts": 4_000, "customers": 20_000, "windows": 8, "rows": 200_000,
             "epochs": 2, "batch": 256, "text_batch": 32, "max_length": 32, "ddp_batch": 64},
}
WORDS = {0: "happy glad wonderful thanks great", 1: "angry furious hate stupid awful", 2: "scared afraid worried nervous",
         3: "the report arrives on tuesday morning"}


@dataclass
class Row:
    network: str
    device: str
    dtype: str
    epoch_s: float
    loss: float
    diff: float
    tolerance: float
    passed: bool
    error: str = ""


# --------------------------------------------------------------------------------------------- generated data

def basket_data(n_users: int, n_items: int, seed: int = 0) -> tuple[dict, dict]:
    """Histories (3-8 baskets) and target baskets with repeat habits: each user buys mostly from its own favourites."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1)
    popularity /= popularity.sum()
    histories, targets = {}, {}
    for u in range(n_users):
        favourites = rng.choice(n_items, 6, replace=False, p=popularity)

        def basket(favourites: np.ndarray = favourites) -> list[int]:
            own = rng.choice(favourites, rng.integers(1, 4), replace=False)
            return sorted({*own.tolist(), *rng.choice(n_items, rng.integers(0, 3), p=popularity).tolist()})
        histories[u] = [basket() for _ in range(rng.integers(3, 9))]
        targets[u] = basket()
    return histories, targets


def texts_data(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts whose words reveal their labels (one or two of four)."""
    rng = np.random.default_rng(seed)
    texts, y = [], np.zeros((n, 4), np.float32)
    for i in range(n):
        labels = rng.choice(4, 1 + (rng.random() < 0.2), replace=False)
        y[i, labels] = 1
        words = [w for label in labels for w in rng.choice(WORDS[label].split(), 2, replace=False)]
        texts.append(" ".join(rng.permutation(words + ["so", "today"])))
    return texts, y


def purchase_days(n_customers: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer code, age in days at the cut-off, spend) of purchase days over 60 weeks (over a year: the outlook
    fits its calendar), customer rates Gamma, more purchases in December."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(2.0, 6.0, n_customers)) + 1
    code = np.repeat(np.arange(n_customers), counts)
    age = rng.uniform(0.5, 420.0, len(code))
    keep = ((CUTOFF_DAY - age) % 365.25 > 334) | (rng.random(len(code)) < 0.7)  # December's days all kept
    return code[keep], age[keep], rng.gamma(3.0, 10.0, int(keep.sum()))


def machine_rows(n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Features, days to the next order, quantity, censored (no order within 60 days)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype(np.float32)
    t = np.exp(2.5 + 0.5 * x[:, 0] - 0.3 * x[:, 1] + 0.3 * rng.normal(size=n))
    q = np.exp(1.0 + 0.4 * x[:, 2] + 0.2 * rng.normal(size=n))
    censored = t > 60.0
    return x, np.where(censored, np.nan, t), q, censored


# --------------------------------------------------------------------------------------------- training runs

def fit_next_basket(size: dict, device: str, precision: str, sampled_items: int | None = None) -> tuple[float, int]:
    histories, targets = basket_data(size["users"], size["items"])
    model = NeuralNextBasket(knn=20, dim=32, hidden=32, batch_size=size["batch"], max_epochs=size["epochs"],
                             sampled_items=sampled_items, device=device, precision=precision).fit(histories, targets)
    return model.history_[-1]["train_loss"], size["epochs"]


def fit_next_basket_sampled(size: dict, device: str, precision: str) -> tuple[float, int]:
    """The sampled softmax (a quarter of the catalogue drawn per batch; its draws are seeded, so CPU and device
    train on the same columns)."""
    return fit_next_basket(size, device, precision, sampled_items=max(1, size["items"] // 4))


def fit_outlook(size: dict, device: str, precision: str) -> tuple[float, int]:
    code, age, spend = purchase_days(size["customers"])
    model = NeuralOutlook(n_members=1, max_epochs=size["epochs"], patience=size["epochs"], max_windows=size["windows"],
                          device=device, precision=precision).fit(code, age, spend, 13, CUTOFF_DAY)
    if not model.calendar_["status"].startswith("fitted"):
        raise RuntimeError(f"the outlook's calendar was not fitted ({model.calendar_['status']}): its path went unchecked")
    return model.history_[0][-1], size["epochs"]


def fit_replenishment(size: dict, device: str, precision: str) -> tuple[float, int]:
    x, t, q, censored = machine_rows(size["rows"])
    model = ReplenishmentForecaster(epochs=size["epochs"], batch_size=4 * size["batch"], device=device,
                                    precision=precision).fit(x, t, q, censored, 60.0)
    return model.loss_, size["epochs"]


def fit_emotion(size: dict, device: str, precision: str) -> tuple[float, int]:
    texts, y = texts_data(size["texts"], 0)
    dev_texts, dev_y = texts_data(max(32, size["texts"] // 4), 1)
    model = EmotionClassifier(encoder="small", epochs=size["epochs"], lr=1e-3, batch_size=size["text_batch"],
                              max_length=size["max_length"], dropout=0.0, patience=size["epochs"], device=device,
                              precision=precision).fit(texts, y, dev_texts, dev_y)
    return model.history_[-1]["train_loss"], size["epochs"]


NETWORKS: dict[str, Callable[[dict, str, str], tuple[float, int]]] = {
    "next basket": fit_next_basket, "next basket (sampled softmax)": fit_next_basket_sampled,
    "outlook": fit_outlook, "replenishment": fit_replenishment,
    "emotion (small encoder)": fit_emotion}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_fit(fit: Callable, size: dict, device: str, precision: str) -> tuple[float, float]:
    """(loss, seconds per epoch)."""
    _sync(device)
    started = time.perf_counter()
    loss, epochs = fit(size, device, precision)
    _sync(device)
    return float(loss), (time.perf_counter() - started) / epochs


def within(loss: float, reference: float, tolerance: float) -> bool:
    return math.isfinite(loss) and abs(loss - reference) <= tolerance * max(abs(reference), LOSS_FLOOR)


def training_rows(size: dict, device: str) -> list[Row]:
    """Per network: CPU fp32 (the reference), then ``device`` in fp32 and bf16."""
    rows = []
    for name, fit in NETWORKS.items():
        try:
            reference, seconds = timed_fit(fit, size, "cpu", "fp32")
            rows.append(Row(name, "cpu", "fp32", seconds, reference, 0.0, 0.0, math.isfinite(reference)))
        except Exception:
            rows.append(Row(name, "cpu", "fp32", math.nan, math.nan, math.nan, 0.0, False, traceback.format_exc(limit=3)))
            continue
        for precision, tolerance in (("fp32", FP32_TOL), ("bf16", BF16_TOL)):
            try:
                loss, seconds = timed_fit(fit, size, device, precision)
                rows.append(Row(name, device, precision, seconds, loss, abs(loss - reference), tolerance,
                                within(loss, reference, tolerance)))
            except Exception:
                rows.append(Row(name, device, precision, math.nan, math.nan, math.nan, tolerance, False,
                                traceback.format_exc(limit=3)))
    return rows


# --------------------------------------------------------------------------------------------- DDP step

def next_basket_case(size: dict) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], Callable]:
    """The next-basket network, one fixed batch of its inputs, and its training loss."""
    n, batch = size["items"], size["ddp_batch"]
    histories, targets = basket_data(batch, n, seed=1)
    feeds = network_inputs(list(histories.values()), n, 50)
    g = torch.Generator().manual_seed(1)
    y = torch.zeros(batch, n)
    for r, target in enumerate(targets.values()):
        y[r, target] = 1.0
    inputs = (torch.from_numpy(feeds["baskets"]), torch.from_numpy(feeds["items"]), 0.1 * torch.rand(batch, 2 * n, generator=g),
              torch.randint(0, 20, (batch, n), generator=g).float(), y)
    torch.manual_seed(1)

    def loss(model: torch.nn.Module, baskets, items, context, popularity, target) -> torch.Tensor:
        scores = model(baskets, items, context, popularity)
        return -(torch.log_softmax(scores.float(), -1) * target).sum(-1).div(target.sum(-1)).mean()
    return RepeatExploreNet(n, 32, 32), inputs, loss


def emotion_case(size: dict) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], Callable]:
    """The emotion network with the small encoder (dropout 0), a fixed batch of token ids, and BCE."""
    batch, width = size["ddp_batch"], size["max_length"]
    g = torch.Generator().manual_seed(2)
    lengths = torch.randint(3, width + 1, (batch,), generator=g)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1000, 3000, (batch, width), generator=g) * mask
    y = (torch.rand(batch, 4, generator=g) < 0.3).float()
    torch.manual_seed(2)
    net = EmotionNet(Encoder(EncoderConfig(**{**SMALL.__dict__, "dropout": 0.0})), 4, 0.0)

    def loss(model: torch.nn.Module, input_ids, attention_mask, target) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(model(input_ids, attention_mask).float(), target)
    return net, (ids, mask, y), loss


DDP_NETWORKS = {"next basket": next_basket_case, "emotion (small encoder)": emotion_case}


def ddp_worker(rank: int, world: int, backend: str, init_file: str, size: dict, out: str) -> None:
    """One rank of the DDP step (``torch.multiprocessing`` entry point); rank 0 writes the figures to ``out``."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {}
    for name, case in DDP_NETWORKS.items():
        net, inputs, loss_fn = case(size)
        net, inputs = net.to(device), tuple(t.to(device) for t in inputs)
        params = [p for p in net.parameters() if p.requires_grad]
        full = loss_fn(net, *inputs)
        full_grads = torch.autograd.grad(full, params)
        model = DistributedDataParallel(net, device_ids=[rank] if device.type == "cuda" else None)
        share = len(inputs[0]) // world
        _sync(str(device))
        started = time.perf_counter()
        loss = loss_fn(model, *(t[rank * share:(rank + 1) * share] for t in inputs))
        loss.backward()
        torch.optim.SGD(params, lr=0.1).step()
        _sync(str(device))
        seconds = time.perf_counter() - started
        scale = max(float(g.abs().max()) for g in full_grads)
        grad_error = max(float((p.grad - g).abs().max()) for p, g in zip(params, full_grads)) / max(scale, 1e-12)
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        weights = torch.cat([p.detach().flatten() for p in params])
        rank0 = weights.clone()
        dist.broadcast(rank0, 0)
        spread = (weights - rank0).abs().max()
        dist.all_reduce(spread, op=dist.ReduceOp.MAX)
        results[name] = {"step_s": seconds, "loss": float(mean_loss) / world, "full_loss": float(full.detach()),
                         "grad_error": grad_error, "weight_spread": float(spread)}
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def ddp_rows(size: dict, accelerator: bool) -> tuple[list[Row], dict]:
    """The DDP step on 2 GPUs, else 1 GPU, else 2 CPU processes (gloo); rows and the raw figures."""
    import torch.multiprocessing as mp

    gpus = torch.cuda.device_count() if accelerator else 0
    world, backend = (min(2, gpus), "nccl") if gpus else (2, "gloo")
    label = f"{'cuda' if gpus else 'cpu'} DDP x{world} ({backend})"
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "ddp.json"
        try:
            mp.start_processes(ddp_worker, (world, backend, str(Path(folder) / "init"), size, str(out)), nprocs=world,
                               start_method="spawn")
            figures = json.loads(out.read_text())
        except Exception:
            error = traceback.format_exc(limit=3)
            return [Row(name, label, "fp32", math.nan, math.nan, math.nan, FP32_TOL, False, error) for name in DDP_NETWORKS], {}
    rows = [Row(name, label, "fp32", f["step_s"], f["loss"], abs(f["loss"] - f["full_loss"]), FP32_TOL,
                within(f["loss"], f["full_loss"], FP32_TOL) and f["grad_error"] <= GRAD_TOL and f["weight_spread"] == 0.0)
            for name, f in figures.items()]
    return rows, {"world": world, "backend": backend, **figures}


# --------------------------------------------------------------------------------------------- report

def device_name(accelerator: bool) -> str:
    if accelerator:
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()} (CUDA {torch.version.cuda})"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def table(rows: list[Row]) -> str:
    lines = ["| network | device | dtype | epoch s | loss | abs(loss - cpu loss) | tolerance (relative) | check |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tolerance = "reference" if r.tolerance == 0.0 else f"{r.tolerance:g}"
        lines.append(f"| {r.network} | {r.device} | {r.dtype} | {r.epoch_s:.3f} | {r.loss:.5f} | {r.diff:.2e} | "
                     f"{tolerance} | {'pass' if r.passed else 'FAIL'} |")
    return "\n".join(lines)


def run(dry: bool) -> dict:
    """Every check; the figures as a JSON-able dict."""
    from twins.threads import set_threads

    started = time.perf_counter()
    set_threads()
    accelerator = torch.cuda.is_available() and not dry
    device = "cuda" if accelerator else "cpu"
    if accelerator:
        torch.ones(1, device=device).matmul(torch.ones(1, device=device))  # context and cuBLAS start outside the timings
    size = SIZES["dry" if dry else "full"]
    rows = training_rows(size, device)
    ddp, ddp_figures = ddp_rows(size, accelerator)
    rows += ddp
    return {"mode": "dry" if dry else device, "device": device_name(accelerator), "torch": torch.__version__,
            "python": platform.python_version(), "sizes": size,
            "tolerances": {"fp32": FP32_TOL, "bf16": BF16_TOL, "ddp_grad": GRAD_TOL, "loss_floor": LOSS_FLOOR},
            "rows": [asdict(r) for r in rows], "ddp": ddp_figures, "seconds": time.perf_counter() - started,
            "passed": all(r.passed for r in rows)}


def record(report: dict, rows: list[Row], command: str) -> None:
    """BENCHMARKS.md's "GPU readiness" section and an MLflow run of the figures."""
    from experiments.report import write_section
    from twins import tracking

    where = ("CUDA" if report["mode"] == "cuda" else
             "CPU only; no CUDA device was available in this session, so the GPU figures are still to be recorded")
    ddp = report["ddp"]
    steps = (f"DDP step ({ddp['world']} processes, {ddp['backend']}): all-reduced gradients off the full batch's by "
             + ", ".join(f"{ddp[n]['grad_error']:.1e}" for n in DDP_NETWORKS if n in ddp)
             + f" relative (limit {GRAD_TOL:g}), weights identical on every rank. " if ddp else "")
    summary = (f"{report['device']}; torch {report['torch']}; mode `{report['mode']}`: {where}. "
               f"{report['seconds']:.0f} s in all; every check {'passed' if report['passed'] else 'did NOT pass'}. "
               f"{steps}Tolerances and protocol: the module docstring of `experiments/device_check.py`.")
    body = "\n".join([summary, "", table(rows)])
    write_section("gpu-readiness", "GPU readiness", command, "generated, seeded (baskets, purchase days, machine rows, "
                  "texts; sizes in the JSON's `sizes`)", body)
    with tracking.run("device-check", f"device-check-{report['mode']}", tags={"device": report["device"]}) as mlflow:
        mlflow.log_params({"mode": report["mode"], "torch": report["torch"], **report["tolerances"]})
        mlflow.log_metrics({f"{r.network}/{r.device}/{r.dtype}/{k}".replace(" ", "_").replace("(", "").replace(")", ""): v
                            for r in rows for k, v in (("epoch_s", r.epoch_s), ("loss", r.loss), ("diff", r.diff))
                            if math.isfinite(v)} | {"passed": float(report["passed"])})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", "--cpu", action="store_true", help="CPU only, tiny sizes (the CI check)")
    ap.add_argument("--out", type=Path, help="write the figures here as JSON")
    ap.add_argument("--benchmarks", action="store_true", help="write BENCHMARKS.md's section and log to MLflow")
    args = ap.parse_args(argv)
    report = run(args.dry)
    rows = [Row(**r) for r in report["rows"]]
    if args.benchmarks:
        record(report, rows, "python -m experiments.device_check" + (" --dry" if args.dry else "") + " --benchmarks")
    print(f"{report['device']}; torch {report['torch']}; mode {report['mode']}; {report['seconds']:.0f} s")
    print(table(rows))
    for r in rows:
        if r.error:
            print(f"\n{r.network} on {r.device} ({r.dtype}) failed:\n{r.error}", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    print("all checks passed" if report["passed"] else "SOME CHECKS FAILED")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
