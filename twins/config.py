"""YAML configuration: loading (bounded, dates kept as text), ``${VAR:-default}`` interpolation, ``--set`` overrides,
validation with errors that name the file and the key, and redaction of what must not be printed or logged."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

M = TypeVar("M", bound=BaseModel)

MAX_CONFIG_BYTES = 1 << 20  # a config file is a page of settings; 1 MiB is far beyond any real one
MAX_ALIASES = 1_000         # YAML aliases (*name) in one document
MAX_NODES = 100_000         # values in one document once every alias is expanded (a "billion laughs" has 10^9)
MAX_DEPTH = 100             # nesting levels (the YAML composer recurses once per level)


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid; the message says where and how to fix it."""


class _Bounded(yaml.YAMLError):
    """A YAML document over one of the bounds above."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` bounded in aliases, expanded size and depth, which keeps dates as text: the config models
    parse them (``as_of: 2024-10-27`` is the string the date came from, as if it were quoted)."""

    yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
                               for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases, self.depth = 0, 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _Bounded(f"more than {MAX_ALIASES:,} aliases (*name)")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Bounded(f"nested more than {MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_document(self, node):
        _expanded_size(node)
        return super().construct_document(node)


def _expanded_size(root: yaml.Node) -> None:
    """Refuse a document whose tree, every alias expanded (a shared value counted once per use), holds more than
    ``MAX_NODES`` values or more than ``MAX_DEPTH`` levels, or an alias inside its own anchor. Iterative, memoised
    per node: linear in the document's text, however many values its aliases stand for."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth)
    open_nodes: set[int] = set()            # the nodes on the current path
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if done:
            below = [sizes[id(child)] for child in children]
            size, depth = 1 + sum(s for s, _ in below), 1 + max((d for _, d in below), default=0)
            if size > MAX_NODES:
                raise _Bounded(f"more than {MAX_NODES:,} values once its aliases (*name) are expanded")
            if depth > MAX_DEPTH:
                raise _Bounded(f"nested more than {MAX_DEPTH} levels deep once its aliases (*name) are expanded")
            sizes[key] = (size, depth)
            open_nodes.discard(key)
        elif key in open_nodes:
            raise _Bounded("an alias (*name) stands for a value that contains it (a recursive structure)")
        elif key not in sizes:
            open_nodes.add(key)
            stack.append((node, True))
            stack += [(child, False) for child in children]


def parse_yaml(text: str) -> Any:
    """One YAML document through the bounded loader; raises ``yaml.YAMLError`` (say where in the caller)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def interpolate(value: Any) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree. Each value taken from the
    environment is remembered, so that ``redact`` shows it as ``${VAR}`` wherever it is printed or logged."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                if os.environ[name]:
                    _FROM_ENV[os.environ[name]] = f"${{{name}}}"
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
        try:
            node[parts[-1]] = parse_yaml(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {exc}") from None
    return tree


def read_yaml(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML mapping, interpolate environment variables and apply overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (check the path; examples are in configs/)")
    with path.open("rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is over {MAX_CONFIG_BYTES:,} bytes, the most a config may hold "
                          "(list data in files, not in the config)")
    try:
        tree = parse_yaml(raw.decode("utf-8"))
    except _Bounded as exc:
        raise ConfigError(f"config file {path} is refused: {exc}; write the values out instead of nesting "
                          "aliases") from None
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


# Redaction: what a config took from the environment, and credentials, never reach a terminal, a log or MLflow.

_FROM_ENV: dict[str, str] = {}  # a value interpolate() took from the environment -> "${NAME}"
REDACTED = "***"
MIN_SUBSTRING = 8  # shorter environment values are redacted where they are a whole value, not inside other text
_SECRET_NAME = re.compile(r"(?:^|[_\-.])(?:password|passwd|pwd|secret|token|credentials?|authorization|auth|sig|"
                          r"signature)$|(?:api|access|secret|private|account|client)[_\-]?key$", re.IGNORECASE)
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@?#]+@")
_QUERY = re.compile(r"([?&;])([^=&;#\s]+)=([^&;#\s]*)")


def is_secret_name(name: str) -> bool:
    """A mapping key or URI query parameter that holds a credential (``password``, ``db_password``, ``api_key``,
    ``token``, ``aws_secret_access_key``; not ``max_tokens`` or ``tokenizer``)."""
    return bool(_SECRET_NAME.search(name))


def redact_text(text: str) -> str:
    """``text`` with environment values shown as ``${NAME}``, URI user info (``user:pass@``) and secret query
    parameters (``?token=...``) as ``***``."""
    if text in _FROM_ENV:
        return _FROM_ENV[text]
    for value in sorted((v for v in _FROM_ENV if len(v) >= MIN_SUBSTRING), key=len, reverse=True):
        text = text.replace(value, _FROM_ENV[value])
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return _QUERY.sub(lambda m: f"{m.group(1)}{m.group(2)}={REDACTED}" if is_secret_name(m.group(2)) else m.group(0), text)


def redact(value: Any) -> Any:
    """A copy of a config tree (or one value) safe to print or log: ``redact_text`` on every string (keys too), and
    ``***`` for every value under a secret-like key. The config in memory keeps the real values."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Path):
        return redact_text(str(value))
    if isinstance(value, dict):
        return {redact(k): REDACTED if isinstance(k, str) and is_secret_name(k) and v not in (None, "") else redact(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value
