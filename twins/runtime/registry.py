"""Resolve ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` to a local bundle folder (DESIGN §7).

Only this module imports mlflow, and only when a ``models:/`` URI is resolved: loading a bundle from a path never
does. The registry is ``$MLFLOW_TRACKING_URI`` or the local SQLite store (``twins.tracking``).

A registered version carries the bundle's digest (model version tag ``bundle_sha256``, recorded by
``twins.registry.log_bundle``): the sha256 of its ``manifest.json``, which pins ``model.onnx`` and every other file
of the bundle by their own sha256. A version is downloaded once into
``$TWINS_HOME/cache/registry/<store>/<name>/<version>-<digest[:16]>``, where ``<store>`` is a hash of the tracking
URI: another store's ``NAME/VERSION``, or the same version number re-created with other bytes, never meets a
cached copy that is not its own. The download goes to a temporary folder (usual permissions, so a service
running as another user can read the cache) and is renamed into place only once its manifest matches the
recorded digest; ``twins.runtime.load`` then checks every file against the manifest. A version registered without
the tag is refused: nothing would pin what the store hands back.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from twins.paths import twins_home
from twins.runtime.bundle import MANIFEST_FILE, SHA256, BundleError, manifest_sha256
from twins.tracking import tracking_uri

PREFIX = "models:/"
DIGEST_TAG = "bundle_sha256"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class RegistryError(LookupError):
    """A ``models:/`` URI that does not name a registered version."""


@dataclass(frozen=True)
class Located:
    """A registered version in the local cache: its folder, version number and the digest recorded for it."""

    path: Path
    version: str
    sha256: str


def is_registry_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def parse(uri: str) -> tuple[str, str | None, str | None]:
    """``(name, alias, version)`` of a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI."""
    match = _URI.match(uri)
    if not match or match["name"] in (".", "..") or "\0" in uri:
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


def _not_registered(uri: str, error) -> RegistryError:
    return RegistryError(f"{uri}: not in the registry at {_redacted(tracking_uri())} ({error.message}); "
                         "register it with twins.registry.log_bundle and promote it with `twins promote`")


def _redacted(uri: str) -> str:
    """``uri`` without a password (``scheme://user:secret@host`` -> ``scheme://user:***@host``)."""
    return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", uri)


def current_version(uri: str) -> str:
    """The version number ``uri`` points at now (an alias is looked up in the registry)."""
    name, alias, version = parse(uri)
    mlflow = _mlflow()
    try:
        if alias is not None:
            return str(_client().get_model_version_by_alias(name, alias).version)
        return str(_client().get_model_version(name, version).version)
    except mlflow.exceptions.MlflowException as error:
        raise _not_registered(uri, error) from None


def recorded_digest(uri: str, version: str) -> str:
    """The bundle digest recorded for ``version`` of ``uri``'s model (tag ``bundle_sha256``)."""
    name = parse(uri)[0]
    mlflow = _mlflow()
    try:
        tags = _client().get_model_version(name, version).tags or {}
    except mlflow.exceptions.MlflowException as error:
        raise _not_registered(f"models:/{name}/{version}", error) from None
    digest = tags.get(DIGEST_TAG)
    if not isinstance(digest, str) or not SHA256.match(digest):
        raise RegistryError(f"models:/{name}/{version}: registered without a valid bundle digest (model version tag "
                            f"{DIGEST_TAG}), so nothing pins what the store hands back; register the bundle again "
                            "with `twins register` (or twins.registry.log_bundle)")
    return digest


def cache_dir() -> Path:
    return twins_home() / "cache" / "registry"


def store_key(uri: str) -> str:
    """The cache's folder for the store at tracking URI ``uri`` (a hash: URIs may hold credentials)."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def locate(uri: str, version: str | None = None) -> Located:
    """Download (once) and check the version ``uri`` points at, or ``version`` of its model."""
    name = parse(uri)[0]
    version = version or current_version(uri)
    digest = recorded_digest(uri, version)
    dest = cache_dir() / store_key(tracking_uri()) / quote(name, safe="") / f"{version}-{digest[:16]}"
    if not dest.is_dir():
        _download(name, version, digest, dest)
    try:
        cached = manifest_sha256(dest)
    except OSError as error:
        raise BundleError(f"{dest}: cannot read the cached {MANIFEST_FILE} ({error}); delete the folder to fetch "
                          "the version again") from None
    if cached != digest:
        raise BundleError(f"{dest / MANIFEST_FILE}: sha256 {cached} is not the {digest} recorded for "
                          f"models:/{name}/{version}; the cached copy was modified. Delete the folder to fetch it again")
    return Located(dest, version, digest)


def fetch(uri: str, version: str | None = None) -> tuple[Path, str]:
    """``(folder, version)`` of ``locate(uri, version)``."""
    found = locate(uri, version)
    return found.path, found.version


def _download(name: str, version: str, digest: str, dest: Path) -> None:
    """Download the version's artifacts and rename them to ``dest`` once their manifest matches ``digest``."""
    mlflow = _mlflow()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}"
    tmp.mkdir()  # 0o777 less the umask, as any folder: tempfile.mkdtemp's 0o700 would hide the cache from other users
    try:
        source = _client().get_model_version_download_uri(name, version)
        local = Path(mlflow.artifacts.download_artifacts(source, dst_path=str(tmp), tracking_uri=tracking_uri()))
        got = manifest_sha256(local) if (local / MANIFEST_FILE).is_file() else "no manifest"
        if got != digest:
            raise BundleError(f"models:/{name}/{version}: the store's {MANIFEST_FILE} has sha256 {got}, not the "
                              f"{digest} recorded at registration; its artifacts were modified. Register the bundle "
                              "again")
        local.rename(dest)
    except mlflow.exceptions.MlflowException as error:
        raise RegistryError(f"models:/{name}/{version}: cannot download it from {_redacted(tracking_uri())} "
                            f"({error.message})") from None
    except OSError:
        if not dest.is_dir():  # else another process finished the same download first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # all of it on failure, what is left once the download moved out
