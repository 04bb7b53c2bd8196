"""The twin store: versioned Parquet snapshots per source and kind, with a fast look-up by id.

Layout under the store root::

    <source>/<kind>/<as_of>/<version>/twins.parquet   rows sorted by id
    <source>/<kind>/<as_of>/<version>/manifest.json   rows, columns, parameters, creation time
    <source>/<kind>/LATEST                             "<as_of>/<version>": the newest as_of (its newest version)
    <source>/<kind>/LATEST_WRITTEN                     "<as_of>/<version>" of the snapshot written last

LATEST is what readers take by default (``open``, ``twins score``, ``twins serve``): a snapshot built later at an
earlier ``as_of`` (a backtest) never replaces the newest state. "end" (after the last event) counts as the newest.

Writers hold ``<source>/.<kind>.lock`` (``twins.publish``); a snapshot is written to a temporary folder, fsynced
and renamed into place, then LATEST is replaced atomically, so a reader never sees a half-written snapshot, a
killed writer leaves the previous one intact and the next writer removes what it left.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
from polars.io.plugins import register_io_source

from twins import publish
from twins.engine import Engine, get_engine, worth_a_process


class TwinNotFound(KeyError):
    """No twin with that id in the snapshot."""


class SnapshotError(FileNotFoundError):
    """A snapshot that cannot be served: absent, named outside the store, or unreadable."""


_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$")
#: the command that builds each kind of twin, named in errors
BUILT_BY = {"customer": "twins build", "emotion": "twins emotions", "machine": "twins machines",
            "behaviour": "twins machines"}


def built_by(kind: str) -> str:
    """The command that builds twins of ``kind`` (``twins build`` for kinds it does not know)."""
    return BUILT_BY.get(kind, "twins build")


def _as_of_label(as_of: datetime | None) -> str:
    return "end" if as_of is None else as_of.astimezone(timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")


@dataclass
class Snapshot:
    """One stored snapshot; ``get`` looks a twin up by id through an index built on first use (or by ``index``)."""

    path: Path
    id_column: str = "customer_id"

    def __post_init__(self) -> None:
        self._frame: pl.DataFrame | None = None
        self._index: dict[str, int] | None = None

    @property
    def label(self) -> str:
        """``<as_of>/<version>``: the snapshot's name inside its source and kind."""
        return f"{self.path.parent.name}/{self.path.name}"

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    @property
    def frame(self) -> pl.DataFrame:
        if self._frame is None:
            self._frame = pl.read_parquet(self.path / "twins.parquet")
        return self._frame

    def index(self) -> None:
        """Read the twins and index them by id now; a file that cannot be read, or has no id column, raises
        ``SnapshotError``."""
        file = self.path / "twins.parquet"
        try:
            frame = pl.read_parquet(file)
        except (OSError, pl.exceptions.PolarsError) as error:
            raise SnapshotError(f"{file}: cannot read the twins ({error}); rebuild them with "
                                f"`{built_by(self.path.parent.parent.name)}`") from None
        if self.id_column not in frame.columns:
            raise SnapshotError(f"{file}: no id column {self.id_column!r} (columns: {frame.columns[:20]}); "
                                f"rebuild the snapshot with `{built_by(self.path.parent.parent.name)}`")
        self._frame = frame
        self._index = {str(k): i for i, k in enumerate(frame[self.id_column].to_list())}

    def get(self, twin_id: str) -> dict[str, Any]:
        if self._index is None:
            self.index()
        try:
            return self.frame.row(self._index[str(twin_id)], named=True)
        except KeyError:
            raise TwinNotFound(f"no twin {twin_id!r} in snapshot {self.path}") from None


#: rows the merge reads, sorts and hands to the writer at a time
MERGE_ROWS = 65_536
#: rows per row group of a snapshot's file (``twins score`` writes polars' default)
SNAPSHOT_ROW_GROUP = 16_384


def merge_parts(job: tuple[list[Path], str, Path], *, repeated_ids: bool = False,
                row_group_size: int | None = SNAPSHOT_ROW_GROUP) -> None:
    """Write the Parquet ``parts`` (one schema, each sorted by ``id_column``) merged into one file at ``path``,
    sorted by id, rows of one id in their part's order (an engine's job). Every part's ids are read and cut at
    every ``MERGE_ROWS``-th id of them all; each id range (a slice of each part, as each is sorted) is read, sorted
    and streamed to the writer in turn, so memory holds the ids and one range, not the rows (parts in small row
    groups are read about once). An id in two parts, or with ``repeated_ids`` False (snapshots: one row per id)
    twice in one, raises ``ValueError`` before anything is written. ``row_group_size``: the output's (None:
    polars' default). Snapshots (``TwinStore.write_parts``) and ``twins score`` merge their parts with it."""
    parts, id_column, path = job
    ids = [pl.read_parquet(part, columns=[id_column])[id_column] for part in parts]
    every = pl.concat(ids).sort()
    if repeated_ids and pl.concat([part.unique() for part in ids]).is_duplicated().any():
        raise ValueError(f"parts share {id_column} values; each id's rows must lie in one part")
    if not repeated_ids and every.is_duplicated().any():
        raise ValueError(f"twins have duplicate {id_column} values; a snapshot needs one row per id")
    cuts = every.gather_every(MERGE_ROWS)[1:].unique(maintain_order=True)  # an id's rows never span two ranges
    starts = [[0, *part.search_sorted(cuts, side="left").to_list(), len(part)] for part in ids]
    del ids, every

    def ranges(with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None,
               batch_size: int | None) -> Iterator[pl.DataFrame]:
        for r in range(len(cuts) + 1):
            pieces = [pl.scan_parquet(part).slice(s[r], s[r + 1] - s[r]) for part, s in zip(parts, starts)
                      if s[r + 1] > s[r]]
            if not pieces:  # parts without rows, or the first cut at the first id
                continue
            frame = pl.concat(pieces).collect(engine="in-memory").sort(id_column, maintain_order=True)
            if predicate is not None:
                frame = frame.filter(predicate)
            frame = frame if with_columns is None else frame.select(with_columns)
            if n_rows is not None:
                frame, n_rows = frame.head(n_rows), n_rows - min(n_rows, frame.height)
            yield frame
            if n_rows == 0:
                return

    merged = register_io_source(ranges, schema=pl.read_parquet_schema(parts[0]))
    merged.sink_parquet(path, row_group_size=row_group_size)


class TwinStore:
    """Versioned twin snapshots under ``root`` (see the module docstring for the layout)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def write(self, twins: pl.DataFrame, source: str, kind: str = "customer", as_of: datetime | None = None,
              params: dict[str, Any] | None = None, id_column: str = "customer_id") -> Snapshot:
        """Store a new snapshot; LATEST names the snapshot with the newest as_of, LATEST_WRITTEN this one."""
        if twins[id_column].is_duplicated().any():
            raise ValueError(f"twins have duplicate {id_column} values; a snapshot needs one row per id")
        return self._publish(lambda path: twins.sort(id_column).write_parquet(path, row_group_size=SNAPSHOT_ROW_GROUP),
                             twins.height, twins.schema, source, kind, as_of, params, id_column)

    def write_parts(self, parts: list[Path], source: str, kind: str = "customer", as_of: datetime | None = None,
                    params: dict[str, Any] | None = None, id_column: str = "customer_id",
                    engine: Engine | None = None) -> Snapshot:
        """Store a new snapshot from Parquet ``parts`` of one schema, each sorted by ``id_column`` and holding ids
        no other part holds (one per bucket of the event store): merged into the snapshot's one file by streaming,
        so memory is set by the merge's buffers, not the twins. The same file layout and order as ``write``. On
        large parts (``twins.engine.worth_a_process``) the merge runs in a fresh process of ``engine`` (default
        the local one), so this one never holds its buffers."""
        engine, fresh = engine or get_engine("local"), worth_a_process(parts)
        rows = sum(pl.scan_parquet(part).select(pl.len()).collect().item() for part in parts)
        return self._publish(lambda path: engine.call(merge_parts, (list(parts), id_column, path), fresh=fresh),
                             rows, pl.read_parquet_schema(parts[0]), source, kind, as_of, params, id_column)

    def _publish(self, write: Callable[[Path], None], rows: int, schema: pl.Schema, source: str, kind: str,
                 as_of: datetime | None, params: dict[str, Any] | None, id_column: str) -> Snapshot:
        """Publish a snapshot whose ``twins.parquet`` ``write(path)`` writes (module docstring), then LATEST."""
        base = self.root / source / kind
        with publish.locked(base, f"twins store write {source}/{kind}"), publish.disk_errors(base):
            for stale in [*base.glob("*/.v*.tmp*"), *base.glob(".LATEST*.tmp*")]:  # left by killed writers
                publish.remove(stale)
            now = datetime.now(timezone.utc)
            rel = f"{_as_of_label(as_of)}/v{now.strftime('%Y%m%dT%H%M%S%fZ')}"
            final = base / rel
            with publish.staged_dir(final) as tmp:
                write(tmp / "twins.parquet")
                manifest = {"source": source, "kind": kind, "as_of": None if as_of is None else as_of.isoformat(),
                            "version": final.name, "created": now.isoformat(), "rows": rows,
                            "id_column": id_column, "columns": {c: str(t) for c, t in schema.items()},
                            "params": params or {}}
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
                publish.publish_dir(tmp, final)
            publish.write_text(base / "LATEST_WRITTEN", rel)
            publish.write_text(base / "LATEST", max(self.snapshots(source, kind)))
        return Snapshot(final, id_column)

    def sources(self) -> dict[str, list[str]]:
        """Each source with stored twins and its kinds, by name."""
        if not self.root.is_dir():
            return {}
        found = {d.name: sorted(k.name for k in d.iterdir() if k.is_dir() and self.snapshots(d.name, k.name))
                 for d in sorted(self.root.iterdir()) if d.is_dir()}
        return {source: kinds for source, kinds in found.items() if kinds}

    def snapshots(self, source: str, kind: str = "customer") -> list[str]:
        """Stored snapshots as ``<as_of>/<version>``, oldest ``as_of`` first (labels sort by time, "end" last),
        versions in the order written."""
        base = self.root / source / kind
        if not base.exists():
            return []
        return sorted(f"{d.parent.name}/{d.name}" for d in base.glob("*/v*") if (d / "manifest.json").exists())

    def latest(self, source: str, kind: str = "customer") -> str:
        """The ``<as_of>/<version>`` LATEST names, checked to be a snapshot name (not a path out of the store)."""
        latest = self.root / source / kind / "LATEST"
        if not latest.exists():
            raise SnapshotError(f"no {kind} twins for source {source!r} under {self.root}: run `{built_by(kind)}` first")
        return self._checked(latest.read_text().strip(), f"{latest} names")

    def _checked(self, snapshot: str, what: str) -> str:
        parts = snapshot.split("/")
        if len(parts) != 2 or not all(_PART.match(part) for part in parts):
            raise SnapshotError(f"{what} {snapshot[:200]!r}: a snapshot is named '<as_of>/<version>' (two names of "
                                "letters, digits, '.', '_', ':', '+' or '-', not starting with '.'); "
                                "rebuild with `twins build`, or pick one of `twins twin list`")
        return snapshot

    def open(self, source: str, kind: str = "customer", snapshot: str | None = None) -> Snapshot:
        """Open ``snapshot`` (``<as_of>/<version>``) or the latest one; its manifest must name the id column."""
        base = self.root / source / kind
        snapshot = self.latest(source, kind) if snapshot is None else self._checked(snapshot, "snapshot")
        path = base / snapshot
        file = path / "manifest.json"
        if not file.exists():
            raise SnapshotError(f"no snapshot {snapshot!r} for {source!r}; stored: {self.snapshots(source, kind)}")
        try:
            id_column = json.loads(file.read_text())["id_column"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise SnapshotError(f"{file}: not a snapshot manifest ({error!r}); rebuild with `{built_by(kind)}`") from None
        if not isinstance(id_column, str):
            raise SnapshotError(f"{file}: id_column must be a column name, got {id_column!r}; rebuild with "
                                f"`{built_by(kind)}`")
        return Snapshot(path, id_column)
