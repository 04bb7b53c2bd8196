"""Issue 23, item 6: concurrent and interrupted writes (``twins.publish``).

Two runs on one output: the second is refused naming the first (or waits with TWINS_LOCK_WAIT). A run killed at
any step of a publish leaves a readable output, old or new, and the next run clears what it left. Files and
folders are fsynced before the rename that publishes them. A full disk is reported as such, not as a config error
or a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from twins import paths, publish
from twins.data.ingest import ingest
from twins.data.source import SourceConfig
from twins.twin.store import TwinStore

COLUMNS = {"basket_id": "invoice", "customer_id": "customer", "item_id": "item", "quantity": "quantity",
           "unit_price": "price", "event_time": "date"}
DISK_FULL_POLARS = "parquet: File out of specification: underlying IO error: No space left on device (os error 28)"


def tree(tmp_path: Path, rows: int) -> dict:
    """A source of ``rows`` purchase lines (its own file per size, so two versions differ)."""
    lines = ["invoice,customer,item,quantity,price,date",
             *(f"{i},c{i % 7},i{i % 5},1,2.5,2023-01-{1 + i % 28:02d} 10:00" for i in range(rows))]
    (tmp_path / f"log{rows}.csv").write_text("\n".join(lines) + "\n")
    return {"name": "t", "files": [{"path": f"log{rows}.csv"}], "columns": COLUMNS,
            "time": {"format": "%Y-%m-%d %H:%M"}, "validation": {"not_after": "2030-01-01T00:00:00Z"},
            "base_dir": str(tmp_path)}


def source(tmp_path: Path, rows: int) -> SourceConfig:
    return SourceConfig.model_validate(tree(tmp_path, rows))


def accepted(out: Path) -> int:
    return pl.scan_parquet(out / "events.parquet").select(pl.len()).collect().item()


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------- two runs at once

def test_a_second_ingest_is_refused_naming_the_first_and_a_waiting_one_follows(tmp_path, monkeypatch):
    out = tmp_path / "events" / "t"
    ingest(source(tmp_path, 10), out)
    inside, release = threading.Event(), threading.Event()
    real = publish.publish_dir

    def slow_publish(tmp: Path, target: Path) -> None:
        inside.set()
        assert release.wait(30)
        real(tmp, target)

    monkeypatch.setattr(publish, "publish_dir", slow_publish)
    first = threading.Thread(target=ingest, args=(source(tmp_path, 20), out))
    first.start()
    assert inside.wait(30)
    monkeypatch.setattr(publish, "publish_dir", real)
    with pytest.raises(publish.OutputBusy) as busy:
        ingest(source(tmp_path, 30), out)
    message = str(busy.value)
    assert str(out) in message and f"pid {os.getpid()}" in message and "twins ingest t" in message
    assert "TWINS_LOCK_WAIT" in message
    assert accepted(out) == 10                                          # the first run has not published yet
    monkeypatch.setenv("TWINS_LOCK_WAIT", "30")                         # a run told to wait gets the output next
    second = threading.Thread(target=ingest, args=(source(tmp_path, 30), out))
    second.start()
    release.set()
    first.join(30), second.join(30)
    assert accepted(out) == 30 and hidden(out.parent) == []           # no lock file, no temporary left


def test_a_lock_held_by_another_process_names_it_and_dies_with_it(tmp_path):
    out = tmp_path / "events" / "t"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; from twins import publish\n"
        "with publish.locked(Path(sys.argv[1]), 'twins ingest t'):\n"
        "    print('held', flush=True); sys.stdin.read()\n"), str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(publish.OutputBusy, match=f"pid {holder.pid} on "):
            ingest(source(tmp_path, 10), out)
    finally:
        holder.kill()                                                   # SIGKILL: no clean-up of its own
        holder.wait(30)
    ingest(source(tmp_path, 10), out)                                   # the kernel dropped its lock
    assert accepted(out) == 10 and hidden(out.parent) == []


def test_a_second_score_on_the_same_output_is_refused(scored, monkeypatch):
    from twins.score import score_store

    out, before = scored
    with publish.locked(out, "twins score t"):
        with pytest.raises(publish.OutputBusy, match="twins score t"):
            score_store("fake", "t", out, chunk_size=3)
    assert out.read_bytes() == before


def test_a_second_store_writer_is_refused_and_latest_is_untouched(tmp_path):
    store = TwinStore(tmp_path / "store")
    first = store.write(pl.DataFrame({"customer_id": ["a"]}), "t")
    with publish.locked(store.root / "t" / "customer", "twins build t"):
        with pytest.raises(publish.OutputBusy, match="twins build t"):
            store.write(pl.DataFrame({"customer_id": ["b"]}), "t")
    assert store.open("t").path == first.path and store.snapshots("t") == [f"end/{first.path.name}"]


# ------------------------------------------------------------------------------------------- killed runs

KILL = """
import json, os, shutil, sys
from pathlib import Path
from twins import publish
from twins.data.ingest import ingest
from twins.data.source import SourceConfig

step, calls = int(sys.argv[2]), [0]

def dying(fn):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            os._exit(9)          # killed just before this call: no clean-up, no exception handlers
        return fn(*args, **kwargs)
    return wrapper

os.rename, os.replace, shutil.rmtree = dying(os.rename), dying(os.replace), dying(shutil.rmtree)
if hasattr(publish, "_exchange"):
    publish._exchange = dying(publish._exchange)
ingest(SourceConfig.model_validate(json.loads(sys.argv[1])), Path(sys.argv[3]))
"""


def test_a_run_killed_at_any_step_of_the_publish_leaves_a_readable_output(tmp_path):
    """Before every rename, exchange and removal of an ingest publishing 20 rows over 10, the run is killed: the
    events folder always reads complete (old or new), and the next run clears what the killed one left."""
    out = tmp_path / "events" / "t"
    ingest(source(tmp_path, 10), out)
    step = 0
    while True:
        step += 1
        killed = subprocess.run([sys.executable, "-c", KILL, json.dumps(tree(tmp_path, 20)), str(step), str(out)],
                                capture_output=True, text=True, timeout=120)
        assert killed.returncode in (0, 9), killed.stderr
        assert (out / "events.parquet").exists(), f"killed before call {step}: no events"
        assert accepted(out) in (10, 20) and json.loads((out / "report.json").read_text())["accepted"] == accepted(out)
        ingest(source(tmp_path, 10), out)                               # the next run: back to 10 rows, clean
        assert accepted(out) == 10 and hidden(out.parent) == [], f"killed before call {step}: {hidden(out.parent)}"
        if killed.returncode == 0:
            break
    assert step >= 3                                                    # exchange, removal of the old, done


def test_where_folders_cannot_be_exchanged_the_next_run_restores_a_folder_moved_aside(tmp_path, monkeypatch):
    out = tmp_path / "events" / "t"
    ingest(source(tmp_path, 10), out)
    monkeypatch.setattr(publish, "_exchange", lambda a, b: False)     # e.g. NFS: two renames
    real, calls = os.rename, []

    def killed_between(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt                                     # stopped between the two renames
        real(src, dst)

    monkeypatch.setattr(os, "rename", killed_between)
    with pytest.raises(KeyboardInterrupt):
        ingest(source(tmp_path, 20), out)
    monkeypatch.setattr(os, "rename", real)
    assert not out.exists() and [p for p in hidden(out.parent) if ".old-" in p]
    with publish.locked(out, "the next run"):
        assert accepted(out) == 10                                      # moved back before anything else
    ingest(source(tmp_path, 20), out)
    assert accepted(out) == 20 and hidden(out.parent) == []


# ------------------------------------------------------------------------------------------- stale temporaries

def test_stale_temporaries_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "events" / "t"
    ingest(source(tmp_path, 10), out)
    for name in (".t.tmp-4242-deadbeef", ".t.old-4242-cafe", ".t.tmp"):
        (out.parent / name).mkdir()
        (out.parent / name / "events.parquet").write_bytes(b"half")
    (out.parent / ".t.lock").write_text('{"what": "twins ingest t", "pid": 4242}')   # its lock, not held any more
    (out.parent / ".tother.tmp").mkdir()                                # another output's: not ours to remove
    ingest(source(tmp_path, 20), out)
    assert hidden(out.parent) == [".tother.tmp"] and accepted(out) == 20

    store = TwinStore(tmp_path / "store")
    store.write(pl.DataFrame({"customer_id": ["a"]}), "t")
    kind = store.root / "t" / "customer"
    (kind / "end" / ".v20240101T000000000000Z.tmp").mkdir()           # a killed build's snapshot folder
    (kind / ".LATEST.tmp").write_text("end/v20240101T000000000000Z")
    snap = store.write(pl.DataFrame({"customer_id": ["b"]}), "t")
    assert hidden(kind / "end") == [] and hidden(kind) == [] and store.open("t").path == snap.path


# ------------------------------------------------------------------------------------------- fsync

def test_files_and_folders_are_fsynced_before_the_rename_that_publishes_them(tmp_path, monkeypatch):
    out = tmp_path / "events" / "t"
    ingest(source(tmp_path, 10), out)
    log: list[tuple[str, str]] = []
    real_fsync, real_exchange = os.fsync, publish._exchange

    def fsync(fd: int) -> None:
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def exchange(a: Path, b: Path) -> bool:
        log.append(("exchange", str(a)))
        return real_exchange(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(publish, "_exchange", exchange)
    ingest(source(tmp_path, 20), out)
    swap = next(i for i, (what, _) in enumerate(log) if what == "exchange")
    tmp = log[swap][1]
    synced_before = {path for what, path in log[:swap] if what == "fsync"}
    assert {f"{tmp}/events.parquet", f"{tmp}/quarantine.parquet", f"{tmp}/report.json", tmp} <= synced_before
    assert ("fsync", str(out.parent)) in log[swap:]                    # the rename itself made durable

    log.clear()
    store = TwinStore(tmp_path / "store")
    snap = store.write(pl.DataFrame({"customer_id": ["a"]}), "t")
    synced = [path for what, path in log if what == "fsync"]
    assert str(snap.path.parent) in synced and str(store.root / "t" / "customer") in synced   # snapshot, LATEST
    assert any(p.endswith("twins.parquet") for p in synced) and any(".LATEST.tmp-" in p for p in synced)


# ------------------------------------------------------------------------------------------- disk full

def test_ingest_on_a_full_disk_says_so_and_keeps_the_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "events" / "t"
    ingest(source(tmp_path, 10), out)

    def full(*args, **kwargs):
        raise pl.exceptions.ComputeError(DISK_FULL_POLARS)

    monkeypatch.setattr(pl.LazyFrame, "sink_batches", full)  # ingest's stream of validated rows
    with pytest.raises(publish.DiskFull) as exc:
        ingest(source(tmp_path, 20), out)
    message = str(exc.value)
    assert exc.value.errno == errno.ENOSPC and message.startswith("no space left on device while writing into")
    assert str(out.parent) in message and "TWINS_HOME" in message and "config" not in message
    assert accepted(out) == 10 and hidden(out.parent) == []


def test_store_and_score_on_a_full_disk_say_so(scored, tmp_path, monkeypatch):
    from twins.score import score_store

    out, before = scored
    store = TwinStore(paths.store_dir())
    latest = store.open("t").path

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", full)
    with pytest.raises(publish.DiskFull, match="no space left on device while writing into .*TWINS_HOME"):
        store.write(pl.DataFrame({"customer_id": ["z"]}), "t", as_of=datetime(2023, 2, 1, tzinfo=timezone.utc))
    assert store.open("t").path == latest and hidden(latest.parent) == []
    with pytest.raises(publish.DiskFull, match=f"while writing into {re.escape(str(out.parent))}"):
        score_store("fake", "t", out, chunk_size=3, k=2)
    assert out.read_bytes() == before


def test_the_cli_prints_a_full_disk_as_an_error_not_a_traceback(tmp_path, monkeypatch, twins_home):
    from twins.cli import app

    (tmp_path / "t.yaml").write_text(json.dumps({k: v for k, v in tree(tmp_path, 10).items() if k != "base_dir"}))
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setattr(pl.LazyFrame, "sink_batches",
                        lambda *a, **k: (_ for _ in ()).throw(pl.exceptions.ComputeError(DISK_FULL_POLARS)))
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "t.yaml"), "--no-track"])
    assert result.exit_code == 2, result.output
    assert "no space left on device while writing into" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------- fixtures

class FakeBundle:
    """Stands in for a next-basket bundle: the score writing is under test, not the model."""

    manifest = {"task": "next_basket", "model_sha256": "0" * 64, "name": "fake"}

    def recommend(self, histories: list, k: int) -> list[list[tuple[str, float]]]:
        return [[("i0", 1.0)] * min(k, 1) for _ in histories]


@pytest.fixture
def scored(tmp_path, twins_home, monkeypatch) -> tuple[Path, bytes]:
    """Source ``t`` ingested, 7 customer twins as of February 2023, scored once by ``FakeBundle`` to ``out``."""
    import twins.score
    from twins.score import score_store

    ingest(source(tmp_path, 10), paths.events_dir("t"))
    TwinStore(paths.store_dir()).write(pl.DataFrame({"customer_id": [f"c{i}" for i in range(7)]}), "t",
                                       as_of=datetime(2023, 2, 1, tzinfo=timezone.utc))
    monkeypatch.setattr(twins.score, "load", lambda model: FakeBundle())
    out = twins_home / "scores" / "t" / "fake.parquet"
    score_store("fake", "t", out, chunk_size=3)
    return out, out.read_bytes()


# ------------------------------------------------------------------------------------------- bundles

def test_an_exported_bundle_has_the_usual_permissions_and_its_lock(tmp_path, monkeypatch):
    """The publishing of ``export_bundle``: the exporter itself is replaced by a tiny ONNX graph (seconds, not 15)."""
    import onnx
    import torch
    from onnx import TensorProto, helper

    from twins.export.onnx_bundle import export_bundle

    class Program:
        def save(self, path: str) -> None:
            spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("input", "y")]
            graph = helper.make_graph([helper.make_node("Identity", ["input"], ["y"])], "g", spec[:1], spec[1:])
            onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)

    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: Program())

    def export(out: Path) -> Path:
        return export_bundle(torch.nn.Identity(), (torch.ones(2, 3),), out, {"name": "x", "version": "1", "task": "t"},
                             input_names=["input"], output_names=["y"], dynamic_axes={"input": {0: "batch"}},
                             overwrite=True)

    umask = os.umask(0o022)
    try:
        bundle = export(tmp_path / "models" / "x")
    finally:
        os.umask(umask)
    assert bundle.stat().st_mode & 0o777 == 0o755                      # not mkdtemp's 0700: another user can read it
    with publish.locked(bundle, "bundle export x"):
        with pytest.raises(publish.OutputBusy, match="bundle export x"):
            export(bundle)
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", "model.onnx"] and hidden(bundle.parent) == []
