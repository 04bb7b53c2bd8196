"""``twins ui``: the MLflow UI on the twins store, in its own process group.

The server gets half the cores (1 on a 2-core machine, at most 4), its URL is printed only once it answers, and
Ctrl-C or SIGTERM reach the whole server (its workers included). MLflow 3.17's UI opens on its GenAI pages unless
the URL asks for model training, so every link printed does (``tracking.ML_WORKFLOW``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from twins import tracking
from twins.config import redact_text


def workers(cpus: int | None = None) -> int:
    """Half the cores, 1 to 4 (MLflow's default of 4 starves a 2-core machine)."""
    return max(1, min(4, (cpus or os.cpu_count() or 1) // 2))


def start(port: int, host: str = "127.0.0.1", n_workers: int | None = None) -> subprocess.Popen:
    """Start ``mlflow ui`` on the twins store in a new process group (``stop`` ends the group)."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking.tracking_uri(), "--host", host,
           "--port", str(port), "--workers", str(n_workers or workers())]
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def wait_until_up(proc: subprocess.Popen, base: str, timeout: float = 300.0) -> bool:
    """Poll ``base/health`` until it answers (True) or the server exits (False); TimeoutError after ``timeout`` s
    (a new store's first migration alone takes ~12 s here, the server 20-50 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the MLflow server at {base} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    """Send ``sig`` to the server's process group and wait; SIGKILL the group after ``timeout`` s."""
    try:
        os.killpg(proc.pid, sig)
        return proc.wait(timeout)
    except ProcessLookupError:
        return proc.wait()
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def links(base: str) -> list[str]:
    """``<experiment>: <URL>`` of each experiment with twins' models view (pipeline experiments), newest first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    found = client.search_experiments(filter_string=f"tags.`mlflow.sharedViewState.{tracking.MODELS_VIEW}` != ''",
                                      order_by=["last_update_time DESC"], max_results=20)
    return [f"{e.name}: {tracking.models_view_url(e.experiment_id, base + '/')}" for e in found]


def run(port: int, echo: Callable[[str], None], host: str = "127.0.0.1") -> int:
    """Serve the UI until the server ends or this process gets SIGINT/SIGTERM (passed on to the server's process
    group); prints the URLs once the server answers. Returns the server's exit status, or 128 + the signal that
    stopped it."""
    base = f"http://{host}:{port}"
    n = workers()
    say = lambda line: (echo(line), sys.stdout.flush(), sys.stderr.flush())  # noqa: E731  (before the server's lines)
    say(f"starting the MLflow UI on {redact_text(tracking.tracking_uri())} with {n} worker{'s' * (n > 1)} ...")
    proc = start(port, host, n)
    received: list[int] = []

    def forward(sig: int, frame) -> None:
        received.append(sig)
        os.killpg(proc.pid, sig)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not wait_until_up(proc, base):
            say(f"the MLflow server stopped (exit status {proc.returncode}) before it answered at {base}; its lines "
                f"above say why (port {port} in use? give another with --port)")
            return proc.returncode or 1
        say(f"MLflow UI: {base}/#/experiments?{tracking.ML_WORKFLOW}  (Ctrl-C to stop)")
        for line in links(base):
            say(f"  models side by side, {line}")
        code = proc.wait()
        return 128 + received[0] if received else 128 - code if code < 0 else code  # stopped by a signal: 128 + it
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            stop(proc)
