"""Demand roll-up: product x day demand from the sum of per-machine next-order forecasts, against direct forecasts
of each product's daily series, on held-out simulated days, with and without a shock.

    python -m experiments.demand_rollup                         # 3,000 machines, three scenarios
    python -m experiments.demand_rollup --set n_machines=1000 --epochs 5   # a quick look

Protocol: one market per scenario (``configs/sim/market.yaml``, 365 days observed, seed of the config): no shock;
a price step (from day 365 + 14, competitor supplier 1 cuts its prices by 20 %: adaptable machines switch and
buy early at the deal); a new fleet (25 % more machines join on day 365 + 14, empty, and order at once).
Demand = units of a product ordered by machines on a day. Rolling origins every 7 days over 8 held-out weeks
(days 365..420), each forecasting the next 7 days from events before the origin only. Twin roll-up: the
PyTorch next-order forecaster (trained once, on the no-shock market's cut-offs from day 60 to 245 with targets
within 120 days, so on days < 365 only) gives each machine with >= 3 orders its 10/50/90 % next-order time and
quantity, turned into expected orders per day (``twins.models.demand_rollup``, renewals every quantity / rate
days); machines with 1-2 orders (the new fleet at first) are rolled forward from their last order at their
consumption rate (telemetry, else orders); machines with fewer are left out. Direct forecasts see only the
product's daily series. Errors over product-days of the weeks after the shock day (weeks 3-8; the same weeks
without a shock): daily MAE and WAPE, WAPE of each week's total and bias; and WAPE over all 8 weeks.
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
import torch

from experiments.report import write_section
from twins.models.demand_rollup import (
    AGGREGATES,
    demand_errors,
    expected_orders,
    roll_up,
)
from twins.models.replenishment import histories, samples
from twins.models.replenishment_torch import ReplenishmentForecaster
from twins.runtime.replenishment_features import FEATURES, History, features
from twins.sim import KINDS, Market, load_config, simulate
from twins.twin.machine import order_rate, usage_rate

CONFIG = "configs/sim/market.yaml"
DAY_S = 86_400
WEEKS, STEP, SHOCK_WEEK = 8, 7, 2
TRAIN_HORIZON, CUTOFF_STEP = 120, 13
TWINS, RATE = "twins: next-order roll-up", "twins: consumption rate"


def scenarios(n: int, shock_day: int) -> dict[str, list[str]]:
    return {"no shock": [],
            "price step": [f"shocks.price_day={shock_day}", "shocks.price_supplier=1", "shocks.price_factor=0.8"],
            "new fleet": [f"n_machines={n + n // 4}", f"shocks.fleet_machines={n // 4}", f"shocks.fleet_day={shock_day}"]}


def fallback(h: History, cutoff: float) -> tuple[float, float, float] | None:
    """(days to the next order, quantity, rate) of a machine with 1-2 orders before ``cutoff``: its last order
    lasts quantity / rate days (rate from its usage counter, else its orders); None when no rate is known."""
    k = np.searchsorted(h.t, cutoff)
    if k == 0:
        return None
    j = np.searchsorted(h.tel_t, cutoff)
    rate = usage_rate(h.tel_t[:j], h.usage[:j], 7)[0] if j >= 2 else order_rate(h.t[:k], h.q[:k])[0]
    if not np.isfinite(rate) or rate <= 0:
        return None
    return max(h.t[k - 1] + h.q[k - 1] / rate - cutoff, 0.0), float(h.q[k - 1]), float(rate)


def twin_forecasts(model: ReplenishmentForecaster, hist: dict[str, History], product: np.ndarray, cutoff: float,
                   days: int, n_products: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Twin roll-up and consumption-rate roll-up ``[n_products, days]`` at ``cutoff``, and machine counts. A
    forecast quantity is capped at the machine's largest order so far."""
    rows, fb, ids_rows, ids_fb, q_max = [], [], [], [], []
    for m, h in hist.items():
        x = features(h, cutoff)
        if x is not None:
            rows.append(x)
            ids_rows.append(product[int(m[1:])])
            q_max.append(h.q[h.t < cutoff].max())
        elif (f := fallback(h, cutoff)) is not None:
            fb.append(f)
            ids_fb.append(product[int(m[1:])])
    X = np.asarray(rows).reshape(-1, len(FEATURES))
    out = model.predict(X)
    out["quantity"] = np.minimum(out["quantity"], np.asarray(q_max))  # off its training distribution the net can explode
    rate = np.exp(X[:, FEATURES.index("log_usage_rate")])
    nxt, q_fb, rate_fb = (np.asarray(v) for v in zip(*fb)) if fb else (np.empty(0),) * 3
    orders = np.concatenate([expected_orders(out["time_low"], out["time"], out["time_high"], out["quantity"] / rate, days),
                             expected_orders(nxt, nxt, nxt, q_fb / np.maximum(rate_fb, 1e-9), days)])
    prod = np.concatenate([ids_rows, ids_fb]).astype(int)
    qty = np.concatenate([out["quantity"], q_fb])
    rates = np.concatenate([rate, rate_fb])
    return (roll_up(prod, orders, qty, n_products), roll_up(prod, np.ones((len(prod), days)), rates, n_products),
            {"forecast": len(rows), "rolled forward": len(fb)})


def daily_demand(market: Market) -> np.ndarray:
    """``[n_products, days]`` units ordered by machines per product and simulated day."""
    cfg, o = market.config, market.log.orders
    out = np.zeros((cfg.products.n_products, cfg.days + cfg.horizon_days))
    np.add.at(out, (market.machines.product[o["machine"]], o["day"]), o["quantity"])
    return out


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="overrides", action="append", default=["n_machines=3000", "humans.n=0"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 avoids oversubscription on shared cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    base = load_config(CONFIG, [*args.overrides, f"horizon_days={WEEKS * STEP}"])
    shock_day = base.days + SHOCK_WEEK * STEP
    origins = [base.days + STEP * w for w in range(WEEKS)]
    markets = {name: simulate(load_config(CONFIG, [*args.overrides, f"horizon_days={WEEKS * STEP}", *extra]))
               for name, extra in scenarios(base.n_machines, shock_day).items()}
    hists = {name: histories(market.events()) for name, market in markets.items()}

    start_day = base.start.timestamp() / DAY_S
    train = samples(hists["no shock"], sorted(hists["no shock"]),
                    [start_day + d for d in range(60, base.days - TRAIN_HORIZON + 1, CUTOFF_STEP)], TRAIN_HORIZON)
    fit_start = time.perf_counter()
    model = ReplenishmentForecaster(epochs=args.epochs, seed=args.seed).fit(train.X, train.T, train.Q, train.censored,
                                                                           TRAIN_HORIZON)
    fit_s = time.perf_counter() - fit_start

    results, counts, weekly, shock_size, mean_daily = {}, {}, {}, {}, {}
    for name, market in markets.items():
        actual = daily_demand(market)
        o = market.log.orders
        adaptable = (market.machines.kind[o["machine"]] == KINDS.index("adaptable")) & (o["day"] >= shock_day)
        shock_size[name] = (actual[:, shock_day:shock_day + STEP].sum(), actual[:, shock_day:origins[-1] + STEP].sum(),
                            float(np.mean(o["supplier"][adaptable] == 1)))
        n_products = actual.shape[0]
        preds: dict[str, list[np.ndarray]] = {TWINS: [], RATE: [], **{k: [] for k in AGGREGATES}}
        for o in origins:
            twins, rates, counts[(name, o)] = twin_forecasts(model, hists[name], market.machines.product,
                                                             start_day + o, STEP, n_products)
            preds[TWINS].append(twins)
            preds[RATE].append(rates)
            for k, fn in AGGREGATES.items():
                preds[k].append(fn(actual[:, :o], STEP))
        truth = np.stack([actual[:, o:o + STEP] for o in origins])     # [origins, products, days]
        after = np.array(origins) >= shock_day
        results[name] = {}
        for method, p in preds.items():
            p = np.stack(p)
            per_product = np.abs(p[after] - truth[after]).sum((0, 2)) / truth[after].sum((0, 2))
            results[name][method] = {**{f"after/{k}": v for k, v in demand_errors(p[after], truth[after]).items()},
                                     "after/median_product_wape": float(np.median(per_product)),
                                     "all/wape": demand_errors(p, truth)["wape"]}
            weekly[(name, method)] = np.abs(p.sum(-1) - truth.sum(-1)).sum(1) / truth.sum((1, 2))
        mean_daily[name] = float(truth[after].mean())
    total_s = time.perf_counter() - started

    from twins import tracking
    from twins.config import redact

    with tracking.run("demand_rollup", "rollup-vs-aggregate",
                      tags={"dataset": "simulated-market", "protocol": "rolling weekly origins, 8 held-out weeks",
                            "model": "next-order twins roll-up vs aggregate series"}) as mlflow:
        tracking.log_params(mlflow, {"config": base.model_dump(mode="json"), "seed": args.seed, "epochs": args.epochs,
                                     "scenarios": scenarios(base.n_machines, shock_day), "origins": origins,
                                     "train_rows": len(train.T)})
        mlflow.log_dict(redact(base.model_dump(mode="json")), "market_config.json")
        for name, by_method in results.items():
            for method, metrics in by_method.items():
                tracking.log_metrics(mlflow, {f"{slug(name)}/{slug(method)}/{k}": v for k, v in metrics.items()})
        tracking.log_metrics(mlflow, {"fit_s": fit_s, "total_s": total_s})
        run_id = mlflow.active_run().info.run_id

    rows = []
    for name, by_method in results.items():
        best = min(by_method, key=lambda m: by_method[m]["after/wape"])
        for method, r in by_method.items():
            mark = "**" if method == best else ""
            rows.append(f"| {name} | {mark}{method}{mark} | {r['after/mae']:.1f} | {r['after/wape']:.3f} | "
                        f"{r['after/median_product_wape']:.3f} | {r['after/total_wape']:.3f} | {r['after/bias']:+.3f} | "
                        f"{r['all/wape']:.3f} |")
    last = {name: counts[(name, origins[-1])] for name in markets}
    week_rows = "\n".join(f"| {name} | {method} | " + " | ".join(f"{v:.2f}" for v in weekly[(name, method)]) + " |"
                           for name in markets for method in (TWINS, RATE, "moving average (28 d)"))
    direct = {name: min(AGGREGATES, key=lambda m: results[name][m]["after/total_wape"]) for name in markets}
    gains = "; ".join(f"{name}: {results[name][TWINS]['after/total_wape']:.3f} vs {results[name][d]['after/total_wape']:.3f} "
                      f"({d}, {results[name][TWINS]['after/total_wape'] / results[name][d]['after/total_wape'] - 1:+.0%})"
                      for name, d in direct.items())
    calm = shock_size["no shock"]
    size = "; ".join(f"{name}: {shock_size[name][0] / calm[0] - 1:+.0%} in week {SHOCK_WEEK + 1}, "
                     f"{shock_size[name][1] / calm[1] - 1:+.0%} over weeks {SHOCK_WEEK + 1}-{WEEKS}, "
                     f"{shock_size[name][2]:.0%} of adaptable machines' orders to supplier 1 (no shock: {calm[2]:.0%})"
                     for name in markets if name != "no shock")
    body = f"""Protocol: one simulated market per scenario (`{CONFIG}`, seed {base.seed}, {base.n_machines:,} machines,
{base.products.n_products} products, {base.days} days observed); demand = units a product is ordered by machines per day.
Rolling origins every {STEP} days over {WEEKS} held-out weeks (days {origins[0]}-{origins[-1] + STEP - 1}), each
forecasting the next {STEP} days from events before the origin. Shock on day {shock_day} (after week {SHOCK_WEEK}):
*price step*: competitor supplier 1 cuts every price by 20 % (adaptable machines switch and buy early at the deal);
*new fleet*: {base.n_machines // 4:,} more machines join, empty, and order at once. Twin roll-up: the PyTorch
next-order forecaster (trained once on the no-shock market, cut-offs days 60-{base.days - TRAIN_HORIZON}, targets
within {TRAIN_HORIZON} days: only days < {base.days}; {len(train.T):,} rows, {args.epochs} epochs) per machine with >= 3
orders, its 10/50/90 % time quantiles as a piecewise-linear distribution, renewals every quantity / rate days;
machines with 1-2 orders rolled forward from their last order at their telemetry (else order) rate; machines at the
last origin: {", ".join(f"{n}: {c['forecast']:,} forecast + {c['rolled forward']:,} rolled forward" for n, c in last.items())}.
Consumption-rate roll-up: the same machines' rates summed, flat. Direct forecasts see only each product's series.
Errors over the product-days of weeks {SHOCK_WEEK + 1}-{WEEKS} (after the shock day; the same weeks without a shock;
mean actual demand {mean_daily['no shock']:.0f} units per product-day without a shock): daily MAE (units),
WAPE (pooled, and the median over products), WAPE of each week's total, bias (sum pred / sum actual - 1); last
column: WAPE over all {WEEKS} weeks. Best daily WAPE per scenario in bold.

| scenario | method | daily MAE | daily WAPE | median product WAPE | weekly-total WAPE | bias | WAPE, {WEEKS} weeks |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Size of the shocks, units ordered against the no-shock market (the price-step market is the no-shock market until
day {shock_day}; the fleet market has its own draws): {size}. Weekly-total WAPE week by week (origin days {origins[0]}, {origins[1]}, ...; the shock lands at
the start of week {SHOCK_WEEK + 1}):

| scenario | method | {" | ".join(f"wk {w + 1}" for w in range(WEEKS))} |
|---|---|{"---|" * WEEKS}
{week_rows}

Reading: weekly-total WAPE after the shock day, twin next-order roll-up vs the best direct forecast: {gains}.
Daily WAPE is dominated by the lumpiness of orders (each machine orders every few weeks) and separates the methods
far less than horizon totals do. The twins see no prices: in the price step the roll-up's error falls in week
{SHOCK_WEEK + 1} because the pull-forward meets its no-shock over-forecast (bias {results['no shock'][TWINS]['after/bias']:+.3f}), not
because it foresaw the shock. The fleet's first fills (week {SHOCK_WEEK + 1}) are unknown to every method; from the next
origin the twins know most new machines, while machines with one order and no telemetry (no rate yet) are left
out, hence the roll-ups' negative bias there.

{total_s:.0f} s in all (forecaster fit {fit_s:.0f} s, 1 thread). MLflow run `{run_id}` (experiment `demand_rollup`)."""
    print(body)
    write_section("demand_rollup", "Machine customers: demand roll-up vs aggregate forecasts (simulated market)",
                  "python -m experiments.demand_rollup", f"simulated market ({CONFIG}, {base.n_machines:,} machines, 3 scenarios)",
                  body)


if __name__ == "__main__":
    main()
