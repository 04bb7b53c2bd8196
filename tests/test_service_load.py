"""A bounded load test of `twins serve` on loopback (issue 23, acceptance): a real uvicorn server in its own
process takes oversized bodies (50 MB declared, 50 MB chunked), clients that trickle their body or their
headers, oversized headers and ordinary requests, all at once, while /health is probed every 20 ms on fresh
connections. /health must answer within 100 ms throughout (measured: at most 49 ms, median 2 ms, with the two
cores loaded by other jobs), and the server's RSS may grow by at most ``RSS_BOUND`` over its size after warm-up.
Bounded: about 2 s of attack, 25 s in all with the server's start."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import psutil
import pytest

RSS_BOUND = 64 * 2**20  # measured: +12 MiB
HEALTH_MS = 100
SERVER = """
import socket, sys
import uvicorn
from twins.serve import create_app
from twins.serve.limits import Limits
from twins.serve.server import config

limits = Limits(body_seconds=1.0, header_seconds=1.0, max_connections=200)
app = create_app({"nbr": sys.argv[1]}, poll_seconds=0, limits=limits)
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(256)
print(sock.getsockname()[1], flush=True)
uvicorn.Server(config(app, limits=limits)).run(sockets=[sock])
"""
MIB = 2**20


@pytest.fixture
def server(nbr_bundle):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(nbr_bundle)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = int(proc.stdout.readline())
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _status(reader: asyncio.StreamReader) -> int | None:
    """The status of the answer on ``reader``, its body drained; None when the server closed without one."""
    try:
        line = await reader.readline()
        if not line:
            return None
        length = 0
        while (header := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        return int(line.split()[1])
    except (ConnectionError, asyncio.IncompleteReadError):
        return None


async def _request(port: int, head: bytes, body_parts=(), delay: float = 0.0) -> tuple[int | None, float]:
    """Send ``head`` then each of ``body_parts`` (``delay`` seconds apart) while reading the answer; returns the
    status (None: closed without one) and the seconds it took."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def write() -> None:
        try:
            writer.write(head)
            await writer.drain()
            for part in body_parts:
                if delay:
                    await asyncio.sleep(delay)
                writer.write(part)
                await writer.drain()
        except ConnectionError:
            pass

    sending = asyncio.create_task(write())
    status = await asyncio.wait_for(_status(reader), 10)
    sending.cancel()
    writer.close()
    return status, time.perf_counter() - t0


def _post(path: str, headers: str) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}\r\n".encode()


async def _attack(port: int, pid: int) -> dict:
    process = psutil.Process(pid)
    for _ in range(100):  # up and answering
        try:
            if (await _request(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 200:
                break
        except OSError:
            await asyncio.sleep(0.1)
    body = b'{"histories": [[["i01", "i02"], ["i03"]]], "k": 5}'
    for _ in range(20):  # warm: the first answers load lazily imported code
        await _request(port, _post("/v1/models/nbr/recommend", f"Content-Length: {len(body)}\r\n") + body)
    baseline = process.memory_info().rss
    health: list[tuple[int | None, float]] = []
    rss: list[int] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            health.append(await _request(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
            rss.append(process.memory_info().rss)
            await asyncio.sleep(0.02)

    mib = b"[" * MIB
    chunked = [b"%x\r\n" % MIB + mib + b"\r\n"] * 50
    path = "/v1/models/nbr/recommend"
    attacks = {
        "declared_50mb": [_request(port, _post(path, f"Content-Length: {50 * MIB}\r\n"), [mib] * 50) for _ in range(3)],
        "chunked_50mb": [_request(port, _post(path, "Transfer-Encoding: chunked\r\n"), chunked) for _ in range(3)],
        "slow_body": [_request(port, _post(path, "Content-Length: 1000\r\n"), [b" "] * 100, 0.1) for _ in range(10)],
        "slow_headers": [_request(port, b"POST / HTTP/1.1\r\n", [b"X-Slow: y\r\n"] * 100, 0.1) for _ in range(10)],
        "huge_headers": [_request(port, b"GET /health HTTP/1.1\r\n", [b"X-Big: " + b"y" * 8000 + b"\r\n"] * 20)
                         for _ in range(2)],
        "valid": [_request(port, _post(path, f"Content-Length: {len(body)}\r\n") + body) for _ in range(5)],
    }
    prober = asyncio.create_task(probe())
    await asyncio.sleep(0.2)
    outcomes = dict(zip(attacks, await asyncio.gather(*(asyncio.gather(*calls) for calls in attacks.values()))))
    await asyncio.sleep(0.3)
    done.set()
    await prober
    return {"outcomes": outcomes, "health": health, "rss_growth": max(rss) - baseline, "alive": process.is_running()}


def test_oversized_and_slow_requests_do_not_starve_health(server):
    proc, port = server
    t0 = time.perf_counter()
    report = asyncio.run(asyncio.wait_for(_attack(port, proc.pid), 25))
    elapsed = time.perf_counter() - t0
    outcomes = report["outcomes"]
    # the server closes on a client still sending, and TCP may then reset the connection before the client reads
    # the 413: what counts is that the server stops reading at once
    for name in ("declared_50mb", "chunked_50mb"):
        assert 413 in {status for status, _ in outcomes[name]} and {status for status, _ in outcomes[name]} <= {413, None}
        assert all(seconds < 2 for _, seconds in outcomes[name]), outcomes[name]   # not after 50 MB
    assert {status for status, _ in outcomes["slow_body"]} == {408}
    assert all(0.9 < seconds < 3 for _, seconds in outcomes["slow_body"])
    assert {status for status, _ in outcomes["slow_headers"]} == {None}   # closed after the header deadline
    assert all(0.9 < seconds < 3 for _, seconds in outcomes["slow_headers"])
    assert {status for status, _ in outcomes["huge_headers"]} <= {431, 400, None}
    assert {status for status, _ in outcomes["valid"]} == {200}
    statuses = [status for status, _ in report["health"]]
    latencies = sorted(seconds for _, seconds in report["health"])
    assert len(statuses) > 20 and set(statuses) == {200}
    assert latencies[-1] * 1000 < HEALTH_MS, f"/health took up to {latencies[-1] * 1000:.0f} ms ({len(latencies)} probes)"
    assert report["rss_growth"] < RSS_BOUND, f"RSS grew by {report['rss_growth'] / 2**20:.0f} MiB"
    assert report["alive"] and proc.poll() is None and elapsed < 25
