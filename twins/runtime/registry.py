"""Resolve ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` to a local bundle folder (DESIGN §7).

Only this module imports mlflow, and only when a ``models:/`` URI is resolved: loading a bundle from a path never
does. A version is downloaded once into ``$TWINS_HOME/cache/registry/<name>/<version>`` (to a temporary folder
renamed into place, so a killed download leaves no half bundle) and verified by ``twins.runtime.load`` like
any other folder. The registry is ``$MLFLOW_TRACKING_URI`` or the local SQLite store (``twins.tracking``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from twins.paths import twins_home
from twins.tracking import tracking_uri

PREFIX = "models:/"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class RegistryError(LookupError):
    """A ``models:/`` URI that does not name a registered version."""


def is_registry_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def parse(uri: str) -> tuple[str, str | None, str | None]:
    """``(name, alias, version)`` of a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI."""
    match = _URI.match(uri)
    if not match:
        raise RegistryError(f"{uri!r}: expected models:/NAME@ALIAS (e.g. models:/tafeng-gp@champion) or models:/NAME/VERSION")
    return match["name"], match["alias"], match["version"]


def _mlflow():
    try:
        import mlflow
        import mlflow.artifacts
    except ModuleNotFoundError:
        raise RegistryError("models:/ URIs need mlflow: pip install 'twins-runtime[registry]' (or load a bundle folder)") from None
    return mlflow


def _client():
    return _mlflow().MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())


def current_version(uri: str) -> str:
    """The version number ``uri`` points at now (an alias is looked up in the registry)."""
    name, alias, version = parse(uri)
    mlflow = _mlflow()
    try:
        if alias is not None:
            return str(_client().get_model_version_by_alias(name, alias).version)
        return str(_client().get_model_version(name, version).version)
    except mlflow.exceptions.MlflowException as error:
        raise RegistryError(f"{uri}: not in the registry at {tracking_uri()} ({error.message}); "
                            "register it with twins.registry.log_bundle and promote it with `twins promote`") from None


def cache_dir() -> Path:
    return twins_home() / "cache" / "registry"


def fetch(uri: str, version: str | None = None) -> tuple[Path, str]:
    """Download (once) the version ``uri`` points at, or ``version`` of its model; returns ``(folder, version)``."""
    name = parse(uri)[0]
    version = version or current_version(uri)
    dest = cache_dir() / name / version
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=dest.parent))
        try:
            source = _client().get_model_version_download_uri(name, version)
            local = _mlflow().artifacts.download_artifacts(source, dst_path=str(tmp), tracking_uri=tracking_uri())
            Path(local).rename(dest)
            shutil.rmtree(tmp, ignore_errors=True)  # what is left of it once the download moved out
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if not dest.is_dir():  # else another process finished the same download first
                raise
    return dest, version
