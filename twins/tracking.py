"""MLflow tracking (DESIGN §7): a local SQLite store by default, any ``MLFLOW_TRACKING_URI`` unchanged.

Every pipeline run is a parent run with params, the resolved config, dataset inputs, row counts, timings and
artifacts; models and seeds are child runs with the same metric names (``test/recall_at_10``), so that MLflow's chart
and compare views put the models side by side. Experiments are made for the runs view (``EXPERIMENT_TAGS``) and carry
a shared view grouped by the ``model`` tag (``models_view_url``); runs and experiments carry descriptions
(``mlflow.note.content``); a run ends FAILED on an exception and KILLED on Ctrl-C or SIGTERM. mlflow is imported
lazily: it is slow to import.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from twins.paths import twins_home

NOTE = "mlflow.note.content"  # the description the UI shows (and edits) on an experiment or a run
#: a classic ML experiment: MLflow 3's UI then offers runs first, not the GenAI overview (traces, token usage)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
MODELS_VIEW = "twins-models"
#: the UI's shared view state (``?viewStateShareKey=twins-models``): runs grouped by their ``model`` tag (mean over
#: seeds), so each chart draws one bar per model, and the charts of the test metrics only
MODELS_VIEW_STATE = {"searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False,
                     "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "model"}]},
                     "useGroupedValuesInCharts": True, "hideEmptyCharts": True, "chartsSearchFilter": "test/"}
#: MLflow 3.17's UI shows the GenAI pages unless the URL (or the sidebar switch) asks for model training
ML_WORKFLOW = "workflowType=machine_learning"


class Terminated(SystemExit):
    """Raised by the SIGTERM handler that ``run`` installs: the run ends KILLED, the process exits 143."""


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite at an absolute path in the twins home folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = (twins_home() / "mlflow.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def artifact_location() -> str | None:
    """Where a new experiment keeps artifacts on the local store (None: the server decides)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (twins_home() / "mlartifacts").resolve().as_uri()


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def models_view_url(experiment_id: str, base: str = "") -> str:
    """The UI's chart view of an experiment with its runs grouped by model (``base``: the server's URL)."""
    return (f"{base}#/experiments/{experiment_id}/runs?viewStateShareKey={MODELS_VIEW}&compareRunsMode=CHART"
            f"&{ML_WORKFLOW}")


def setup(experiment: str, description: str | None = None, models_view: bool = False):
    """Point mlflow at the store and select (or create) ``experiment``; returns the mlflow module. The experiment
    gets the tags it lacks (never overwriting what a user edited): ``EXPERIMENT_TAGS``, ``description`` as its
    note and, with ``models_view``, the shared view grouped by model, linked from the note."""
    import mlflow

    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    uri, artifacts = tracking_uri(), artifact_location()
    mlflow.set_tracking_uri(uri)
    if user_uri is None:  # mlflow exports the URI to the environment; keep $TWINS_HOME in charge of the default
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    found = mlflow.get_experiment_by_name(experiment)
    exp_id = found.experiment_id if found else mlflow.create_experiment(experiment, artifact_location=artifacts)
    tags = dict(EXPERIMENT_TAGS)
    if models_view:
        tags[f"mlflow.sharedViewState.{MODELS_VIEW}"] = json.dumps(MODELS_VIEW_STATE)
    if description:
        link = f"\n\nModels side by side: [charts grouped by model]({models_view_url(exp_id)})" if models_view else ""
        tags[NOTE] = description + link
    have = found.tags if found else {}
    client = mlflow.MlflowClient(uri)
    for key, value in tags.items():
        if key not in have:
            client.set_experiment_tag(exp_id, key, value)
    mlflow.set_experiment(experiment_id=exp_id)
    return mlflow


@contextmanager
def run(experiment: str, name: str, tags: dict[str, str] | None = None, nested: bool = False,
        description: str | None = None, experiment_description: str | None = None,
        models_view: bool = False) -> Iterator[Any]:
    """A (parent or child) MLflow run tagged with the git sha and described by ``description``; yields the mlflow
    module. It ends FINISHED, FAILED on an exception, KILLED on KeyboardInterrupt or SIGTERM (a parent run in the
    main thread turns SIGTERM into ``Terminated`` while it lasts). ``experiment_description`` and ``models_view``:
    see ``setup`` (parent runs only)."""
    import mlflow

    if not nested:
        setup(experiment, experiment_description, models_view)
    extra = {NOTE: description} if description else {}
    mlflow.start_run(run_name=name, nested=nested, tags={"git_sha": git_sha(), **(tags or {}), **extra})
    handler = not nested and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if handler else None
    try:
        yield mlflow
    except (KeyboardInterrupt, Terminated):
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")
    finally:
        if handler:  # None: a handler not set from Python, which cannot be put back; the default then
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(128 + signum)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as JSON text (MLflow params are strings)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def log_params(mlflow, params: dict[str, Any]) -> None:
    """Log a (nested) tree as flat params, redacted (``twins.config.redact``: environment values, credentials)."""
    from twins.config import redact  # not at the top: the twins-runtime wheel ships this module without twins.config

    flat = {k: str(v)[:6000] for k, v in flatten(redact(params)).items()}
    mlflow.log_params(flat)


def log_config(mlflow, tree: dict[str, Any], artifact_file: str) -> None:
    """Log a config tree as a YAML artifact, redacted like ``log_params``."""
    import yaml

    from twins.config import redact

    mlflow.log_text(yaml.safe_dump(redact(tree), sort_keys=False), artifact_file)


def metric_key(name: str) -> str:
    """MLflow forbids '@' in metric names: ``test/recall@10`` is logged as ``test/recall_at_10``."""
    return name.replace("@", "_at_")


def log_metrics(mlflow, metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items() if v is not None}, step=step)


def dataset(path: str | Path, name: str, targets: str | None = None):
    """An MLflow dataset for a Parquet file (schema and digest from a small head, source = its path)."""
    import warnings

    import polars as pl
    from mlflow.data.pandas_dataset import from_pandas

    head = pl.read_parquet(path, n_rows=1000).to_pandas()
    with warnings.catch_warnings():  # mlflow's notes on source resolution and integer columns are not actionable here
        warnings.simplefilter("ignore", UserWarning)
        return from_pandas(head, source=str(Path(path).resolve()), name=name, targets=targets)


def log_dataset(mlflow, path: str | Path, name: str, context: str, targets: str | None = None):
    """``mlflow.log_input`` of ``dataset(path, name)``; returns the dataset (child runs link it too)."""
    import warnings

    ds = dataset(path, name, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mlflow.log_input(ds, context=context)
    return ds
