"""JSON lines (one JSON object per line: webhook and API logs) -> flat rows a source config can map.

Nested fields become dotted column names (``order.id``); ``explode`` turns a list into one row per element (its
fields are named under the list's path: ``order.line_items.item.id``); ``where`` keeps the rows whose field has one
of the given values; ``present_as`` writes one value where a field is present and another where it is absent (e.g.
``actor: machine`` when an agent declared its profile). Every value is read as text, so that the ingest step
validates (and quarantines) it; a line that is not a JSON object is kept as one row with reason ``bad_json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

_MISSING = object()


class PresentAs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="dotted path of the field whose presence is tested (null or empty is absent)")
    present: str
    absent: str


class JsonLines(BaseModel):
    """How a JSON-lines file becomes rows (``json:`` on a file of a source config)."""

    model_config = ConfigDict(extra="forbid")
    explode: list[str] = Field(default_factory=list, description="dotted list paths, outermost first: one row per "
                                                                 "element (a line whose list is empty gives no row)")
    where: dict[str, str | list[str]] = Field(default_factory=dict, description="dotted path -> value(s) to keep")
    present_as: dict[str, PresentAs] = Field(default_factory=dict, description="new column -> presence test")


def _get(tree: object, path: str) -> object:
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def _flatten(tree: object, prefix: str, out: dict[str, str | None]) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif tree is None:
        out[prefix] = None
    elif isinstance(tree, str):
        out[prefix] = tree
    elif isinstance(tree, bool):
        out[prefix] = "true" if tree else "false"
    elif isinstance(tree, (int, float)):
        out[prefix] = repr(tree)
    else:  # a list that is not exploded stays JSON text
        out[prefix] = json.dumps(tree, separators=(",", ":"))


def _explode(line: dict, paths: list[str], path_no: int = 0) -> list[dict]:
    """The line once per element of ``paths[path_no]`` (recursively for the later paths), the element written in
    place of its list."""
    if path_no == len(paths):
        return [line]
    path = paths[path_no]
    items = _get(line, path)
    if not isinstance(items, list):
        return []
    head, _, leaf = path.rpartition(".")
    out = []
    for item in items:
        copy = json.loads(json.dumps(line))
        parent = _get(copy, head) if head else copy
        parent[leaf] = item
        out += _explode(copy, paths, path_no + 1)
    return out


def _present(value: object) -> bool:
    return value is not _MISSING and value is not None and value != "" and value != [] and value != {}


def read(path: Path, options: JsonLines | None, reason_column: str, columns: Sequence[str] = ()) -> pl.DataFrame:
    """Rows of a JSON-lines file, every column text, plus ``reason_column`` (``bad_json`` for a line that is not a
    JSON object, null otherwise). When no line passes ``explode`` and ``where`` (e.g. orders without refunds),
    the ``columns`` the config maps are there, null, so that the file gives no rows rather than an error."""
    options = options or JsonLines()
    rows: list[dict[str, str | None]] = []
    with open(path, encoding="utf-8", errors="replace") as lines:
        for text in lines:
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                line = None
            if not isinstance(line, dict):
                rows.append({reason_column: "bad_json"})
                continue
            for element in _explode(line, options.explode):
                if any(str(_get(element, p)) not in ([v] if isinstance(v, str) else v)
                       for p, v in options.where.items()):
                    continue
                row: dict[str, str | None] = {}
                _flatten(element, "", row)
                for column, test in options.present_as.items():
                    row[column] = test.present if _present(_get(element, test.path)) else test.absent
                row[reason_column] = None
                rows.append(row)
    kept = any(row[reason_column] is None for row in rows)
    names = list(dict.fromkeys([*(name for row in rows for name in row), *([] if kept else columns)]))
    return pl.DataFrame([[row.get(n) for n in names] for row in rows], schema={n: pl.String for n in names},
                        orient="row") if rows else pl.DataFrame(schema={n: pl.String for n in [*columns, reason_column]})
