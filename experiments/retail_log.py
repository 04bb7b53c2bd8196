"""A seeded, retailer-sized transaction log generator, for cost figures only (time, memory, bytes): its numbers say
nothing about model quality on real data and are never used for quality claims.

    python -m experiments.retail_log OUT_DIR --lines 10000000                       # CSV, one file a month
    python -m experiments.retail_log OUT_DIR --lines 50000000 --customers 1000000 --format parquet

What a user would ``twins ingest``: a plain export with the columns ``order_id, customer_id, timestamp, sku, qty,
unit_price, store`` (one line per order line), one file per month, written day by day (memory is set by a day's
lines and the customers' habits, never by the log), and ``OUT_DIR/source.yaml`` beside it to ingest it with
(``OUT_DIR/manifest.json`` holds the counts, the seed and the time taken). Exactly ``--lines`` lines, over ``--days``
days from ``--start``; ``--customers`` (default one per 50 lines) and ``--items`` (default 50,000, at most one per
20 lines).

Structure: each customer orders at a personal rate (lognormal) from a home store; an order holds each of the
customer's favourite items (drawn from one to three home clusters of items) with a personal re-buy probability,
items of the same cluster as a favourite it bought (co-purchase), and a few items picked by popularity among the
items on sale that day. Items come in clusters, follow a Zipf-like popularity, and a share of them is launched
during the log (a new item sells more in its first weeks). Orders per day follow a weekly profile (Saturday
busiest), a yearly wave and a December rush; prices are fixed per item, 20 % off on promotion days.

Bad rows, at ``--bad-rate`` of the lines in all (see ``BAD_SHARES``), each counted in the manifest under the
quarantine reason ``twins ingest`` gives it: ``unparsable_time`` (a spreadsheet error or an impossible date in
the timestamp; null in Parquet), ``missing_quantity`` (empty qty), ``negative_value`` (a negative unit price) and
``duplicate_line`` (an exact copy of the line before it, an export retry).

Measured at 1 thread on the 2-core machine (wall, peak RSS; other jobs on the other core): 10M lines CSV 27 s,
585 MB, 0.18 GiB; 100M lines CSV 220 s, 5.95 GB (about 60 bytes a line), 1.19 GiB; 5M lines Parquet with 100,000
customers 7 s, 44 MB, 0.17 GiB.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

#: share of the bad rows per quarantine reason (they sum to 1)
BAD_SHARES = {"unparsable_time": 0.3, "missing_quantity": 0.25, "negative_value": 0.15, "duplicate_line": 0.3}
BAD_TIMES = np.array(["#VALUE!", "0000-00-00 00:00:00", "2025-02-30 12:00:00", "31/12/2024 25:61", "n/a"])
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
WEEKLY = np.array([0.9, 0.85, 0.9, 1.0, 1.15, 1.35, 0.85])  # Monday .. Sunday
COLUMNS = ("order_id", "customer_id", "timestamp", "sku", "qty", "unit_price", "store")
FAVOURITES = 8
CLUSTER_SIZE = 100
STORES = 40


class Shop:
    """The retailer's customers and items (drawn once from the seed): rates, habits, clusters, prices, launches."""

    def __init__(self, customers: int, items: int, days: int, rng: np.random.Generator) -> None:
        self.n_items, self.days = items, days
        self.n_clusters = max(1, items // CLUSTER_SIZE)
        # item i belongs to cluster i * n_clusters // items: clusters are contiguous ranges of the internal index
        self.cluster = (np.arange(items) * self.n_clusters // items).astype(np.int32)
        self.start = np.searchsorted(self.cluster, np.arange(self.n_clusters))
        self.end = np.searchsorted(self.cluster, np.arange(self.n_clusters), side="right")
        self.popularity = 1 / (1 + rng.permutation(items)) ** 0.8 + 1e-3
        self.launch = np.where(rng.random(items) < 0.25, rng.integers(1, max(days, 2), items), 0)
        self.price = np.round(np.exp(rng.normal(1.2, 0.8, items)), 2) + 0.09
        self.sku = rng.permutation(items)                       # the label of internal item i: SKU-<sku[i]>
        self.rate = np.exp(rng.normal(0, 1.0, customers))       # relative order rates
        self.cum_rate = np.cumsum(self.rate)
        self.store = rng.integers(0, STORES, customers)
        home = rng.integers(0, self.n_clusters, (customers, 3))
        n_home = rng.integers(1, 4, customers)
        slot = rng.integers(0, n_home[:, None], (customers, FAVOURITES))
        weights = self.weights(0)
        self.favourite = self.in_cluster(np.take_along_axis(home, slot, 1).ravel(), np.cumsum(weights),
                                         rng).reshape(customers, FAVOURITES)
        self.rebuy = rng.beta(1.5, 4.0, (customers, FAVOURITES))  # personal re-buy probability per favourite

    def weights(self, day: int) -> np.ndarray:
        """Items' sales weights on ``day``: popularity, zero before launch, boosted in a new item's first weeks."""
        age = day - self.launch
        boost = np.where(self.launch > 0, 1 + 3 * np.exp(-np.maximum(age, 0) / 30), 1.0)
        return np.where(age >= 0, self.popularity * boost, 0.0)

    def in_cluster(self, clusters: np.ndarray, cum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item of each of ``clusters`` by the weights whose cumulative sum is ``cum``."""
        lo = np.where(self.start[clusters] > 0, cum[self.start[clusters] - 1], 0.0)
        hi = cum[self.end[clusters] - 1]
        idx = np.searchsorted(cum, lo + rng.random(len(clusters)) * (hi - lo), side="right")
        return np.clip(idx, self.start[clusters], self.end[clusters] - 1)


def day_weights(start: datetime, days: int) -> np.ndarray:
    """Relative orders per day: weekly profile x yearly wave x December rush (quiet after Christmas)."""
    dates = [start + timedelta(days=d) for d in range(days)]
    doy = np.array([d.timetuple().tm_yday for d in dates])
    dec = np.array([1.35 if d.month == 12 and d.day <= 24 else 0.8 if d.month == 12 else 1.0 for d in dates])
    return WEEKLY[[d.weekday() for d in dates]] * (1 + 0.15 * np.sin(2 * np.pi * (doy - 80) / 365)) * dec


def orders_of_day(shop: Shop, day: int, n_lines: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Exactly ``n_lines`` clean lines of one day's orders, in time order: ``order`` (0-based within the day),
    ``customer``, ``second``, ``item`` (and its label ``sku``), ``store`` (the home store, 8 % of orders another),
    ``qty``, ``price``."""
    weights = shop.weights(day)
    cum = np.cumsum(weights)
    promo = rng.random(shop.n_items) < 0.02
    parts: list[dict[str, np.ndarray]] = []
    have, offset = 0, 0
    while have < n_lines:
        k = max(16, int((n_lines - have) / 3.5 * 1.1))
        cust = np.searchsorted(shop.cum_rate, rng.random(k) * shop.cum_rate[-1], side="right")
        second = np.sort(rng.integers(8 * 3600, 22 * 3600, k))
        rows, cols = np.nonzero(rng.random((k, FAVOURITES)) < shop.rebuy[cust])
        fav = shop.favourite[cust[rows], cols]
        co = rng.random(len(fav)) < 0.35
        co_items = shop.in_cluster(shop.cluster[fav[co]], cum, rng)
        n_pick = rng.poisson(1.2, k)
        n_pick[np.bincount(np.concatenate([rows, rows[co]]), minlength=k) + n_pick == 0] = 1  # no empty order
        picked = np.searchsorted(cum, rng.random(n_pick.sum()) * cum[-1], side="right")
        order = np.concatenate([rows, rows[co], np.repeat(np.arange(k), n_pick)])
        item = np.concatenate([fav, co_items, picked])
        on_sale = weights[item] > 0                                   # a home cluster may have nothing on sale yet
        key = np.unique(order[on_sale].astype(np.int64) * shop.n_items + item[on_sale])  # one line per item per order
        order, item = key // shop.n_items, key % shop.n_items
        store = np.where(rng.random(k) < 0.92, shop.store[cust], rng.integers(0, STORES, k))
        parts.append({"order": order + offset, "customer": cust[order], "second": second[order], "item": item,
                      "store": store[order]})
        have += len(order)
        offset += k
    lines = {c: np.concatenate([p[c] for p in parts])[:n_lines] for c in parts[0]}
    # later batches' orders interleave in time with earlier ones: renumber orders by time
    by_time = np.lexsort((lines["order"], lines["second"]))
    lines = {c: v[by_time] for c, v in lines.items()}
    lines["order"] = np.cumsum(np.r_[0, np.diff(lines["order"]) != 0])
    lines["qty"] = 1 + rng.poisson(0.4, n_lines)
    lines["price"] = np.round(shop.price[lines["item"]] * np.where(promo[lines["item"]], 0.8, 1.0), 2)
    lines["sku"] = shop.sku[lines["item"]]
    return lines


def corrupt(n: int, bad_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each line's fate: -1 clean, else an index into BAD_SHARES. A duplicate (a copy of the line before) follows
    a clean line that is no copy itself, so every bad line has exactly one reason."""
    u = rng.random(n)
    edges = np.cumsum([bad_rate * s for s in BAD_SHARES.values()])
    fate = np.searchsorted(edges, u, side="right")
    fate = np.where(fate < len(BAD_SHARES), fate, -1)
    dup = list(BAD_SHARES).index("duplicate_line")
    is_dup = fate == dup
    ok = np.r_[False, (fate[:-1] == -1)]        # the line before is clean
    fate[is_dup & ~ok] = -1
    return fate


def day_frame(lines: dict[str, np.ndarray], fate: np.ndarray, date: datetime, order_base: int, fmt: str,
              rng: np.random.Generator) -> pl.DataFrame:
    """One day's lines as the export's columns, bad lines made bad (duplicates copy the line before)."""
    n = len(fate)
    src = np.arange(n)
    src[fate == list(BAD_SHARES).index("duplicate_line")] -= 1
    bad_time = fate == list(BAD_SHARES).index("unparsable_time")
    qty = lines["qty"][src].astype(np.float64)
    qty[fate == list(BAD_SHARES).index("missing_quantity")] = np.nan
    price = lines["price"][src]
    price = np.where(fate == list(BAD_SHARES).index("negative_value"), -price, price)
    ts = (np.datetime64(date.replace(tzinfo=None), "s") + lines["second"][src].astype("timedelta64[s]")).astype("datetime64[us]")
    df = pl.DataFrame({"order": lines["order"][src] + order_base, "customer": lines["customer"][src],
                       "timestamp": ts, "sku": lines["sku"][src], "qty": qty, "unit_price": price,
                       "store": lines["store"][src]})
    time_col = (pl.col("timestamp").dt.strftime(TIME_FORMAT) if fmt == "csv" else pl.col("timestamp"))
    if bad_time.any():
        bad = (pl.Series(BAD_TIMES[rng.integers(0, len(BAD_TIMES), n)]) if fmt == "csv"
               else pl.lit(None, pl.Datetime("us")))
        time_col = pl.when(pl.Series(bad_time)).then(bad).otherwise(time_col)
    return df.select(
        pl.format("O{}", pl.col("order")).alias("order_id"),
        pl.format("C{}", pl.col("customer").cast(pl.String).str.zfill(7)).alias("customer_id"),
        time_col.alias("timestamp"),
        pl.format("SKU-{}", pl.col("sku").cast(pl.String).str.zfill(5)).alias("sku"),
        pl.col("qty").fill_nan(None).cast(pl.Int32).alias("qty"),
        pl.col("unit_price"),
        pl.format("S{}", pl.col("store").cast(pl.String).str.zfill(2)).alias("store"),
    )


def generate(out: str | Path, lines: int, customers: int | None = None, items: int = 50_000, days: int = 730,
             start: str = "2024-01-01", seed: int = 0, fmt: str = "csv", bad_rate: float = 0.002) -> dict:
    """Write the log into ``out`` (files ``transactions_YYYY-MM.<fmt>``, ``source.yaml``, ``manifest.json``);
    returns the manifest. ``customers`` defaults to one per 50 lines."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"--format {fmt!r}: use csv or parquet")
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    customers = customers or max(100, lines // 50)
    items = min(items, max(CLUSTER_SIZE, lines // 20))
    rng = np.random.default_rng(seed)
    shop = Shop(customers, items, days, rng)
    first = datetime.fromisoformat(start)
    per_day = rng.multinomial(lines, day_weights(first, days) / day_weights(first, days).sum())
    counts = dict.fromkeys(BAD_SHARES, 0)
    files: list[str] = []
    orders, month, writer, parts = 0, None, None, []
    for d in range(days):
        date = first + timedelta(days=d)
        if date.strftime("%Y-%m") != month:
            _close(writer, parts, out, month, fmt)
            month, parts = date.strftime("%Y-%m"), []
            files.append(f"transactions_{month}.{fmt}")
            writer = (out / files[-1]).open("wb") if fmt == "csv" else None
        if not per_day[d]:
            continue
        day = orders_of_day(shop, d, int(per_day[d]), rng)
        fate = corrupt(len(day["order"]), bad_rate, rng)
        for i, name in enumerate(BAD_SHARES):
            counts[name] += int((fate == i).sum())
        frame = day_frame(day, fate, date, orders, fmt, rng)
        orders += int(day["order"].max()) + 1
        if fmt == "csv":
            frame.write_csv(writer, include_header=writer.tell() == 0)
        else:
            parts.append(frame)
    _close(writer, parts, out, month, fmt)
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in out.name) or "retail_log"
    (out / "source.yaml").write_text(source_yaml(name, fmt))
    manifest = {"lines": lines, "accepted": lines - sum(counts.values()), "quarantined": counts, "orders": orders,
                "customers": customers, "items": items, "days": days, "start": start, "seed": seed, "format": fmt,
                "bad_rate": bad_rate, "files": files, "bytes": sum((out / f).stat().st_size for f in files),
                "seconds": round(time.perf_counter() - t0, 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _close(writer, parts: list[pl.DataFrame], out: Path, month: str | None, fmt: str) -> None:
    if writer is not None:
        writer.close()
    elif parts:
        pl.concat(parts).write_parquet(out / f"transactions_{month}.{fmt}", row_group_size=500_000)


def source_yaml(name: str, fmt: str) -> str:
    """The source config that ingests the log (``twins ingest OUT_DIR/source.yaml``)."""
    time_format = f'time: {{format: "{TIME_FORMAT}"}}\n' if fmt == "csv" else ""
    return (f"# A generated retail transaction log (experiments.retail_log; for cost figures only).\n"
            f"name: {name}\nfiles:\n  - path: transactions_*.{fmt}\n"
            f"columns: {{basket_id: order_id, customer_id: customer_id, event_time: timestamp, item_id: sku, "
            f"quantity: qty, unit_price: unit_price}}\nextra_columns: [store]\n{time_format}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--customers", type=int, help="default: one per 50 lines")
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--days", type=int, default=730)
    ap.add_argument("--start", default="2024-01-01")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", dest="fmt", choices=("csv", "parquet"), default="csv")
    ap.add_argument("--bad-rate", type=float, default=0.002, help="share of bad lines (all reasons together)")
    args = ap.parse_args()
    manifest = generate(args.out, args.lines, args.customers, args.items, args.days, args.start, args.seed, args.fmt,
                        args.bad_rate)
    print(json.dumps({k: v for k, v in manifest.items() if k != "files"}, indent=2))


if __name__ == "__main__":
    main()
