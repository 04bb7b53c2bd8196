"""Machine twins and next-order forecasts on held-out simulated machines.

    python -m experiments.machines                      # 12,000 machines, configs/sim/market.yaml, simulator seeds 0 1 2
    python -m experiments.machines --set n_machines=1000 --epochs 10 --sim-seeds 0   # a quick look
    python -m experiments.machines --validate           # tuning: held-back training machines, no test machine read

Protocol: one simulated market (``configs/sim/market.yaml``, 365 days observed, 120 more for the truth); machines
with >= 3 orders split at random 70/30 (seed) into training and held-out machines. Twins: built as of the end of
the window on the held-out machines, from orders alone and from orders + telemetry (machines that send
readings), consumption-rate MAPE against the true mean daily demand of the window. Forecasts: training rows are
the training machines at cut-offs every ``CUTOFF_STEP`` days from day 60 to 364 (every weekday in turn: the test
cut-off's weekday is not known in advance; target: the next order within 120 days, from the events before as_of
only, a later one counting as censored at as_of, so that no training label comes from the forecast period); the test rows
are the held-out machines at as_of with the simulator's ground-truth next order; censoring-aware MAE
(``twins.evaluate.replenishment``), overall, by machine kind and by reorder policy with and without readings,
beside a full-state oracle (``full_state_oracle``: the median next order over futures drawn again after as_of),
the limit for any forecaster.
``--validate`` evaluates instead on 20 % of the training machines held back from training, at cut-offs
``VALIDATION_DAYS`` (targets from their events): what is tuned (``CUTOFF_STEP``, features) is chosen there. The
market is simulated once per ``--sim-seeds`` entry; the first one is reported in full, all of them as mean and
standard deviation. The first market's forecaster is exported as an ONNX bundle
(``$TWINS_HOME/models/sim_market-replenishment``; parity checked) and the torch-free runtime, fed the held-out
machines' raw orders and readings, must answer as the model does. Results go to MLflow (experiment ``machines``;
one child run per simulator seed) and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from experiments.report import write_section
from pipelines.replenishment import runtime_gap
from twins.evaluate.replenishment import coverage, replenishment_metrics
from twins.models.replenishment import History, Samples, baseline_predictions, histories, samples
from twins.models.replenishment_export import export_replenishment
from twins.models.replenishment_torch import ReplenishmentForecaster
from twins.paths import models_dir
from twins.runtime import load
from twins.sim import KINDS, POLICIES, Market, MarketConfig, load_config, simulate
from twins.twin.machine import MachineTwinParams, build_machine_twins

CONFIG = "configs/sim/market.yaml"
HORIZON = 120.0
CUTOFF_STEP = 5  # days between training cut-offs: not a multiple of 7, so they cover every weekday (13: fewer rows,
                 # worse quantities on validation)
VALIDATION_DAYS = (300, 313, 326, 339, 352)  # --validate: cut-offs (days since the start) of the held-back machines
MODEL = "mlp_quantile (PyTorch)"
ORACLE = "full-state oracle"
FUTURES = 25  # re-simulated futures behind the full-state oracle
DAY_S = 86_400


def rate_mape(twins: pl.DataFrame, truth: pl.DataFrame) -> pl.DataFrame:
    j = twins.join(truth, left_on="customer_id", right_on="machine_id", suffix="_true")
    ape = ((pl.col("rate") - pl.col("rate_true")).abs() / pl.col("rate_true"))
    return pl.concat([j.group_by("kind").agg(ape.mean().alias("mape"), pl.len().alias("n")),
                      j.select(pl.lit("all").alias("kind"), ape.mean().alias("mape"), pl.len().cast(pl.UInt32).alias("n"))])


@dataclass
class Outcome:
    """One simulated market: the twins' rate errors, every model's next-order metrics by group, the forecaster."""

    cfg: MarketConfig
    market: Market
    hist: dict[str, History]
    train: list[str]
    test_rows: Samples
    twin_tables: dict[str, pl.DataFrame]
    results: dict[str, dict[str, dict[str, float]]]   # model -> group -> metric
    model: ReplenishmentForecaster
    out: dict[str, np.ndarray]
    fit_rows: int
    fit_s: float
    best_time: str
    best_qty: str
    gain_t: float
    gain_q: float
    cov_t: float
    cov_q: float
    censored_share: float


def held_out_truth(truth: pl.DataFrame, machines: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The simulator's true next order after as_of (days, quantity, censored) of ``machines``, in order."""
    gt = truth.select("machine_id", (pl.col("next_order_time") - pl.col("as_of")).dt.total_seconds().truediv(DAY_S).alias("T"),
                      pl.col("next_order_quantity").alias("Q"), "censored")
    gt = pl.DataFrame({"machine_id": machines}).join(gt, on="machine_id", how="left", maintain_order="left")
    T, Q, censored = gt["T"].fill_null(np.nan).to_numpy(), gt["Q"].fill_null(np.nan).to_numpy(), gt["censored"].to_numpy()
    T = np.where(censored | (T > HORIZON), np.nan, T)
    return T, Q, censored | np.isnan(T)


def full_state_oracle(cfg: MarketConfig, machines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The median next-order time (capped at the horizon) and quantity of ``machines`` over ``FUTURES`` futures of
    the same market drawn again after as_of: what a forecaster that knew everything at as_of (stock, open orders,
    running promotions, bursts and breakdowns, every machine's parameters) would answer; no forecaster from the
    events can beat it but by luck."""
    draws = [held_out_truth(simulate(cfg, future_seed=k).truth(), machines) for k in range(FUTURES)]
    T = np.median([np.where(c, np.inf, t) for t, _, c in draws], axis=0)
    Q = np.median([np.where(c, 0.0, q) for _, q, c in draws], axis=0)
    return np.minimum(T, HORIZON), Q


def groups(truth: pl.DataFrame, machines: np.ndarray) -> dict[str, np.ndarray]:
    """Row masks: every row, by machine kind, and by reorder policy with (``readings``) or without (``orders``) telemetry."""
    info = pl.DataFrame({"machine_id": machines}).join(truth.select("machine_id", "kind", "policy", "telemetry"),
                                                       on="machine_id", how="left", maintain_order="left")
    kind, policy, tele = (info[c].to_numpy() for c in ("kind", "policy", "telemetry"))
    out = {"all": np.ones(len(machines), bool), **{k: kind == k for k in KINDS}}
    for p in POLICIES:
        for label, has in (("orders", False), ("readings", True)):
            out[f"{p} / {label}"] = (policy == p) & (tele == has)
    return out


def forecast(cfg: MarketConfig, seed: int, epochs: int, members: int, validate: bool) -> Outcome:
    """Simulate ``cfg``, split its machines, fit and score the baselines and the forecaster (see the module doc)."""
    market = simulate(cfg)
    events, truth = market.events(), market.truth()
    hist = histories(events)
    start_day, as_of_day = cfg.start.timestamp() / DAY_S, market.as_of.timestamp() / DAY_S
    ids = np.array(sorted(m for m, h in hist.items() if len(h.t[h.t < as_of_day]) >= 3))
    np.random.default_rng(seed).shuffle(ids)
    n_train = int(0.7 * len(ids))
    train, test = list(ids[:n_train]), list(ids[n_train:])
    twin_tables = {}
    if validate:  # hold back 20 % of the training machines; the test machines are not read
        n_fit = int(0.8 * len(train))
        train, test = train[:n_fit], train[n_fit:]
        test_rows = samples(hist, test, [start_day + d for d in VALIDATION_DAYS], HORIZON)
        T, Q, censored = test_rows.T, test_rows.Q, test_rows.censored
    else:
        held_out = events.filter(pl.col("customer_id").is_in(test))
        for label, use in (("orders alone", False), ("orders + telemetry", True)):
            twins = build_machine_twins(held_out, market.as_of, MachineTwinParams(use_telemetry=use))
            if use:
                twins = twins.filter(pl.col("source") == "telemetry")
            twin_tables[label] = rate_mape(twins, truth)
        test_rows = samples(hist, test, [as_of_day], HORIZON)
        # the held-out target is the simulator's ground truth (the same order the events show)
        T, Q, censored = held_out_truth(truth, test_rows.machine)
    # training targets are watched up to as_of only: nothing after the forecast date is known, of any machine
    fit_rows = samples(hist, train, [start_day + d for d in range(60, cfg.days, CUTOFF_STEP)], HORIZON, until=as_of_day)

    preds = dict(baseline_predictions(hist, test_rows))
    start = time.perf_counter()
    model = ReplenishmentForecaster(epochs=epochs, members=members, seed=seed).fit(
        fit_rows.X, fit_rows.T, fit_rows.Q, fit_rows.censored, fit_rows.bound)
    fit_s = time.perf_counter() - start
    out = model.predict(test_rows.X)
    preds[MODEL] = (out["time"], out["quantity"])
    if not validate:
        preds[ORACLE] = full_state_oracle(cfg, test_rows.machine)

    masks = groups(truth, test_rows.machine)
    results = {name: {g: replenishment_metrics(t[s], q[s], T[s], Q[s], censored[s], HORIZON)
                      for g, s in masks.items() if s.any()} for name, (t, q) in preds.items()}
    naive = [n for n in preds if n not in (MODEL, ORACLE)]
    best_time = min(naive, key=lambda n: results[n]["all"]["time_mae"])
    best_qty = min(naive, key=lambda n: results[n]["all"]["quantity_mae"])
    ours = results[MODEL]["all"]
    seen = ~censored
    return Outcome(
        cfg=cfg, market=market, hist=hist, train=train, test_rows=test_rows, twin_tables=twin_tables, results=results,
        model=model, out=out, fit_rows=len(fit_rows.T), fit_s=fit_s, best_time=best_time, best_qty=best_qty,
        gain_t=1 - ours["time_mae"] / results[best_time]["all"]["time_mae"],
        gain_q=1 - ours["quantity_mae"] / results[best_qty]["all"]["quantity_mae"],
        cov_t=coverage(out["time_low"], out["time_high"], T, censored, HORIZON),
        cov_q=coverage(out["quantity_low"][seen], out["quantity_high"][seen], Q[seen], censored[seen], HORIZON),
        censored_share=float(censored.mean()))


SUMMARY = {"best naive time MAE": lambda o: o.results[o.best_time]["all"]["time_mae"],
           "forecaster time MAE": lambda o: o.results[MODEL]["all"]["time_mae"], "time gain": lambda o: o.gain_t,
           "best naive quantity MAE": lambda o: o.results[o.best_qty]["all"]["quantity_mae"],
           "forecaster quantity MAE": lambda o: o.results[MODEL]["all"]["quantity_mae"], "quantity gain": lambda o: o.gain_q,
           "time coverage": lambda o: o.cov_t, "quantity coverage": lambda o: o.cov_q,
           "oracle time gain": lambda o: 1 - o.results[ORACLE]["all"]["time_mae"] / o.results[o.best_time]["all"]["time_mae"],
           "oracle quantity gain": lambda o: 1 - o.results[ORACLE]["all"]["quantity_mae"]
           / o.results[o.best_qty]["all"]["quantity_mae"]}


def _cell(name: str, value: float) -> str:
    return f"{value:.1%}" if "gain" in name or "coverage" in name else f"{value:.2f}"


def summary(outcomes: list[Outcome]) -> dict[str, np.ndarray]:
    """``SUMMARY`` per market (the oracle's where it was scored)."""
    return {name: np.array([fn(x) for x in outcomes]) for name, fn in SUMMARY.items()
            if ORACLE in outcomes[0].results or not name.startswith("oracle")}


def tables(o: Outcome, outcomes: list[Outcome], values: dict[str, np.ndarray]) -> tuple[str, str, str]:
    """Markdown: the models by machine kind (rows), the best baselines, the forecaster and the oracle by policy (with
    header), and the markets' summary (with header)."""
    by_kind = "\n".join(
        f"| {name} | {r['all']['time_mae']:.2f} | {r['all']['quantity_mae']:.2f} | "
        + " | ".join(f"{r[k]['time_mae']:.2f} / {r[k]['quantity_mae']:.2f}" for k in KINDS) + " |"
        for name, r in o.results.items())
    cols = [(o.best_time, "time_mae"), (MODEL, "time_mae"), (o.best_qty, "quantity_mae"), (MODEL, "quantity_mae")]
    cols += [(ORACLE, "time_mae"), (ORACLE, "quantity_mae")] if ORACLE in o.results else []
    by_policy = ("| policy / data | n | " + " | ".join(f"{'forecaster' if m == MODEL else m} {k.split('_')[0]}"
                                                       for m, k in cols) + " |\n|" + "---|" * (len(cols) + 2) + "\n")
    by_policy += "\n".join(f"| {g} | {o.results[MODEL][g]['n']:.0f} | "
                           + " | ".join(f"{o.results[m][g][k]:.2f}" for m, k in cols) + " |"
                           for g in o.results[MODEL] if " / " in g)
    seeds = f"| sim seed | {' | '.join(values)} |\n|" + "---|" * (len(values) + 1) + "\n"
    seeds += "\n".join(f"| {x.cfg.seed} | " + " | ".join(_cell(n, v[i]) for n, v in values.items()) + " |"
                        for i, x in enumerate(outcomes))
    seeds += "\n| mean ± std | " + " | ".join(f"{_cell(n, v.mean())} ± {_cell(n, v.std())}" for n, v in values.items()) + " |"
    return by_kind, by_policy, seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="overrides", action="append", default=["n_machines=12000", "humans.n=0"],
                    help="market config overrides, e.g. n_machines=4000 (12,000 machines: 8,400 training, 3,600 held "
                         "out; chosen with --validate, time gain 33.0 %% against 31.8 %% with 4,000)")
    ap.add_argument("--seed", type=int, default=0, help="the machines' train/test split and the forecaster's seed")
    ap.add_argument("--sim-seeds", type=int, nargs="+", default=[0, 1, 2], help="one simulated market per seed")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--members", type=int, default=3,
                    help="forecaster nets averaged, each with its own seed (3: chosen with --validate)")
    ap.add_argument("--validate", action="store_true", help="score held-back training machines; write nothing")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 avoids oversubscription on shared cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    outcomes = [forecast(load_config(CONFIG, [*args.overrides, f"seed={s}", f"horizon_days={int(HORIZON)}"]),
                         args.seed, args.epochs, args.members, args.validate) for s in args.sim_seeds]
    o, cfg = outcomes[0], outcomes[0].cfg
    values = summary(outcomes)
    by_kind, by_policy, seeds = tables(o, outcomes, values)
    if args.validate:
        print(f"validation (held-back training machines, cut-offs {VALIDATION_DAYS}):\n"
              f"| model | time MAE | quantity MAE | {' | '.join(KINDS)} |\n{by_kind}\n\n{by_policy}\n\n{seeds}")
        return

    from twins import tracking
    from twins.config import redact

    with tracking.run("machines", "twins-and-replenishment",
                      tags={"dataset": "simulated-market", "protocol": "held-out machines, as_of = end of window",
                            "model": "machine twins + MLP quantile forecaster"}) as mlflow:
        tracking.log_params(mlflow, {"config": cfg.model_dump(mode="json"), "seed": args.seed, "epochs": args.epochs,
                                     "members": args.members,
                                     "horizon_days": HORIZON, "cutoff_step": CUTOFF_STEP, "sim_seeds": args.sim_seeds,
                                     "train_machines": len(o.train), "test_machines": len(o.test_rows.T),
                                     "train_rows": o.fit_rows})
        mlflow.log_dict(redact(cfg.model_dump(mode="json")), "market_config.json")
        for x in outcomes:
            with tracking.run("machines", f"sim-seed-{x.cfg.seed}", tags={"sim_seed": str(x.cfg.seed)}, nested=True):
                for label, table in x.twin_tables.items():
                    tracking.log_metrics(mlflow, {f"twin/{label.replace(' ', '_').replace('+', 'and')}/rate_mape/{k}": v
                                                  for k, v in zip(table["kind"], table["mape"])})
                for name, by_group in x.results.items():
                    for g, metrics in by_group.items():
                        key = g.replace(" / ", "/")
                        tracking.log_metrics(mlflow, {f"test/{name.split(' ')[0]}/{key}/{m}": v for m, v in metrics.items()})
                tracking.log_metrics(mlflow, {"test/time_interval_coverage": x.cov_t, "test/quantity_interval_coverage": x.cov_q,
                                              "test/time_mae_gain": x.gain_t, "test/quantity_mae_gain": x.gain_q,
                                              "fit_s": x.fit_s})
        tracking.log_metrics(mlflow, {f"seeds/{name.replace(' ', '_')}/{stat}": float(fn(v)) for name, v in values.items()
                                      for stat, fn in (("mean", np.mean), ("std", np.std))})
        run_id = mlflow.active_run().info.run_id
        ours = o.results[MODEL]["all"]
        bundle = export_replenishment(o.model, models_dir() / "sim_market-replenishment", run_id=run_id, overwrite=True,
                                      metrics={"time_mae": ours["time_mae"], "quantity_mae": ours["quantity_mae"],
                                               "time_coverage": o.cov_t, "quantity_coverage": o.cov_q})
        runtime_diff = runtime_gap(load(bundle), o.hist, o.test_rows.machine, o.market.as_of, o.out)
        tracking.log_metrics(mlflow, {"bundle/runtime_max_rel_diff": runtime_diff})
        mlflow.log_artifacts(str(bundle), "bundle")

    twin_rows = "\n".join(f"| {label} | " + " | ".join(
        f"{row['mape']:.2%} ({row['n']})" for row in table.sort("kind").iter_rows(named=True)) + " |"
        for label, table in o.twin_tables.items())
    kinds_header = " | ".join(sorted(o.twin_tables["orders alone"]["kind"]))
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    reach = lambda gain: "within reach in principle" if gain >= 0.3 else "out of reach of any forecaster"  # noqa: E731
    oracle_t, oracle_q = values["oracle time gain"].mean(), values["oracle quantity gain"].mean()
    mape = {label: table.filter(pl.col("kind") == "all")["mape"][0] for label, table in o.twin_tables.items()}
    body = f"""Protocol: {cfg.n_machines:,} simulated machines (`{CONFIG}`, seed {cfg.seed}, {cfg.days} days observed,
{int(HORIZON)} more for the truth); machines with >= 3 orders split 70/30 at random (seed {args.seed}):
{len(o.train):,} training, {len(o.test_rows.T):,} held out. Twins as of the end of the window on the held-out machines;
consumption-rate MAPE against the true mean daily demand of the window (count of machines in brackets;
"orders + telemetry" = the held-out machines that send readings).

| twin | {kinds_header} |
|---|---|---|---|---|
{twin_rows}

Acceptance: MAPE <= 5 % with telemetry ({verdict(mape['orders + telemetry'] <= 0.05)}), <= 15 % from orders alone
({verdict(mape['orders alone'] <= 0.15)}).

Next order of the held-out machines at as_of (time in days, quantity in units; censoring-aware MAE: a next order
not seen within {int(HORIZON)} days counts by its lower bound; censored share {o.censored_share:.1%}). The forecaster
(`twins.models.replenishment_torch`, MLP over {o.test_rows.X.shape[1]} features, among them calendar projections of the next order
on each machine's clock (all days or weekdays only) at its seasonal rate, 10/50/90 % quantile heads, {args.epochs}
epochs, {args.members} net(s) averaged, {o.fit_s:.0f} s on {o.model.device_}) is trained on {o.fit_rows:,} (machine, cut-off) rows of the
training machines (cut-offs every {CUTOFF_STEP} days, so on every weekday; the step chosen with `--validate`; targets
watched up to as_of only, later ones censored there, so no training label comes from the forecast period).

| model | time MAE | quantity MAE | bound (time / qty) | adaptable | autonomous |
|---|---|---|---|---|---|
{by_kind}

`tsb`'s time MAE is what Teunter-Syntetos-Babai is, not a bug (`twins.models.replenishment.tsb`): it forecasts one
constant daily order probability, so its time to the next order ignores the time since the last order, and that
probability decays on every day without an order, so a machine late in a long interval is told several intervals.

Best naive baseline: {o.best_time} for time, {o.best_qty} for quantity. The forecaster's MAE is {o.gain_t:.0%} below it
for time and {o.gain_q:.0%} for quantity on this market (the goal, >= 30 % for each, is judged on the mean over the
markets below).
80 % intervals cover {o.cov_t:.1%} of next-order times and {o.cov_q:.1%} of quantities (goal 75-85 %:
{verdict(0.75 <= o.cov_t <= 0.85 and 0.75 <= o.cov_q <= 0.85)}).

How far any forecaster could go: the {ORACLE} (`twins.sim.simulate(config, future_seed=k)`: the same market drawn
again after as_of, {FUTURES} times; its answer is the median next order over those futures) knows everything hidden at
as_of (stock, open orders, running promotions, bursts and breakdowns, every machine's parameters) and lacks only the
draws that follow. On this market it is {values["oracle time gain"][0]:.0%} below the best naive baseline for time and
{values["oracle quantity gain"][0]:.0%} for quantity; over the markets below {oracle_t:.1%} and {oracle_q:.1%}, so a 30 % goal
is {reach(oracle_t)} for time and {reach(oracle_q)} for quantity.

By reorder policy, from orders alone or with readings (n held-out machines; best naive baselines as above):

{by_policy}

Over {len(outcomes)} simulated markets (simulator seeds {', '.join(str(x.cfg.seed) for x in outcomes)}, each split and trained
as above; the best naive baseline chosen per market; std over markets):

{seeds}

Mean over the markets: the forecaster is {np.mean(values['time gain']):.1%} below the best naive baseline for time
(goal >= 30 %: {verdict(np.mean(values['time gain']) >= 0.3)}) and {np.mean(values['quantity gain']):.1%} for quantity
({verdict(np.mean(values['quantity gain']) >= 0.3)}).

ONNX bundle `{bundle.name}` (the first market's forecaster): the torch-free runtime fed the held-out machines' raw
orders and readings differs from the model by at most {runtime_diff:.1e} (relative). MLflow run `{run_id}`
(experiment `machines`, a child run per market)."""
    print(body)
    write_section("machines", "Machine customers: twins and next-order forecasts (simulated market)",
                  "python -m experiments.machines", f"simulated market ({CONFIG}, {cfg.n_machines:,} machines, "
                  f"simulator seeds {', '.join(str(s) for s in args.sim_seeds)})", body)


if __name__ == "__main__":
    main()
