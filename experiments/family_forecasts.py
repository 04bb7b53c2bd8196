"""Next-order forecasts and consumption rates that generalise: leave-one-family-out over families of simulated markets.

    TWINS_THREADS=1 python -m experiments.family_forecasts                      # validation, calibration, test table
    TWINS_THREADS=1 python -m experiments.family_forecasts --validate --fleets 2+0 2+4   # validation only
    TWINS_THREADS=1 python -m experiments.family_forecasts --in-family --fleets 4+12     # against in-family training
    TWINS_THREADS=1 python -m experiments.family_forecasts --machines 60 --train-machines 60 --seeds 1 --epochs 2 \
        --futures 1 --no-report                                                 # a smoke run

Protocol: the families of ``twins.sim.family`` (policy mix, noise, outages, people, multi-item machines, jittered
order times). For each held-out family F, the forecaster is trained on a fleet that validation chooses among ``--fleets``
(``T+P``: T markets of each other family and P markets of the broad training prior ``twins.sim.family.PRIOR``;
seeds from 100,
``--train-machines`` machines each; rows at cut-offs every ``--cutoff-step`` days from day 60, targets censored at
as_of) and scored on F's test markets (seeds 0..``--seeds``-1) at as_of against the simulator's true next order
within 120 days (censoring-aware MAE), beside the naive baselines and the full-state oracle (median over
``--futures`` futures drawn again after as_of). Machines are the series the machine twins would take (actor hints
here: the detection is measured by ``experiments.market_families``).

Choices never see F: validation is leave-one-family-out inside the fold. For every pair of families {F, G} a
forecaster is trained as above without F and G and scored on G's validation markets (seeds 200..); fold F's
validation is its three G. Per fold it chooses the training fleet and whether machines with an exact period are
answered by it (``ReplenishmentForecaster.exact_periods``) (the highest mean validation gain;
``--validate`` prints it and stops) and calibrates the 80 % intervals: the split-conformal factor on the interval's
log-space gaps that makes fold F's validation rows 80 % covered (``twins.models.replenishment_torch.interval_scale``)
is set on F's forecaster. The intervals' shape is chosen per fold too, among ``--blends``: how much of each series'
own gap spread the interval's gaps follow (``ReplenishmentForecaster.interval_blend``; 0: the net's gaps as
trained). Each blend is scored as the held-out family will see it, leave-one-family-out over fold F's three
validation families: the factor calibrated on two of them, the coverage measured on the third; the blend whose
worst coverage is nearest 80 % is chosen. Machines answered by their exact period keep the clock's hour either side
(factor and blend leave it): they are left out of the calibration and of this choice (their own group, as in
Mondrian conformal prediction), and the table gives the coverage without them beside the overall one. The test
markets of F are read only for the table.

Consumption-rate MAPE of the machine twins against the true mean daily demand: from orders alone, with telemetry
(half the machines send stock and usage readings) and with stock readings only (the usage counter removed).
"""

from __future__ import annotations

import argparse
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import polars as pl

from experiments.machines import HORIZON, held_out_truth
from experiments.report import write_section
from twins.evaluate.replenishment import coverage, replenishment_metrics
from twins.models.replenishment import baseline_predictions, histories, machine_keys, samples
from twins.models.replenishment_torch import ReplenishmentForecaster, exact_period_rows, interval_scale
from twins.sim import simulate
from twins.sim.family import FAMILIES, PRIOR, family_config, family_market
from twins.threads import set_threads
from twins.twin.machine import MachineTwinParams, build_machine_twins

DAY_S = 86_400
TRAIN_SEED = 100  # training markets: seeds 100, 101, ... of each family and of the prior
VALID_SEED = 200  # validation markets: seeds 200, 201, ... (choices and interval calibration, never the table's)
ROWS = ("X", "T", "Q", "censored", "bound")


def _keys(events: pl.DataFrame, truth: pl.DataFrame) -> pl.DataFrame:
    """``machine`` (the histories' key) -> ``machine_id`` (the truth's)."""
    return machine_keys(events).join(truth.select("machine_id", "customer_id", "item_id"), on=["customer_id", "item_id"])


def _rate_mape(twins: pl.DataFrame, truth: pl.DataFrame) -> float:
    j = twins.join(truth.select("customer_id", "item_id", pl.col("rate").alias("true")), on=["customer_id", "item_id"])
    return float(((j["rate"] - j["true"]).abs() / j["true"]).mean())


def market_rows(family: str, seed: int, args) -> dict[str, np.ndarray]:
    """Training rows of one market (``ROWS``), kept under ``args.cache`` when given (reuse only with unchanged code)."""
    path = (Path(args.cache) / f"{family}-{seed}-{args.train_machines}-{args.people}-{args.cutoff_step}.npz"
            if args.cache else None)
    if path is not None and path.exists():
        with np.load(path) as saved:
            return {k: saved[k] for k in ROWS}
    market, events, _ = family_market(family, seed, args.train_machines, args.people)
    as_of = market.as_of.timestamp() / DAY_S
    hist = histories(events.filter(pl.col("event_time") < market.as_of))
    start = market.config.start.timestamp() / DAY_S
    s = samples(hist, list(hist), [start + d for d in range(60, market.config.days, args.cutoff_step)], HORIZON,
                until=as_of)
    rows = {k: getattr(s, k) for k in ROWS}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **rows)
    return rows


def fleet(name: str) -> tuple[int, int]:
    """``T+P`` -> (markets of each training family, markets of the prior)."""
    try:
        per_family, prior = (int(x) for x in name.split("+"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a fleet is T+P (markets per family + prior markets), got {name!r}") from None
    return per_family, prior


def _fleet_name(name: str) -> str:
    fleet(name)
    return name


def fit(families: list[str], name: str, args) -> tuple[ReplenishmentForecaster, int]:
    """The forecaster trained on fleet ``name`` of ``families`` and the prior; with its number of rows."""
    per_family, prior = fleet(name)
    markets = [(f, TRAIN_SEED + k) for f in families for k in range(per_family)]
    markets += [(f, TRAIN_SEED + k) for f in PRIOR for k in range(prior)]
    parts = [market_rows(f, seed, args) for f, seed in markets]
    X, T, Q, cens, bound = (np.concatenate([p[k] for p in parts]) for k in ROWS)
    model = ReplenishmentForecaster(hidden=args.hidden, epochs=args.epochs, members=args.members)
    return model.fit(X, T, Q, cens, bound), len(X)


def at_as_of(family: str, seed: int, n_machines: int, args) -> dict:
    """One market's machines at as_of: rows, truth, naive baselines' time MAE and what the twins need."""
    market, events, truth = family_market(family, seed, n_machines, args.people)
    past = events.filter(pl.col("event_time") < market.as_of)
    hist = histories(past)
    test = samples(hist, list(hist), [market.as_of.timestamp() / DAY_S], HORIZON)
    ids = _keys(past, truth).join(pl.DataFrame({"machine": test.machine}), on="machine", how="right")["machine_id"]
    T, Q, censored = held_out_truth(truth, ids.to_numpy())
    naive = {n: replenishment_metrics(t, q, T, Q, censored, HORIZON)["time_mae"]
             for n, (t, q) in baseline_predictions(hist, test).items()}
    return {"market": market, "past": past, "truth": truth, "X": test.X, "ids": ids.to_numpy(), "T": T, "Q": Q,
            "censored": censored, "naive": naive}


def scores(out: dict[str, np.ndarray], m: dict) -> dict[str, float]:
    """Time MAE of the forecaster and the best naive baseline (chosen on these rows), gain and coverage."""
    best = min(m["naive"], key=m["naive"].get)
    mae = replenishment_metrics(out["time"], out["quantity"], m["T"], m["Q"], m["censored"], HORIZON)["time_mae"]
    return {"best_naive": best, "naive_mae": m["naive"][best], "forecaster_mae": mae, "gain": 1 - mae / m["naive"][best],
            "coverage": coverage(out["time_low"], out["time_high"], m["T"], m["censored"], HORIZON)}


def _factor(parts: list[tuple[dict, np.ndarray, np.ndarray]]) -> float:
    """The conformal interval factor that makes the pooled rows ``parts`` (output, T, censored) 80 % covered."""
    out = {k: np.concatenate([p[0][k] for p in parts]) for k in ("time_low", "time", "time_high")}
    return interval_scale(out, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]), HORIZON,
                          0.8)


def _covered(parts: list[tuple[dict, np.ndarray, np.ndarray]], factor: float) -> float:
    """Coverage of the rows ``parts`` with their log-space interval gaps times ``factor``."""
    cov = []
    for out, T, censored in parts:
        mid, low, high = (np.log1p(out[k]) for k in ("time", "time_low", "time_high"))
        cov.append(coverage(np.expm1(mid - factor * (mid - low)), np.expm1(mid + factor * (high - mid)), T, censored,
                            HORIZON) * len(T))
    return sum(cov) / sum(len(p[1]) for p in parts)


def validate(valid: dict[str, list[dict]], name: str, args) -> tuple[pl.DataFrame, list[dict]]:
    """Leave-one-family-out inside each fold: for each pair {F, G}, a forecaster trained on fleet ``name`` without
    both, scored (exact periods answered by the net or by their period) on G's validation markets ``valid`` (row
    ``held`` F, ``valid`` G) and on F's (row ``held`` G, ``valid`` F). Returns those rows and, per fold, exact periods
    and interval blend: the conformal factor from the fold's three validation families, and each family's coverage
    with the factor from the other two (``nested``)."""
    rows, pooled = [], {}
    for pair in combinations(FAMILIES, 2):
        t0 = time.perf_counter()
        model, n_rows = fit([f for f in FAMILIES if f not in pair], name, args)
        for held, g in (pair, pair[::-1]):
            for k, m in enumerate(valid[g]):
                for on in (False, True):
                    out = model.exact_periods(on).interval_blend(0.0).predict(m["X"])
                    rows.append({"held": held, "valid": g, "seed": VALID_SEED + k, "fleet": name, "periods": on,
                                 "train_rows": n_rows, **scores(out, m)})
                    rest = ~(exact_period_rows(m["X"]) & on)  # the clock's rows are their own group
                    for blend in args.blends:
                        out = model.interval_blend(blend).predict(m["X"][rest])
                        pooled.setdefault((held, on, blend, g), []).append((out, m["T"][rest], m["censored"][rest]))
        print(f"validation without {pair}, fleet {name}: {n_rows} rows, {time.perf_counter() - t0:.0f} s", flush=True)
    intervals = []
    for f, on, blend in ((f, on, b) for f in FAMILIES for on in (False, True) for b in args.blends):
        others = [g for g in FAMILIES if g != f]
        nested = {g: _covered(pooled[f, on, blend, g], _factor([p for h in others if h != g
                                                               for p in pooled[f, on, blend, h]])) for g in others}
        intervals.append({"held": f, "fleet": name, "periods": on, "blend": blend, "nested": nested,
                          "worst": max(abs(c - 0.8) for c in nested.values()),
                          "factor": _factor([p for g in others for p in pooled[f, on, blend, g]])})
    return pl.DataFrame(rows), intervals


def oracle(family: str, seed: int, n_machines: int, n_people: int, machine_ids: np.ndarray, futures: int) -> np.ndarray:
    """The full-state oracle's next-order time of ``machine_ids`` (the median over futures drawn after as_of)."""
    cfg = family_config(family, seed, n_machines, n_people)
    draws = []
    for k in range(futures):
        t, _, c = held_out_truth(simulate(cfg, future_seed=k).truth(), machine_ids)
        draws.append(np.where(c, np.inf, t))
    return np.minimum(np.median(draws, axis=0), HORIZON)


def against_oracle(s: dict, o: np.ndarray, m: dict) -> dict[str, float]:
    """The oracle's time MAE on market ``m`` and how far the forecaster (``scores``' ``s``) got from naive to it."""
    mae = replenishment_metrics(o, m["Q"], m["T"], m["Q"], m["censored"], HORIZON)["time_mae"]
    return {"oracle_mae": mae, "way_to_oracle": (s["naive_mae"] - s["forecaster_mae"]) / max(s["naive_mae"] - mae, 1e-9)}


def in_family(args) -> list[str]:
    """The reference for generalising: each family's test markets scored by two forecasters trained on as many
    markets, the first fleet of ``--fleets`` (T+P): one without the family (leave-one-family-out: T markets of each
    other family, as the main table) and one on the family's own training markets (3T of it, seeds 100.., never a
    test or validation seed), both with P of the prior and exact periods answered by their period. Point forecasts
    only. The gap is what training across families costs against training in distribution."""
    per_family, prior = fleet(args.fleets[0])
    rows = []
    for held in FAMILIES:
        others = [f for f in FAMILIES if f != held]
        models = {"other families": fit(others, args.fleets[0], args),
                  "the family itself": fit([held], f"{per_family * len(others)}+{prior}", args)}
        for seed in range(args.seeds):
            m = at_as_of(held, seed, args.machines, args)
            o = oracle(held, seed, args.machines, args.people, m["ids"], args.futures)
            for trained, (model, n_rows) in models.items():
                s = scores(model.exact_periods(True).predict(m["X"]), m)
                rows.append({"family": held, "seed": seed, "trained": trained, "train_rows": n_rows, **s,
                             **against_oracle(s, o, m)})
                print(rows[-1], flush=True)
    by = pl.DataFrame(rows).group_by("family", "trained", maintain_order=True).agg(
        pl.col("best_naive").mode().first(), pl.col("train_rows").first(),
        *[pl.col(c).mean() for c in ("naive_mae", "forecaster_mae", "oracle_mae", "gain", "way_to_oracle")])
    lines = [f"Each held-out family's test markets (seeds 0..{args.seeds - 1}, {args.machines} machines, at as_of) "
             f"scored by two forecasters trained alike ({args.epochs} epochs, {args.hidden} hidden units, "
             f"{args.members} members, {args.train_machines} machines a training market, cut-offs every "
             f"{args.cutoff_step} days, exact periods answered by their period, {prior} markets of the broad prior): "
             f"on {per_family} markets of each other family (leave-one-family-out, the main table's fleet "
             f"{args.fleets[0]}) or on {per_family * (len(FAMILIES) - 1)} markets of the family itself (training seeds, never its test "
             f"or validation seeds). Nothing is chosen here. Time MAE in days (censoring-aware, horizon 120), oracle "
             f"over {args.futures} futures; means over seeds.", "",
             "| family | trained on | training rows | best naive | naive MAE | forecaster MAE | oracle MAE | "
             "gain vs naive | way to oracle |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['trained']} | {r['train_rows']:,} | {r['best_naive']} | {r['naive_mae']:.2f} | "
              f"{r['forecaster_mae']:.2f} | {r['oracle_mae']:.2f} | {r['gain']:.1%} | {r['way_to_oracle']:.1%} |"
              for r in by.iter_rows(named=True)]
    return lines


def evaluate(model: ReplenishmentForecaster, family: str, seed: int, periods: bool, args) -> dict:
    """The held-out family's test market ``seed``: forecaster, best naive, oracle, coverage (also without the
    machines answered by their exact period, when ``periods``) and rate MAPEs."""
    m = at_as_of(family, seed, args.machines, args)
    out = model.predict(m["X"])
    s = scores(out, m)
    rest = ~(exact_period_rows(m["X"]) & periods)
    s["clock_share"] = 1 - rest.mean()
    s["coverage_rest"] = coverage(out["time_low"][rest], out["time_high"][rest], m["T"][rest], m["censored"][rest],
                                  HORIZON)
    s |= against_oracle(s, oracle(family, seed, args.machines, args.people, m["ids"], args.futures), m)
    past, as_of, truth = m["past"], m["market"].as_of, m["truth"]
    orders = build_machine_twins(past, as_of, MachineTwinParams(use_telemetry=False))
    tele = build_machine_twins(past, as_of).filter(pl.col("source") == "telemetry")
    stock_only = build_machine_twins(past.filter(pl.col("text").fill_null("") != "usage"), as_of)
    stock_only = stock_only.filter(pl.col("source") == "telemetry")
    return {"family": family, "seed": seed, "machines": len(m["T"]), **s, "mape_orders": _rate_mape(orders, truth),
            "mape_telemetry": _rate_mape(tele, truth), "mape_stock_only": _rate_mape(stock_only, truth)}


def validation_lines(val: pl.DataFrame, chosen: dict[str, tuple[str, bool]]) -> list[str]:
    """Per fold, fleet and exact periods: validation gain on each other family, its mean and raw coverage."""
    lines = ["| fold (held out) | fleet (T+P) | exact periods | training rows | validation gain vs naive, per other "
             "family | mean | 80 % coverage as trained | chosen |", "|---|---|---|---|---|---|---|---|"]
    for f, name, on in ((f, n, on) for f in FAMILIES for n in val["fleet"].unique(maintain_order=True)
                        for on in (False, True)):
        v = val.filter((pl.col("held") == f) & (pl.col("fleet") == name) & (pl.col("periods") == on))
        rows = f"{v['train_rows'].min():,}-{v['train_rows'].max():,}"
        v = v.group_by("valid", maintain_order=True).agg(pl.col("gain", "coverage").mean())
        per = ", ".join(f"{g} {x:.1%}" for g, x in zip(v["valid"], v["gain"]))
        lines.append(f"| {f} | {name} | {'by period' if on else 'by the net'} | {rows} | {per} | "
                     f"{v['gain'].mean():.1%} | {v['coverage'].mean():.1%} | {'yes' if chosen[f] == (name, on) else ''} |")
    return lines


def interval_lines(intervals: list[dict], chosen: dict[str, tuple[str, bool]], blend: dict[str, float]) -> list[str]:
    """Per fold, with its chosen fleet and exact periods, per interval blend: each validation family's coverage
    with the factor calibrated on the other two, the worst distance from 80 %, the fold's factor (all three)."""
    lines = ["| fold (held out) | interval blend | 80 % coverage per validation family (factor from the other two) | "
             "worst distance from 80 % | factor | chosen |", "|---|---|---|---|---|---|"]
    for r in sorted(intervals, key=lambda r: list(FAMILIES).index(r["held"])):
        if (r["fleet"], r["periods"]) == chosen[r["held"]]:
            per = ", ".join(f"{g} {c:.1%}" for g, c in r["nested"].items())
            lines.append(f"| {r['held']} | {r['blend']:g} | {per} | {r['worst']:.1%} | {r['factor']:.2f} | "
                         f"{'yes' if blend[r['held']] == r['blend'] else ''} |")
    return lines


def bars(by: pl.DataFrame) -> list[str]:
    """Issue 19's forecast bars on the held-out families, met or NOT met, with the figures."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    def figures(col: str) -> str:
        return ", ".join(f"{f} {x:.1%}" for f, x in zip(by["family"], by[col]))

    return [f"- next-order time MAE >= 30 % below the best naive baseline: {verdict(bool((by['gain'] >= 0.30).all()))} "
            f"({figures('gain')}).",
            f"- >= 60 % of the way from naive to the oracle: {verdict(bool((by['way_to_oracle'] >= 0.60).all()))} "
            f"({figures('way_to_oracle')}).",
            f"- 80 % intervals covering 75-85 %: {verdict(bool(by['coverage'].is_between(0.75, 0.85).all()))} "
            f"({figures('coverage')}; without the machines answered by their exact period: "
            f"{figures('coverage_rest')}).",
            f"- rate MAPE <= 10 % with stock telemetry: "
            f"{verdict(bool((by['mape_stock_only'] <= 0.10).all() and (by['mape_telemetry'] <= 0.10).all()))} "
            f"(stock readings only: {figures('mape_stock_only')}; stock and usage: {figures('mape_telemetry')}).",
            f"- rate MAPE <= 15 % from orders: {verdict(bool((by['mape_orders'] <= 0.15).all()))} "
            f"({figures('mape_orders')})."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, default=250, help="machines of a test or validation market")
    ap.add_argument("--people", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=3, help="test markets per held-out family")
    ap.add_argument("--train-machines", type=int, default=500, help="machines of a training market")
    ap.add_argument("--fleets", nargs="+", default=["2+4", "4+12"], type=_fleet_name,
                    help="training fleets to choose from: T+P = T markets per other family + P of the prior")
    ap.add_argument("--cutoff-step", type=int, default=15, help="days between training cut-offs")
    ap.add_argument("--valid-markets", type=int, default=2, help="validation markets per family")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=64, help="width of each net's two hidden layers")
    ap.add_argument("--members", type=int, default=3, help="nets averaged (3, as configs/pipelines/sim_replenishment.yaml)")
    ap.add_argument("--futures", type=int, default=10)
    ap.add_argument("--validate", action="store_true", help="the in-fold validation only: no test market is read")
    ap.add_argument("--blends", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0],
                    help="interval blends to choose from (weight of each series' own gap spread; 0: the net's gaps)")
    ap.add_argument("--no-calibrate", action="store_true", help="keep the intervals as trained")
    ap.add_argument("--cache", help="folder for training rows (reuse only with unchanged code)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--in-family", action="store_true",
                    help="instead: the first fleet trained without each family and on the family itself, side by side")
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    set_threads(args.threads)
    if args.in_family:
        t0 = time.perf_counter()
        lines = in_family(args) + ["", f"{time.perf_counter() - t0:.0f} s at {args.threads} thread(s)."]
        print("\n".join(lines))
        if not args.no_report:
            write_section("family_forecasts_in_family", "Machine forecasts: across families against in family",
                          "TWINS_THREADS=1 python -m experiments.family_forecasts --in-family --fleets "
                          + args.fleets[0] + (" --cache <folder>" if args.cache else ""),
                          "twins.sim.family (4 families and the broad training prior)", "\n".join(lines))
        return
    from twins import tracking

    t0 = time.perf_counter()
    valid = {f: [at_as_of(f, VALID_SEED + k, args.machines, args) for k in range(args.valid_markets)] for f in FAMILIES}
    val, intervals = [], []
    for name in args.fleets:
        v, iv = validate(valid, name, args)
        val.append(v)
        intervals += iv
    val = pl.concat(val)
    gains = val.group_by("held", "fleet", "periods", "valid").agg(pl.col("gain").mean()).group_by(
        "held", "fleet", "periods").agg(pl.col("gain").mean())
    chosen = {f: g.sort("gain").select("fleet", "periods").row(-1) for (f,), g in gains.group_by("held")}
    scale = {(r["held"], r["fleet"], r["periods"], r["blend"]): r["factor"] for r in intervals}
    blend = {f: min((r for r in intervals if (r["held"], r["fleet"], r["periods"]) == (f, *chosen[f])),
                    key=lambda r: r["worst"])["blend"] for f in FAMILIES}
    setting = (f"the fleet chosen on validation among {', '.join(args.fleets)}, exact periods answered by the net or "
               f"by their period as validation chose (T+P: T markets of each other family "
               f"and P of the broad prior, {args.train_machines} machines each, cut-offs every {args.cutoff_step} "
               f"days), {args.epochs} epochs, {args.hidden} hidden units, {args.members} members, the interval blend "
               f"chosen on validation among {', '.join(f'{b:g}' for b in args.blends)}")
    lines = [f"Validation ({setting}; validation markets: seeds {VALID_SEED}..{VALID_SEED + args.valid_markets - 1} "
             f"of {args.machines} machines):", "", *validation_lines(val, chosen), "",
             *interval_lines(intervals, chosen, blend)]
    print("\n".join(lines), flush=True)
    with tracking.run("family-forecasts", "validate" if args.validate else "lofo",
                      tags={"dataset": "twins.sim.family"}) as mlflow:
        mlflow.log_params({k: v for k, v in vars(args).items() if k not in ("cache", "no_report")})
        key = lambda name: name.replace("+", "_")  # noqa: E731  (MLflow names take no "+")
        mlflow.log_metrics({f"{f}/validation_gain_{key(n)}{'_periods' * on}": g for f, n, on, g in gains.iter_rows()})
        mlflow.log_metrics({f"{f}/interval_factor_{key(n)}{'_periods' * on}_blend{b:g}": x
                            for (f, n, on, b), x in scale.items()})
        mlflow.log_metrics({f"{r['held']}/interval_worst_{key(r['fleet'])}{'_periods' * r['periods']}_blend"
                            f"{r['blend']:g}": r["worst"] for r in intervals})
        if args.validate:
            return
        rows = []
        for held in FAMILIES:
            name, on = chosen[held]
            model, n_rows = fit([f for f in FAMILIES if f != held], name, args)
            model.exact_periods(on).interval_blend(blend[held])
            if not args.no_calibrate:
                model.scale_intervals(time=scale[held, name, on, blend[held]])
            for seed in range(args.seeds):
                rows.append(evaluate(model, held, seed, on, args) | {"train_rows": n_rows, "fleet": name, "periods": on,
                                                                 "blend": blend[held]})
                print(rows[-1], f"{time.perf_counter() - t0:.0f} s", flush=True)
        table = pl.DataFrame(rows)
        cols = ("naive_mae", "forecaster_mae", "oracle_mae", "gain", "way_to_oracle", "coverage", "clock_share",
                "coverage_rest", "mape_orders", "mape_telemetry", "mape_stock_only")
        by = table.group_by("family", maintain_order=True).agg(pl.col("best_naive").mode().first(),
                                                               pl.col("train_rows", "fleet", "periods", "blend").first(),
                                                               *[pl.col(c).mean() for c in cols])
        for r in by.iter_rows(named=True):
            mlflow.log_metrics({f"{r['family']}/{c}": r[c] for c in cols})
    calibrated = ("80 % intervals of the blend chosen, calibrated per fold on its validation rows (the factor above)"
                  if not args.no_calibrate
                  else "80 % intervals as trained")
    lines = [f"Leave-one-family-out (`TWINS_THREADS=1 python -m experiments.family_forecasts`): forecaster trained on "
             f"{setting}; {calibrated}; scored on the held-out family's test markets (seeds 0..{args.seeds - 1}, "
             f"{args.machines} machines) at as_of; time MAE in days (censoring-aware, horizon 120), oracle over "
             f"{args.futures} futures; means over seeds. Rate MAPE of the machine twins.", "",
             "| held-out family | fleet | exact periods | interval blend | training rows | best naive | naive MAE | "
             "forecaster MAE | oracle MAE | gain vs naive | way to oracle | 80 % coverage | answered by the clock | "
             "80 % coverage, the others | rate MAPE, orders | rate MAPE, telemetry | rate MAPE, stock only |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in by.iter_rows(named=True):
        lines.append(f"| {r['family']} | {r['fleet']} | {'by period' if r['periods'] else 'by the net'} | "
                     f"{r['blend']:g} | {r['train_rows']:,} | {r['best_naive']} | {r['naive_mae']:.2f} | "
                     f"{r['forecaster_mae']:.2f} | {r['oracle_mae']:.2f} | {r['gain']:.1%} | {r['way_to_oracle']:.1%} | "
                     f"{r['coverage']:.1%} | {r['clock_share']:.1%} | {r['coverage_rest']:.1%} | "
                     f"{r['mape_orders']:.1%} | {r['mape_telemetry']:.1%} | "
                     f"{r['mape_stock_only']:.1%} |")
    lines += ["", f"Validation inside each fold (no test market read; validation markets: seeds {VALID_SEED}.."
                  f"{VALID_SEED + args.valid_markets - 1}, {args.machines} machines):", "", *validation_lines(val, chosen), "",
              "Interval blend inside each fold (its chosen fleet and exact periods):", "",
              *interval_lines(intervals, chosen, blend), "", "Issue 19's forecast bars on the held-out families:", *bars(by),
              "", f"{time.perf_counter() - t0:.0f} s at {args.threads} thread(s)."]
    print("\n".join(lines))
    if not args.no_report:
        write_section("family_forecasts", "Machine forecasts across market families",
                      "TWINS_THREADS=1 python -m experiments.family_forecasts", "twins.sim.family (4 families and "
                      "the broad training prior)", "\n".join(lines))


if __name__ == "__main__":
    main()
