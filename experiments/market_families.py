"""Machine-vs-human detection that generalises: leave-one-family-out over families of simulated markets.

    TWINS_THREADS=1 python -m experiments.market_families                     # 4 families x 3 seeds, 300 machines + 150 people each
    TWINS_THREADS=1 python -m experiments.market_families --machines 150 --people 80 --seeds 1   # a quick look

Protocol: the families of ``twins.sim.family`` differ in policy mix, noise, outages, people (habitual or bursty)
and item structure (multi-item machines, jittered order times). For each held-out family, a detector is fitted on
the other families' markets (seeds 100, 101), Platt-calibrated on one more market of each of them (seed 10,100),
and scored on the held-out family's markets (seeds 0..``--seeds``-1, never used in any choice): AUC machines vs
people (customers with 3+ orders), and the share of people and of machines scored 0.5 or more (calibration). Beside
it: the same detector without the per-item features (what the issue's detector read), the per-item
regularity heuristic alone (``regular_line_share`` as the score), and the held-out machines against real people no
detector saw: ``--households`` Complete Journey households (one year). The twins-simulator row scores the default
market (``configs/sim/market.yaml``) with a detector trained on all four families. Results: BENCHMARKS.md
("Machine detection across market families").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score

from experiments.detect_machines import household_events
from experiments.report import write_section
from twins.models.machine_detector import MachineDetector, labelled_features
from twins.sim import load_config, simulate
from twins.sim.family import FAMILIES
from twins.threads import set_threads
from twins.twin.behaviour import BASKET, PRICE, REGULARITY, TIMING, behaviour_features

FIT_SEEDS, VAL_SEED = (100, 101), 10_100
PER_CUSTOMER = REGULARITY + TIMING + BASKET + PRICE  # the features before per-item ones were added


def fitted(families: list[str], features: tuple[str, ...] | None, n_machines: int, n_people: int) -> MachineDetector:
    fit = [labelled_features(f, s, n_machines, n_people) for f in families for s in FIT_SEEDS]
    val = [labelled_features(f, VAL_SEED, n_machines, n_people) for f in families]
    det = MachineDetector(**({"features": features} if features else {}))
    det.fit(pl.concat([x for x, _ in fit]), np.concatenate([y for _, y in fit]))
    return det.calibrate(pl.concat([x for x, _ in val]), np.concatenate([y for _, y in val]))


def scores(det: MachineDetector, X: pl.DataFrame, y: np.ndarray) -> dict[str, float]:
    p = det.predict_proba(X)[:, 1]
    return {"auc": roc_auc_score(y, p), "people_over": float(np.mean(p[y == 0] >= 0.5)),
            "machines_over": float(np.mean(p[y == 1] >= 0.5))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, default=300)
    ap.add_argument("--people", type=int, default=150)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--households", type=int, default=500, help="Complete Journey households as real people")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-report", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    set_threads(args.threads)
    t0, rows = time.perf_counter(), []
    households = behaviour_features(household_events(args.households, 0))  # real people no detector ever saw
    for held in FAMILIES:
        train = [f for f in FAMILIES if f != held]
        full, old = (fitted(train, feats, args.machines, args.people) for feats in (None, PER_CUSTOMER))
        for seed in range(args.seeds):
            X, y = labelled_features(held, seed, args.machines, args.people)
            real = pl.concat([X.filter(pl.Series(y == 1)), households.select(X.columns)])
            real_y = np.r_[np.ones(int(y.sum()), int), np.zeros(households.height, int)]
            rows.append({"family": held, "seed": seed, **scores(full, X, y),
                         "auc_households": scores(full, real, real_y)["auc"],
                         "households_over": scores(full, real, real_y)["people_over"],
                         "auc_per_customer": scores(old, X, y)["auc"],
                         "auc_heuristic": roc_auc_score(y, X["regular_line_share"].to_numpy())})
            print(rows[-1], flush=True)
    table = pl.DataFrame(rows)
    by = table.group_by("family", maintain_order=True).agg(
        *[pl.col(c).mean().alias(c) for c in ("auc", "auc_per_customer", "auc_heuristic", "people_over", "machines_over",
                                               "auc_households", "households_over")],
        pl.col("auc").min().alias("auc_min"))
    everyone = fitted(list(FAMILIES), None, args.machines, args.people)
    market = simulate(load_config("configs/sim/market.yaml", ["n_machines=2000", "humans.n=1000", "horizon_days=0"]
                                  + [f"telemetry.share.{k}=0" for k in ("bound", "adaptable", "autonomous")]))
    feats = behaviour_features(market.events().filter(pl.col("event_time") < market.as_of))
    sim = scores(everyone, feats, feats["customer_id"].str.starts_with("m").to_numpy().astype(int))
    print(by, sim, f"{time.perf_counter() - t0:.0f} s")
    lines = ["Leave-one-family-out (`TWINS_THREADS=1 python -m experiments.market_families`): a detector fitted on the "
             f"other three families ({args.machines} machines + {args.people} people per market, 2 markets each), "
             "Platt-calibrated on one more market of each, scored on the held-out family's markets "
             f"(seeds 0..{args.seeds - 1}). AUC machines vs people (customers with 3+ orders); 'people >= 0.5': share "
             "of people the calibrated detector calls machines.", "",
             "| held-out family | AUC (mean) | AUC (worst seed) | AUC, per-customer features only | AUC, per-item regularity heuristic | people >= 0.5 | machines >= 0.5 | AUC vs real households | households >= 0.5 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in by.iter_rows(named=True):
        lines.append(f"| {r['family']} | {r['auc']:.3f} | {r['auc_min']:.3f} | {r['auc_per_customer']:.3f} | "
                     f"{r['auc_heuristic']:.3f} | {r['people_over']:.1%} | {r['machines_over']:.1%} | "
                     f"{r['auc_households']:.3f} | {r['households_over']:.1%} |")
    lines += ["", f"Twins simulator (configs/sim/market.yaml, 2,000 machines + 1,000 people; detector fitted on all four "
              f"families): AUC {sim['auc']:.3f}, people >= 0.5 {sim['people_over']:.1%}, machines >= 0.5 "
              f"{sim['machines_over']:.1%}. {time.perf_counter() - t0:.0f} s at 1 thread."]
    print("\n".join(lines))
    if not args.no_report:
        write_section("market_families", "Machine detection across market families",
                      "TWINS_THREADS=1 python -m experiments.market_families", "twins.sim.family (4 families) and "
                      f"{args.households} Complete Journey households", "\n".join(lines))


if __name__ == "__main__":
    main()
