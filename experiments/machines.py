"""Machine twins and next-order forecasts on held-out simulated machines.

    python -m experiments.machines                      # 4,000 machines, configs/sim/market.yaml
    python -m experiments.machines --set n_machines=1000 --epochs 10   # a quick look

Protocol: one simulated market (``configs/sim/market.yaml``, 365 days observed, 120 more for the truth); machines
with >= 3 orders split at random 70/30 (seed) into training and held-out machines. Twins: built as of the end of
the window on the held-out machines, from orders alone and from orders + telemetry (machines that send
readings), consumption-rate MAPE against the true mean daily demand of the window. Forecasts: training rows are
the training machines at cut-offs every 13 days from day 60 to 365 (every weekday in turn: the test cut-off's
weekday is not known in advance; target: the next order within 120 days, from the events); the test rows are the held-out machines at as_of with the simulator's ground-truth next order;
censoring-aware MAE (``twins.evaluate.replenishment``). The forecaster is exported as an ONNX bundle
(``$TWINS_HOME/models/sim_market-replenishment``; parity checked) and the torch-free runtime, fed the held-out
machines' raw orders and readings, must answer as the model does. Results go to MLflow (experiment ``machines``)
and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import torch

from experiments.report import write_section
from twins.evaluate.replenishment import coverage, replenishment_metrics
from twins.models.replenishment import baseline_predictions, histories, samples
from twins.models.replenishment_export import export_replenishment
from twins.models.replenishment_torch import ReplenishmentForecaster
from twins.paths import models_dir
from twins.runtime import load
from twins.sim import KINDS, load_config, simulate
from twins.twin.machine import MachineTwinParams, build_machine_twins

CONFIG = "configs/sim/market.yaml"
HORIZON = 120.0
CUTOFF_STEP = 13  # days between training cut-offs: not a multiple of 7, so they cover every weekday
DAY_S = 86_400
DAY_US = 86_400_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def rate_mape(twins: pl.DataFrame, truth: pl.DataFrame) -> pl.DataFrame:
    j = twins.join(truth, left_on="customer_id", right_on="machine_id", suffix="_true")
    ape = ((pl.col("rate") - pl.col("rate_true")).abs() / pl.col("rate_true"))
    return pl.concat([j.group_by("kind").agg(ape.mean().alias("mape"), pl.len().alias("n")),
                      j.select(pl.lit("all").alias("kind"), ape.mean().alias("mape"), pl.len().cast(pl.UInt32).alias("n"))])


def runtime_gap(bundle, hist: dict, machines: np.ndarray, as_of, out: dict[str, np.ndarray]) -> float:
    """Largest relative difference (``|a - b| / max(|b|, 1)``) between the runtime's answers, from each machine's
    raw orders and readings rebuilt as plain tuples (to the microsecond), and the model's ``out``."""
    when = lambda days: EPOCH + timedelta(microseconds=round(days * DAY_US))  # noqa: E731
    orders = [[(when(t), q, p) for t, q, p in zip(hist[m].t, hist[m].q, hist[m].promised)] for m in machines]
    readings = [[(when(t), s, u) for t, s, u in zip(hist[m].tel_t, hist[m].stock, hist[m].usage)] for m in machines]
    got = bundle.forecast(orders, as_of, readings)
    pairs = {"days": "time", "days_low": "time_low", "days_high": "time_high", "quantity": "quantity",
             "quantity_low": "quantity_low", "quantity_high": "quantity_high"}
    return max(float(np.max(np.abs(np.array([a[k] for a in got]) - out[v]) / np.maximum(np.abs(out[v]), 1.0)))
               for k, v in pairs.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="overrides", action="append", default=["n_machines=4000", "humans.n=0"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 avoids oversubscription on shared cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(CONFIG, [*args.overrides, f"horizon_days={int(HORIZON)}"])
    market = simulate(cfg)
    events, truth = market.events(), market.truth()
    hist = histories(events)
    ids = np.array(sorted(m for m, h in hist.items() if len(h.t[h.t < market.as_of.timestamp() / DAY_S]) >= 3))
    np.random.default_rng(args.seed).shuffle(ids)
    n_train = int(0.7 * len(ids))
    train, test = list(ids[:n_train]), list(ids[n_train:])

    held_out = events.filter(pl.col("customer_id").is_in(test))
    twin_tables = {}
    for label, use in (("orders alone", False), ("orders + telemetry", True)):
        twins = build_machine_twins(held_out, market.as_of, MachineTwinParams(use_telemetry=use))
        if use:
            twins = twins.filter(pl.col("source") == "telemetry")
        twin_tables[label] = rate_mape(twins, truth)

    start_day, as_of_day = cfg.start.timestamp() / DAY_S, market.as_of.timestamp() / DAY_S
    fit_rows = samples(hist, train, [start_day + d for d in range(60, cfg.days + 1, CUTOFF_STEP)], HORIZON)
    test_rows = samples(hist, test, [as_of_day], HORIZON)
    # the held-out target is the simulator's ground truth (the same order the events show)
    gt = truth.filter(pl.col("machine_id").is_in(test)).select(
        "machine_id", "kind", (pl.col("next_order_time") - pl.col("as_of")).dt.total_seconds().truediv(DAY_S).alias("T"),
        pl.col("next_order_quantity").alias("Q"), "censored")
    gt = pl.DataFrame({"machine_id": test_rows.machine}).join(gt, on="machine_id", how="left", maintain_order="left")
    T, Q, censored = gt["T"].fill_null(np.nan).to_numpy(), gt["Q"].fill_null(np.nan).to_numpy(), gt["censored"].to_numpy()
    T = np.where(censored | (T > HORIZON), np.nan, T)
    censored = censored | np.isnan(T)
    kind = gt["kind"].to_numpy()

    preds = {name: (t, q, None) for name, (t, q) in baseline_predictions(hist, test_rows).items()}
    start = time.perf_counter()
    model = ReplenishmentForecaster(epochs=args.epochs, seed=args.seed).fit(
        fit_rows.X, fit_rows.T, fit_rows.Q, fit_rows.censored, HORIZON)
    fit_s = time.perf_counter() - start
    out = model.predict(test_rows.X)
    preds["mlp_quantile (PyTorch)"] = (out["time"], out["quantity"], out)

    results = {}
    for name, (t, q, _) in preds.items():
        results[name] = {"all": replenishment_metrics(t, q, T, Q, censored, HORIZON)}
        for k in KINDS:
            s = kind == k
            results[name][k] = replenishment_metrics(t[s], q[s], T[s], Q[s], censored[s], HORIZON)
    naive = [n for n in preds if n != "mlp_quantile (PyTorch)"]
    best_time = min(naive, key=lambda n: results[n]["all"]["time_mae"])
    best_qty = min(naive, key=lambda n: results[n]["all"]["quantity_mae"])
    ours = results["mlp_quantile (PyTorch)"]["all"]
    gain_t = 1 - ours["time_mae"] / results[best_time]["all"]["time_mae"]
    gain_q = 1 - ours["quantity_mae"] / results[best_qty]["all"]["quantity_mae"]
    cov_t = coverage(out["time_low"], out["time_high"], T, censored, HORIZON)
    seen = ~censored
    cov_q = coverage(out["quantity_low"][seen], out["quantity_high"][seen], Q[seen], censored[seen], HORIZON)

    from twins import tracking

    with tracking.run("machines", "twins-and-replenishment",
                      tags={"dataset": "simulated-market", "protocol": "held-out machines, as_of = end of window",
                            "model": "machine twins + MLP quantile forecaster"}) as mlflow:
        tracking.log_params(mlflow, {"config": cfg.model_dump(mode="json"), "seed": args.seed, "epochs": args.epochs,
                                     "horizon_days": HORIZON, "train_machines": len(train), "test_machines": len(test),
                                     "train_rows": len(fit_rows.T)})
        mlflow.log_dict(cfg.model_dump(mode="json"), "market_config.json")
        for label, table in twin_tables.items():
            tracking.log_metrics(mlflow, {f"twin/{label.replace(' ', '_').replace('+', 'and')}/rate_mape/{k}": v
                                          for k, v in zip(table["kind"], table["mape"])})
        for name, by_kind in results.items():
            for k, metrics in by_kind.items():
                tracking.log_metrics(mlflow, {f"test/{name.split(' ')[0]}/{k}/{m}": v for m, v in metrics.items()})
        tracking.log_metrics(mlflow, {"test/time_interval_coverage": cov_t, "test/quantity_interval_coverage": cov_q,
                                      "test/time_mae_gain": gain_t, "test/quantity_mae_gain": gain_q, "fit_s": fit_s})
        run_id = mlflow.active_run().info.run_id
        bundle = export_replenishment(model, models_dir() / "sim_market-replenishment", run_id=run_id, overwrite=True,
                                      metrics={"time_mae": ours["time_mae"], "quantity_mae": ours["quantity_mae"],
                                               "time_coverage": cov_t, "quantity_coverage": cov_q})
        runtime_diff = runtime_gap(load(bundle), hist, test_rows.machine, market.as_of, out)
        tracking.log_metrics(mlflow, {"bundle/runtime_max_rel_diff": runtime_diff})
        mlflow.log_artifacts(str(bundle), "bundle")

    twin_rows = "\n".join(f"| {label} | " + " | ".join(
        f"{row['mape']:.2%} ({row['n']})" for row in table.sort("kind").iter_rows(named=True)) + " |"
        for label, table in twin_tables.items())
    kinds_header = " | ".join(sorted(twin_tables["orders alone"]["kind"]))
    fc_rows = "\n".join(
        f"| {name} | {r['all']['time_mae']:.2f} | {r['all']['quantity_mae']:.2f} | "
        + " | ".join(f"{r[k]['time_mae']:.2f} / {r[k]['quantity_mae']:.2f}" for k in KINDS) + " |"
        for name, r in results.items())
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    body = f"""Protocol: {cfg.n_machines:,} simulated machines (`{CONFIG}`, seed {cfg.seed}, {cfg.days} days observed,
{int(HORIZON)} more for the truth); machines with >= 3 orders split 70/30 at random (seed {args.seed}):
{len(train):,} training, {len(test):,} held out. Twins as of the end of the window on the held-out machines;
consumption-rate MAPE against the true mean daily demand of the window (count of machines in brackets;
"orders + telemetry" = the held-out machines that send readings).

| twin | {kinds_header} |
|---|---|---|---|---|
{twin_rows}

Acceptance: MAPE <= 5 % with telemetry ({verdict(twin_tables['orders + telemetry'].filter(pl.col('kind') == 'all')['mape'][0] <= 0.05)}), <= 15 % from orders alone
({verdict(twin_tables['orders alone'].filter(pl.col('kind') == 'all')['mape'][0] <= 0.15)}).

Next order of the held-out machines at as_of (time in days, quantity in units; censoring-aware MAE: a next order
not seen within {int(HORIZON)} days counts by its lower bound; censored share {censored.mean():.1%}). The forecaster
(`twins.models.replenishment_torch`, MLP over {fit_rows.X.shape[1]} features, 10/50/90 % quantile heads, {args.epochs}
epochs, {fit_s:.0f} s on {model.device_}) is trained on {len(fit_rows.T):,} (machine, cut-off) rows of the
training machines (cut-offs every {CUTOFF_STEP} days, so on every weekday).

| model | time MAE | quantity MAE | bound (time / qty) | adaptable | autonomous |
|---|---|---|---|---|---|
{fc_rows}

Best naive baseline: {best_time} for time, {best_qty} for quantity. The forecaster's MAE is {gain_t:.0%} below it
for time (goal >= 30 %: {verdict(gain_t >= 0.3)}) and {gain_q:.0%} for quantity (goal >= 30 %: {verdict(gain_q >= 0.3)}).
80 % intervals cover {cov_t:.1%} of next-order times and {cov_q:.1%} of quantities (goal 75-85 %:
{verdict(0.75 <= cov_t <= 0.85 and 0.75 <= cov_q <= 0.85)}). ONNX bundle `{bundle.name}`: the torch-free runtime fed the
held-out machines' raw orders and readings differs from the model by at most {runtime_diff:.1e} (relative). MLflow run
`{run_id}` (experiment `machines`)."""
    print(body)
    write_section("machines", "Machine customers: twins and next-order forecasts (simulated market)",
                  "python -m experiments.machines", f"simulated market ({CONFIG}, {cfg.n_machines:,} machines)", body)


if __name__ == "__main__":
    main()
