"""YAML configuration: loading, ``${VAR:-default}`` interpolation, ``--set`` overrides, and
validation with errors that name the file and the key."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid; the message says where and how to fix it."""


def interpolate(value: Any) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is None:
                raise ConfigError(f"environment variable {name} is not set and has no default "
                                  f"(write ${{{name}:-default}} or export {name})")
            return default
        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    return value


def apply_overrides(tree: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (``3e-4``, ``[1,2]``, ``true``)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value (e.g. params.seeds=[0,1])")
        key, raw = item.split("=", 1)
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping in the config")
        node[parts[-1]] = yaml.safe_load(raw)
    return tree


def read_yaml(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML mapping, interpolate environment variables and apply overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (check the path; examples are in configs/)")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping (key: value lines) at the top level")
    return interpolate(apply_overrides(tree, overrides))


def validate(model: type[M], tree: dict[str, Any], origin: str | Path) -> M:
    """Validate a parsed tree; on failure raise ConfigError listing each bad key by its dotted path."""
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        lines = [f"config {origin} is invalid:"]
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  - {key}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def load(model: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    """Read, interpolate, override and validate a YAML config into ``model``."""
    return validate(model, read_yaml(path, overrides), path)
