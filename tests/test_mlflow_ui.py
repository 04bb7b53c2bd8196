"""MLflow for analysts (issue 25): classic ML experiments with descriptions and a models view, per-model metrics on
the child runs under one name, datasets linked, one experiment per source for ingest and build, runs that end
FAILED or KILLED, `twins ui` (URL once it answers, SIGTERM passed on) and, with Chromium, the UI itself showing the
models side by side (``experiments.check_mlflow_ui``)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from experiments.check_mlflow_ui import check, chromium, free_port
from twins import api, mlflow_ui, tracking
from twins.compare import compare

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*axis name:UserWarning")]
EXPERIMENT = "ui-nbr"
MODELS = ("g_topfreq", "gp_topfreq", "tifuknn")


@pytest.fixture(scope="module")
def logged(_shared_mlflow_home, tmp_path_factory) -> dict:
    """A tiny next-basket pipeline run (three models, seed 0), an ingest and a build, in the session's store."""
    folder = tmp_path_factory.mktemp("ui_source")
    rng = np.random.default_rng(0)
    p = 1 / np.arange(1, 41)
    baskets = {str(u): [[int(i) for i in rng.choice(40, size=rng.integers(1, 5), replace=False, p=p / p.sum())]
                        for _ in range(rng.integers(3, 7))] for u in range(60)}
    (folder / "baskets.json").write_text(json.dumps(baskets))
    (folder / "source.yaml").write_text("name: ui_tiny\nfiles: [{path: baskets.json}]\nformat: basket_json\n"
                                        "columns: {customer_id: customer, item_id: item}\norder_column: basket_index\n")
    (folder / "pipeline.yaml").write_text(
        f"pipeline: next_basket\nexperiment: {EXPERIMENT}\nsource: source.yaml\nas_of: end\n"
        f"params: {{seeds: [0], ks: [5, 10], models: [{', '.join(MODELS)}], export: {{model: gp_topfreq, k: 20}}}}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TWINS_HOME", str(_shared_mlflow_home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        catalog = api.run(folder / "pipeline.yaml")
        api.ingest(folder / "source.yaml")
        api.build(folder / "source.yaml")
    return catalog


def _client():
    import mlflow

    return mlflow.MlflowClient(tracking.tracking_uri())


def test_models_side_by_side_on_child_runs_with_descriptions(logged, mlflow_home):
    client = _client()
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # runs first, not the GenAI overview
    view = json.loads(exp.tags[f"mlflow.sharedViewState.{tracking.MODELS_VIEW}"])
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "model"}]
    assert "next_basket" in exp.tags[tracking.NOTE] and tracking.models_view_url(exp.experiment_id) in exp.tags[tracking.NOTE]
    parent = client.get_run(logged["run_id"])
    assert parent.info.status == "FINISHED" and "`next_basket` pipeline on source `ui_tiny`" in parent.data.tags[tracking.NOTE]
    assert not [m for m in parent.data.metrics if "/test/" in m]  # no <model>/test/... on the parent
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{logged['run_id']}'")
    assert sorted(r.data.tags["model"] for r in children) == sorted(MODELS)
    for child in children:  # the same metric names on every model's run: the UI's charts put them side by side
        assert {"test/recall_at_10", "test/ndcg_at_10"} <= set(child.data.metrics) and child.info.status == "FINISHED"
        assert child.data.tags[tracking.NOTE].startswith(f"`{child.data.tags['model']}` on `ui_tiny`, seed 0")
        assert [d.dataset.name for d in child.inputs.dataset_inputs] == ["ui_tiny-events"]
    assert compare(EXPERIMENT, out_dir=mlflow_home / "cmp").metrics[:2] == ["test/recall@10", "test/ndcg@10"]
    source = client.get_experiment_by_name(api.source_experiment("ui_tiny"))  # ingest and build: one experiment
    assert client.get_experiment_by_name("ingest-ui_tiny") is None
    steps = client.search_runs([source.experiment_id])
    assert sorted(r.data.tags["step"] for r in steps) == ["build", "ingest"]
    assert all(r.data.tags[tracking.NOTE].startswith("`twins ") and r.inputs.dataset_inputs for r in steps)


def test_runs_end_failed_or_killed(mlflow_home, tmp_path):
    client = _client()

    def status(name: str) -> str:
        exp = client.get_experiment_by_name("ui-status")
        return client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")[0].info.status

    with pytest.raises(ValueError):
        with tracking.run("ui-status", "fails"):
            with tracking.run("", "fails-child", nested=True):
                raise ValueError("boom")
    assert status("fails") == status("fails-child") == "FAILED"
    with pytest.raises(KeyboardInterrupt):
        with tracking.run("ui-status", "interrupted"):
            raise KeyboardInterrupt
    assert status("interrupted") == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is not tracking._terminate  # put back after the run
    script = ("import sys, time\nfrom twins import tracking\nwith tracking.run('ui-status', 'terminated'):\n"
              "    print('started', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=os.environ | {"TWINS_HOME": str(mlflow_home)})
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143 and status("terminated") == "KILLED"


@pytest.fixture(scope="module")
def ui(logged, _shared_mlflow_home):
    """`twins ui` on a free port: its process, base URL and the lines it (and the server) printed up to its
    links."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"TWINS_HOME": str(_shared_mlflow_home),
                                                                                 "COLUMNS": "300"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("twins")), "ui", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip()) for line in proc.stdout], daemon=True).start()
    printed, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline and not any("models side by side" in line for line in printed):
        try:
            printed.append(lines.get(timeout=1))
        except queue.Empty:
            assert proc.poll() is None, printed
    yield proc, f"http://127.0.0.1:{port}", printed
    if proc.poll() is None:
        proc.terminate()  # twins ui passes it on to the server's process group
        proc.wait(60)


def test_twins_ui_prints_its_url_once_it_answers(ui, mlflow_home):
    proc, base, printed = ui
    starting = [i for i, line in enumerate(printed) if line.startswith("starting the MLflow UI on sqlite:")]
    assert starting and f"with {mlflow_ui.workers()} worker" in printed[starting[0]]
    assert mlflow_ui.workers(2) == 1 and mlflow_ui.workers(64) == 4  # not MLflow's 4 on a 2-core machine
    url = next(line for line in printed[starting[0]:] if line.startswith("MLflow UI: "))
    assert f"{base}/#/experiments?workflowType=machine_learning" in url
    with urllib.request.urlopen(f"{base}/health", timeout=5) as answer:  # it answered before the URL was printed
        assert answer.status == 200
    exp_id = _client().get_experiment_by_name(EXPERIMENT).experiment_id
    assert any(f"{EXPERIMENT}: {tracking.models_view_url(exp_id, base + '/')}" in line for line in printed)


@pytest.mark.skipif(chromium() is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")
def test_the_ui_shows_the_models_side_by_side(ui, mlflow_home):
    assert check(ui[1], EXPERIMENT) == []


def test_twins_ui_passes_sigterm_to_the_server(ui):
    proc, base, _ = ui
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM
    with pytest.raises(OSError):  # the server (its process group) is gone too
        urllib.request.urlopen(f"{base}/health", timeout=5)
