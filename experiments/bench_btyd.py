"""BG/NBD fit time on a million simulated customers.

    python -m experiments.bench_btyd              # 1M customers from the CDNOW estimates
    python -m experiments.bench_btyd --n 100000   # a quick look

Customers are drawn from BG/NBD's generative process with the published CDNOW parameters (Fader, Hardie & Lee
2005: r 0.243, alpha 4.414, a 0.793, b 2.426, weeks) and ages T uniform on 27-39 weeks (the CDNOW cohort's first
purchases span 12 weeks of a 39-week calibration). The fit is timed from the arrays to the fitted model (input
checks, all starts, the identification check) after a small warm-up fit that pays torch's one-off imports;
scoring the same customers is timed too. Results go to MLflow (experiment ``bench-btyd``) and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from experiments.report import write_section
from twins.models.btyd import BetaGeoModel

TRUTH = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
GOAL_S = 60.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="customers to simulate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = ap.parse_args()

    truth = BetaGeoModel.from_params(TRUTH, device=args.device)
    start = time.perf_counter()
    ages = np.random.default_rng(args.seed).uniform(27, 39, args.n)
    x, t_x, T = truth.sample(args.n, ages, seed=args.seed + 1)
    sample_s = time.perf_counter() - start

    BetaGeoModel(device=args.device).fit(x[:10_000], t_x[:10_000], T[:10_000])  # one-off imports (torch.optim)
    model = BetaGeoModel(device=args.device)
    start = time.perf_counter()
    model.fit(x, t_x, T)
    fit_s = time.perf_counter() - start

    start = time.perf_counter()
    expected = model.expected_purchases(39.0, x, t_x, T)
    p_any = model.p_at_least_one(39.0, x, t_x, T)
    score_s = time.perf_counter() - start
    device = str(model.device_)
    print(f"{args.n:,} customers on {device} ({torch.get_num_threads()} threads): sample {sample_s:.2f} s, "
          f"fit {fit_s:.2f} s ({model.n_iter_} L-BFGS iterations, converged {model.converged_}), "
          f"score {score_s:.2f} s; params {model.params_}", flush=True)

    from twins import tracking

    metrics = {"sample_s": sample_s, "fit_s": fit_s, "score_s": score_s, "n_iter": model.n_iter_,
               "converged": float(model.converged_), "log_likelihood": model.log_likelihood_,
               **{f"fitted/{k}": v for k, v in model.params_.items()},
               **{f"rel_error/{k}": model.params_[k] / v - 1 for k, v in TRUTH.items()},
               "mean_expected_purchases_39w": float(expected.mean()), "mean_p_at_least_one_39w": float(p_any.mean())}
    tags = {"dataset": "simulated-bgnbd-cdnow-params", "protocol": "parameter recovery, BG/NBD generative process",
            "model": "BG/NBD"}
    with tracking.run("bench-btyd", "bgnbd-1m", tags=tags) as mlflow:
        tracking.log_params(mlflow, {"n": args.n, "seed": args.seed, "device": device,
                                     "torch_threads": torch.get_num_threads(), "truth": TRUTH,
                                     "model": {"penalizer": model.penalizer, "n_starts": model.n_starts,
                                               "max_iter": model.max_iter, "tol": model.tol}})
        tracking.log_metrics(mlflow, metrics)
        run_id = mlflow.active_run().info.run_id

    verdict = "met" if fit_s < GOAL_S else "NOT met"
    rows = "\n".join(f"| {k} | {v} | {model.params_[k]:.4f} | {model.params_[k] / v - 1:+.2%} |"
                     for k, v in TRUTH.items())
    body = f"""BG/NBD (`twins.models.btyd.BetaGeoModel`, float64, default settings: {model.n_starts} L-BFGS starts,
each to the float64 optimum) on {args.n:,} customers drawn from its generative process with the CDNOW estimates,
T uniform on 27-39 weeks; device {device}, {torch.get_num_threads()} torch threads.

| step | wall time |
|---|---|
| sample {args.n:,} customers | {sample_s:.2f} s |
| **fit** (checks, {model.n_starts} starts, identification check) | **{fit_s:.2f} s** (goal < {GOAL_S:.0f} s: {verdict}) |
| score: expected purchases and P(>= 1 purchase) over 39 weeks | {score_s:.2f} s |

L-BFGS iterations of the chosen start: {model.n_iter_}; converged: {model.converged_}; log-likelihood
{model.log_likelihood_:,.1f}.

| parameter | truth | fitted | relative error |
|---|---|---|---|
{rows}

MLflow run `{run_id}` (experiment `bench-btyd`)."""
    write_section("btyd-fit", f"BTYD: BG/NBD fit on {args.n:,} simulated customers",
                  "python -m experiments.bench_btyd",
                  f"{args.n:,} customers simulated from BG/NBD with the CDNOW estimates (seed {args.seed})", body)


if __name__ == "__main__":
    main()
