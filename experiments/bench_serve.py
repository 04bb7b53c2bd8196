"""Load test of `twins serve` (next basket, emotion) from a second process on loopback; the table goes to BENCHMARKS.md.

    python -m experiments.bench_serve                      # Ta-Feng GP-TopFreq bundle (+ the GoEmotions bundle if exported)
    python -m experiments.bench_serve --seconds 5 --no-write

Fits GP-TopFreq on Ta-Feng (Reality Check version; all customers' histories but the last basket), exports it
(top 100), starts `twins serve` in its own process, and from this process sends POST /v1/models/nbr/recommend
requests (one real customer's history each, k = 10) with N concurrent connections for a fixed time, after a
warm-up. With an emotion bundle (default: the one `python -m experiments.emotion` exports), the same for
POST /v1/models/emotion/emotion with one GoEmotions test message per request. Reports p50 / p99 latency as seen
by the client, requests/s and the count of 5xx (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from experiments.report import write_section
from twins import api, paths
from twins.data.events import baskets_by_customer, scan_events
from twins.models import GPTopFreq
from twins.models.topfreq_torch import export_gp_topfreq

SOURCE = "configs/sources/tafeng_realitycheck.yaml"


def bundle_and_histories(out: Path) -> tuple[Path, list[list[list[str]]], int]:
    """Export GP-TopFreq fitted on every customer's history (all baskets but the last); return the histories."""
    report = api.ingest(SOURCE, track=False)
    baskets = baskets_by_customer(scan_events(paths.events_dir("tafeng_realitycheck")))
    histories = {c: b[:-1] for c, b in baskets.items() if len(b) > 1}
    bundle = export_gp_topfreq(GPTopFreq().fit(histories), out / "nbr", k=100, overwrite=True)
    return bundle, list(histories.values()), report.customers


def emotion_bodies() -> list[dict]:
    """One GoEmotions test message per request body."""
    import polars as pl

    report = api.ingest("configs/sources/goemotions.yaml", track=False)
    texts = pl.read_parquet(report.events_path).filter(pl.col("split") == "test")["text"].to_list()
    return [{"texts": [t]} for t in texts]


async def _load(url: str, bodies: list[dict] | None, concurrency: int, seconds: float, warmup: int) -> dict[str, float]:
    """Requests to ``url`` from ``concurrency`` workers for ``seconds``: POST a random body, or GET without bodies."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        rng = random.Random(concurrency)
        send = (lambda: client.get(url)) if bodies is None else (lambda: client.post(url, json=rng.choice(bodies)))
        for _ in range(warmup):
            (await send()).raise_for_status()
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                response = await send()
                latencies.append(time.perf_counter() - t0)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {"endpoint": "GET /health" if bodies is None else "POST " + url.rsplit("/", 1)[-1], "concurrency": concurrency,
            "requests": len(ms), "rps": len(ms) / wall, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "errors_5xx": sum(n for s, n in statuses.items() if s >= 500), "non_200": sum(n for s, n in statuses.items() if s != 200)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(base: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"twins serve exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"twins serve not ready after {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0, help="measured seconds per concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    ap.add_argument("--emotion-bundle", type=Path, default=paths.models_dir() / "goemotions-ensemble",
                    help="emotion bundle to load-test too (skipped when the folder does not exist)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle, histories, customers = bundle_and_histories(Path(tmp))
        bodies = [{"histories": [h], "k": 10} for h in histories]
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        emotion = args.emotion_bundle.is_dir()
        extra = ["--model", f"emotion={args.emotion_bundle}"] if emotion else []
        server = subprocess.Popen([sys.executable, "-m", "twins.cli", "serve", "--model", f"nbr={bundle}", *extra, "--port",
                                   str(port), "--poll", "0"], stderr=subprocess.DEVNULL, env=os.environ.copy())
        try:
            _wait_ready(base, server)
            rows = [asyncio.run(_load(f"{base}/v1/models/nbr/recommend", bodies, c, args.seconds, warmup=200))
                    for c in args.concurrency]
            if emotion:
                messages = emotion_bodies()
                rows += [asyncio.run(_load(f"{base}/v1/models/emotion/emotion", messages, c, args.seconds, warmup=50))
                         for c in args.concurrency]
            floor = asyncio.run(_load(f"{base}/health", None, 1, args.seconds, warmup=200))
        finally:
            server.terminate()
            server.wait(30)
    sizes = [sum(len(b) for b in h) for h in histories]
    load_avg = os.getloadavg()[0]
    lines = ["| endpoint | concurrency | requests | requests/s | p50 ms | p99 ms | 5xx |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['endpoint']} | {r['concurrency']} | {r['requests']:,} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
              f"{r['errors_5xx']} |" for r in [*rows, floor]]
    body = "\n".join([
        f"`twins serve` (uvicorn, one worker process, JSON request logs on) with a GP-TopFreq bundle fitted on Ta-Feng "
        f"({len(histories):,} customers' histories, top 100 exported), `POST /v1/models/nbr/recommend` with one real "
        f"history per request (median {int(np.median(sizes))} items, k = 10). Load from a second Python process "
        f"(httpx, asyncio, N keep-alive connections) on loopback, {args.seconds:.0f} s per level after 200 warm-up "
        "requests; latency as seen by the client. Server and client share the machine's cores. `GET /health` (same "
        "HTTP stack and logging, no model) is shown for reference: the model itself takes ~0.2-0.3 ms per history in "
        "process, so most of the time is HTTP and JSON on both sides, and rows move by a few ms between runs on this "
        f"shared machine (1-min load average at the end: {load_avg:.1f}).", "", *lines, "",
        f"Zero 5xx: {'yes' if all(r['errors_5xx'] == 0 for r in rows) else 'NO'}; non-200 answers: "
        f"{sum(r['non_200'] for r in rows)}."
        + (f" `POST emotion`: bundle `{args.emotion_bundle.name}` (fine-tuned MiniLM-L6 + TF-IDF blend, 64-token "
           "truncation), one GoEmotions test message per request." if emotion else " No emotion bundle was found, so emotion is not in this run.")])
    print(body)
    if not args.no_write:
        write_section("serve", "Serving: next basket and emotion over HTTP (twins serve)", "python -m experiments.bench_serve",
                      f"Ta-Feng, Reality Check version ({customers:,} customers)", body)
    if any(r["errors_5xx"] for r in rows):
        raise SystemExit("5xx answers under load")


if __name__ == "__main__":
    main()
