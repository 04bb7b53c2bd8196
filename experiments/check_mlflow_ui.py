"""Issue 25's headless check of the MLflow UI: an experiment's models side by side in the chart and compare views.

Starts ``mlflow ui`` on the twins store (``twins.mlflow_ui``, or uses ``--url`` of a running one), renders two pages
with Chromium headless (``--dump-dom``; PNGs too with ``--screenshots DIR``) and checks that every model and its
metric value is on them:

* the experiment's models view (``tracking.models_view_url``: runs grouped by the ``model`` tag, charts of the test
  metrics): a group per model and, in the metric's chart, each model's bar labelled with its mean (2 decimals);
* MLflow's compare page of each model's latest child run: the run names and each value (3 decimals).

Debian: ``apt-get install -y chromium``. The acceptance run (about 3 minutes at one thread)::

    .venv/bin/twins --threads 1 run configs/pipelines/tafeng_next_basket.yaml --set params.seeds=[0] --set params.neural.max_epochs=1
    .venv/bin/python -m experiments.check_mlflow_ui tafeng-next-basket --screenshots /tmp/mlflow-ui
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import urllib.parse
from pathlib import Path

from twins import mlflow_ui, tracking

#: Chromium's virtual time runs the UI's requests and renders without waiting in real time; the tall window
#: makes the lazily drawn charts all draw
RENDER = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=60000"]


def chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)


def render(url: str, screenshot: Path | None = None, window: str = "1600,3000") -> str:
    """The page's DOM once rendered (and its PNG at ``screenshot``)."""
    browser = chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH: install it (Debian: apt-get install -y chromium)")
    args = [browser, *RENDER, f"--window-size={window}"]
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*args, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=True)
    return subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True).stdout


def models(experiment: str, metric: str) -> tuple[str, dict[str, list]]:
    """The experiment's id and, per model tag, its active child runs, newest first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no experiment {experiment!r} in {tracking.tracking_uri()}; run its pipeline first")
    runs: dict[str, list] = {}
    for run in client.search_runs([found.experiment_id], "tags.model != ''", max_results=1000,
                                  order_by=["attributes.start_time DESC"]):
        if metric in run.data.metrics:
            runs.setdefault(run.data.tags["model"], []).append(run)
    if not runs:
        raise ValueError(f"experiment {experiment!r} has no child run with a model tag and {metric}")
    return found.experiment_id, runs


def _shown(value: float) -> str:
    """A value as MLflow's compare page shows it (rounded to 3 decimals, JavaScript's number text)."""
    return repr(round(value, 3)).removesuffix(".0")


def check(base: str, experiment: str, metric: str = "test/recall_at_10", screenshots: Path | None = None) -> list[str]:
    """What the UI at ``base`` does not show of ``experiment``'s models (empty: everything)."""
    exp_id, runs = models(experiment, metric)
    missing = []
    dom = render(tracking.models_view_url(exp_id, base + "/"), screenshots and screenshots / f"{experiment}-models.png")
    labels = {part.split('"')[0] for part in dom.split('data-unformatted="')[1:]}  # the charts' text
    for model, found in runs.items():
        mean = statistics.fmean(r.data.metrics[metric] for r in found)  # the group's average over its runs
        if f"Group: {model}<" not in dom:
            missing.append(f"models view: no group for {model}")
        if f"{mean:.2f}" not in labels:
            missing.append(f"models view: no bar {mean:.2f} ({metric} of {model})")
    if metric not in dom:
        missing.append(f"models view: no chart of {metric}")
    latest = [found[0] for found in runs.values()]
    query = urllib.parse.urlencode({"runs": json.dumps([r.info.run_id for r in latest]),
                                    "experiments": json.dumps([exp_id])}, quote_via=urllib.parse.quote)
    dom = render(f"{base}/#/compare-runs?{query}&{tracking.ML_WORKFLOW}",  # wide: the page draws visible columns only
                 screenshots and screenshots / f"{experiment}-compare.png", window=f"{1200 + 250 * len(latest)},3000")
    for run in latest:
        if f">{run.info.run_name}<" not in dom:
            missing.append(f"compare view: no run {run.info.run_name}")
        if f">{_shown(run.data.metrics[metric])}<" not in dom:
            missing.append(f"compare view: no value {_shown(run.data.metrics[metric])} ({metric} of {run.info.run_name})")
    return missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", help="e.g. tafeng-next-basket")
    ap.add_argument("--metric", default="test/recall_at_10", help="MLflow metric name (default test/recall_at_10)")
    ap.add_argument("--url", help="a running MLflow UI (default: start one on the twins store)")
    ap.add_argument("--screenshots", type=Path, help="folder for PNGs of the two views (not the repository)")
    args = ap.parse_args(argv)
    proc = None
    base = args.url
    if base is None:
        port = free_port()
        base, proc = f"http://127.0.0.1:{port}", mlflow_ui.start(port)
        if not mlflow_ui.wait_until_up(proc, base):
            print(f"the MLflow server exited with {proc.returncode}", file=sys.stderr)
            return 2
    try:
        missing = check(base.rstrip("/"), args.experiment, args.metric, args.screenshots)
    finally:
        if proc is not None:
            mlflow_ui.stop(proc)
    for line in missing:
        print(line)
    print(f"{args.experiment}: {'every model side by side in both views' if not missing else 'MISSING above'}"
          + (f"; screenshots in {args.screenshots}" if args.screenshots else ""))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
