"""MLflow tracking (DESIGN §7): a local SQLite store by default, any ``MLFLOW_TRACKING_URI`` unchanged.

Every pipeline run is a parent run with params, the resolved config, dataset inputs, row counts, timings and
artifacts; models and seeds are child runs. mlflow is imported lazily: it is slow to import.
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from twins.paths import twins_home


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


def setup(experiment: str):
    """Point mlflow at the store and select (or create) ``experiment``; returns the mlflow module."""
    import mlflow

    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    uri, artifacts = tracking_uri(), artifact_location()
    mlflow.set_tracking_uri(uri)
    if user_uri is None:  # mlflow exports the URI to the environment; keep $TWINS_HOME in charge of the default
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)
    return mlflow


@contextmanager
def run(experiment: str, name: str, tags: dict[str, str] | None = None, nested: bool = False) -> Iterator[Any]:
    """A (parent or child) MLflow run tagged with the git sha; yields the mlflow module."""
    import mlflow

    if not nested:
        setup(experiment)
    with mlflow.start_run(run_name=name, nested=nested, tags={"git_sha": git_sha(), **(tags or {})}):
        yield mlflow


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


def log_dataset(mlflow, path: str | Path, name: str, context: str, targets: str | None = None) -> None:
    """``mlflow.log_input`` for a Parquet file (schema and digest from a small head, source = its path)."""
    import warnings

    import polars as pl
    from mlflow.data.pandas_dataset import from_pandas

    head = pl.read_parquet(path, n_rows=1000).to_pandas()
    with warnings.catch_warnings():  # mlflow's notes on source resolution and integer columns are not actionable here
        warnings.simplefilter("ignore", UserWarning)
        ds = from_pandas(head, source=str(Path(path).resolve()), name=name, targets=targets)
        mlflow.log_input(ds, context=context)
