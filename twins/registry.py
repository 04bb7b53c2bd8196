"""The model registry flow (DESIGN §7): log an exported bundle with ``mlflow.onnx``, register it, promote by alias.

A registered version's artifacts are a complete bundle folder: mlflow's ``MLmodel`` (so ``mlflow.onnx`` and
pyfunc load it too) plus every file of the bundle as exported (``model.onnx`` byte for byte, so its sha256 still
matches ``manifest.json``, the manifest and any preprocessing files such as ``tokenizer.json``). The same files
are logged to the run under ``bundle/``. The version's tag ``bundle_sha256`` is the bundle's digest, checked after
every download (``twins.runtime.registry``). Systems load a version with ``twins.runtime.load("models:/NAME@champion")``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from twins import tracking
from twins.runtime import load
from twins.runtime.bundle import MODEL_FILE
from twins.runtime.registry import DIGEST_TAG

DEFAULT_EXPERIMENT = "twins-models"


@dataclass(frozen=True)
class RegisteredBundle:
    """One registered version of a bundle."""

    name: str
    version: str
    run_id: str
    model_id: str
    task: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def log_bundle(bundle_dir: str | Path, name: str, experiment: str = DEFAULT_EXPERIMENT) -> RegisteredBundle:
    """Verify ``bundle_dir`` with the runtime, log it with ``mlflow.onnx.log_model`` plus its manifest and
    preprocessing files, and register it as a new version of model ``name``.

    Logs into the active MLflow run if there is one (e.g. a pipeline's), else into a new run of ``experiment``.
    A bundle the runtime refuses (``BundleError``) is neither logged nor registered. The version's tag
    ``bundle_sha256`` records the bundle's digest (the sha256 of its manifest, which pins every file):
    ``twins.runtime.load("models:/...")`` loads nothing else.
    """
    import mlflow
    import numpy as np
    import onnx
    import onnxruntime as ort

    bundle_dir = Path(bundle_dir)
    bundle = load(bundle_dir)
    manifest = bundle.manifest
    if mlflow.active_run() is None:
        tracking.setup(experiment)
        run = mlflow.start_run(run_name=f"register-{name}", tags={"git_sha": tracking.git_sha()})
    else:
        run = contextlib.nullcontext()
    with run:
        run_id = mlflow.active_run().info.run_id
        info = mlflow.onnx.log_model(
            onnx.load(str(bundle_dir / MODEL_FILE)), name="model", save_as_external_data=False,
            pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={ort.__version__}", f"numpy=={np.__version__}"],
            metadata={"twins_task": manifest["task"], "model_sha256": manifest["model_sha256"]},
            tags={"task": manifest["task"], "bundle_version": str(manifest["version"])})
        client = mlflow.MlflowClient()
        client.log_model_artifacts(info.model_id, str(bundle_dir))  # the bundle's own bytes over mlflow's copy
        mlflow.log_artifacts(str(bundle_dir), "bundle")
        version = mlflow.register_model(info.model_uri, name, tags={
            DIGEST_TAG: bundle.digest, "task": manifest["task"], "model_sha256": manifest["model_sha256"], "bundle_name": str(manifest["name"]),
            "bundle_version": str(manifest["version"]), "training_run_id": str(manifest.get("training_run_id"))})
    return RegisteredBundle(name, str(version.version), run_id, info.model_id, manifest["task"])


def promote(name: str, version: str | int, alias: str = "champion") -> str:
    """Point ``alias`` of model ``name`` at ``version`` (aliases, not stages); returns the URI ``models:/NAME@ALIAS``.

    A service polling the alias (``twins serve``) picks the new version up and keeps the old one if it is refused.
    """
    client = _client()
    client.get_model_version(name, str(version))  # fails clearly for an unknown name or version
    client.set_registered_model_alias(name, alias, str(version))
    return f"models:/{name}@{alias}"


def _client():
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(), registry_uri=tracking.tracking_uri())
