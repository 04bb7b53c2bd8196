"""Seller policies against machine customers (issue 22): every policy in the agent market
(``twins.sim.agent_market``), 3 seeds of the evaluation market and one unseen market, logged to MLflow (experiment
``agent-commerce``), table into BENCHMARKS.md.

    python -m experiments.agent_commerce --customers 100000 --threads 1

Policy parameters were chosen on development markets only (seeds 1 and 2, 3,000 and 10,000 customers, default
parameters; the twin policy's bound_probe on 10,000);
evaluation uses seeds 10-12 and the unseen market (other price level and cost share, dearer and faster competitors,
a strong first-proposal and position bias, more people), which no parameter was chosen on.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace

import numpy as np

from experiments.report import write_section
from twins import tracking
from twins.commerce.policies import POLICIES
from twins.sim.agent_market import KINDS, MarketParams, simulate
from twins.threads import set_threads

EXPERIMENT = "agent-commerce"
SEEDS = (10, 11, 12)


def unseen(params: MarketParams) -> MarketParams:
    """A market the policies never saw in development: other price levels, other agent quirks."""
    return replace(params, price_level=55.0, cost_share=0.62, competitors=((1.04, 2.0), (0.93, 7.0)),
                   reservation=(0.85, 1.4), delay_cost=(0.001, 0.03), first_proposal_bias=0.6, position_bias=0.01,
                   share_people=0.35, kind_shares=(0.2, 0.4, 0.4), order_gap=(5.0, 40.0), seed=99)


def run_markets(n: int) -> dict[str, dict[str, list]]:
    markets = {f"seed{s}": MarketParams(n_customers=n, seed=s) for s in SEEDS}
    markets["unseen"] = unseen(MarketParams(n_customers=n))
    out: dict[str, dict[str, list]] = {}
    with tracking.run(EXPERIMENT, f"agent_market_{n}", tags={"protocol": "agent-market-1y", "dataset": "sim"},
                      experiment_description="Seller policies in the simulated agent market (issue 22)") as mlflow:
        mlflow.log_params({"customers": n, "seeds": list(SEEDS)})
        for market, params in markets.items():
            for name, cls in POLICIES.items():
                start = time.perf_counter()
                result = simulate(params, cls())
                secs = time.perf_counter() - start
                out.setdefault(name, {}).setdefault(market, []).append(result)
                with tracking.run(EXPERIMENT, f"{name}/{market}", nested=True,
                                  tags={"model": name, "market": market, "protocol": "agent-market-1y"}) as child:
                    child.log_params({"policy": name, **{f"market.{k}": v for k, v in asdict(params).items()}})
                    child.log_metrics({**{k: float(v) for k, v in result.metrics.items()}, "seconds": secs,
                                       **{f"{kind}/{k}": float(result.by_kind[kind][k]) for kind in KINDS
                                          for k in ("margin", "win_rate", "retained")
                                          if np.isfinite(result.by_kind[kind][k])}})
                print(f"{market} {name}: margin {result.metrics['margin']:,.0f} retained "
                      f"{result.metrics['retained']:.3f} ({secs:.1f} s)", flush=True)
    return out


def table(results: dict[str, dict[str, list]], markets: list[str]) -> str:
    rows = ["| policy | margin | revenue | win rate | fill rate | retained | share | rounds |", "|---" * 8 + "|"]
    for name, by_market in results.items():
        ms = [r.metrics for m in markets for r in by_market[m]]
        cell = lambda k, fmt: fmt.format(np.mean([x[k] for x in ms])) + (  # noqa: E731
            f" ± {np.std([x[k] for x in ms]):{fmt[2:-1]}}" if len(ms) > 1 else "")
        rows.append(f"| {name} | {cell('margin', '{:,.0f}')} | {cell('revenue', '{:,.0f}')} | "
                    f"{cell('win_rate', '{:.3f}')} | {cell('fill_rate', '{:.3f}')} | {cell('retained', '{:.3f}')} | "
                    f"{cell('share', '{:.3f}')} | {cell('rounds', '{:.2f}')} |")
    return "\n".join(rows)


def by_kind(results: dict[str, dict[str, list]], markets: list[str]) -> str:
    rows = ["| policy | " + " | ".join(f"{k} margin / win / retained" for k in KINDS) + " |", "|---" * 5 + "|"]
    for name, by_market in results.items():
        cells = []
        for kind in KINDS:
            ks = [r.by_kind[kind] for m in markets for r in by_market[m]]
            cells.append(f"{np.mean([x['margin'] for x in ks]):,.0f} / {np.mean([x['win_rate'] for x in ks]):.2f} / "
                         f"{np.nanmean([x['retained'] for x in ks]):.2f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def verdict(results: dict[str, dict[str, list]], markets: list[str]) -> str:
    mean = lambda name, k: np.mean([r.metrics[k] for m in markets for r in results[name][m]])  # noqa: E731
    base = [n for n in results if n != "twin"]
    best = max(base, key=lambda n: mean(n, "margin"))
    gain = mean("twin", "margin") / mean(best, "margin") - 1
    return (f"twin-driven margin {gain:+.1%} against the best baseline ({best}); retained "
            f"{mean('twin', 'retained'):.3f} against {mean(best, 'retained'):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-benchmarks", action="store_true", help="do not write BENCHMARKS.md")
    args = ap.parse_args()
    set_threads(args.threads)
    results = run_markets(args.customers)
    evals = [f"seed{s}" for s in SEEDS]
    body = (f"Mean ± std over seeds {', '.join(map(str, SEEDS))} ({args.customers:,} customers, 365 days; margin "
            "and revenue in the market's currency over the year):\n\n" + table(results, evals)
            + "\n\nBy kind (mean over the seeds):\n\n" + by_kind(results, evals)
            + "\n\nUnseen market (price level 55, dearer/faster competitors, first-proposal bias 0.6, position "
              "bias 0.01, more people and autonomous agents):\n\n" + table(results, ["unseen"])
            + "\n\nUnseen market by kind:\n\n" + by_kind(results, ["unseen"])
            + f"\n\nEvaluation seeds: {verdict(results, evals)}. Unseen market: {verdict(results, ['unseen'])}.")
    print(body)
    if not args.no_benchmarks:
        write_section("agent_commerce", "Selling to machine customers (agent market)",
                      f"python -m experiments.agent_commerce --customers {args.customers} --threads {args.threads}",
                      "twins.sim.agent_market (simulated; ground truth known)", body)


if __name__ == "__main__":
    main()
