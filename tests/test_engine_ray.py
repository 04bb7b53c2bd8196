"""The Ray engine: the same per-bucket work as the local engine, with byte-identical outputs (ingest, customer and
machine twins, scores) on a small log with 2 local workers; and the local path never imports Ray."""

from __future__ import annotations

import math
import operator
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest


def test_the_local_path_never_imports_ray():
    code = ("import sys, twins.cli, twins.api, twins.score, twins.engine, twins.twin.customer, twins.twin.machine, "
            "twins.twin.emotion; twins.engine.get_engine('local').map(abs, [-1]); assert 'ray' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith('ray'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session")
def ray_engine():
    """One local Ray of 2 workers for the whole session (starting one costs about 10 s)."""
    ray = pytest.importorskip("ray")
    from twins.engine import get_engine

    engine = get_engine("ray", 2)
    yield engine
    ray.shutdown()


@pytest.mark.ray
def test_map_keeps_item_order_reports_progress_and_names_a_failing_item(ray_engine):
    seen = []
    assert ray_engine.map(math.sqrt, [16, 1, 9, 4], on_done=lambda done, total: seen.append((done, total))) == [4, 1, 3, 2]
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert ray_engine.map(operator.add, [1, 2, 3], setup=lambda: 10) == [11, 12, 13]
    with pytest.raises(ValueError, match=r"math domain error \(while processing -1 on a Ray worker\)"):
        ray_engine.map(math.sqrt, [1, -1, 4])


@pytest.mark.ray
def test_call_runs_one_job_fresh_on_a_worker_that_exits_after_it(ray_engine):
    here = os.readlink("/proc/self")  # the pid of the process that reads it
    first, second = ray_engine.call(os.readlink, "/proc/self"), ray_engine.call(os.readlink, "/proc/self")
    assert len({here, first, second}) == 3
    assert ray_engine.call(os.readlink, "/proc/self", fresh=False) == here
    with pytest.raises(ValueError, match=r"math domain error \(while processing -1 on a Ray worker\)"):
        ray_engine.call(math.sqrt, -1)


def _shop(folder: Path) -> Path:
    """A CSV of 60 customers (half of them machine-like, ordering every 7 days) and its source config, 4 buckets."""
    rng = np.random.default_rng(2)
    start, lines = datetime(2024, 1, 1, tzinfo=timezone.utc), ["order,cust,sku,qty,price,ts,who"]
    for c in range(60):
        machine = c % 2 == 0
        for b in range(int(rng.integers(3, 12))):
            day = 7.0 * b + c / 10 if machine else float(rng.uniform(0, 150))
            when = (start + timedelta(days=day)).strftime("%Y-%m-%d %H:%M:%S")
            for item in ([c % 3] if machine else rng.choice(20, rng.integers(1, 4), replace=False)):
                lines.append(f"o{c}-{b},c{c:02d},i{item:02d},{2 if machine else 1},{rng.uniform(1, 9):.2f},{when},"
                             f"{'machine' if machine else 'human'}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.csv").write_text("\n".join(lines) + "\n")
    config = folder / "shop.yaml"
    config.write_text("name: shop\nfiles: [{path: log.csv}]\nbuckets: 4\n"
                      "columns: {customer_id: cust, basket_id: order, item_id: sku, quantity: qty, unit_price: price, "
                      "event_time: ts, actor: who}\n")
    return config


CHAIN = """
import sys
from pathlib import Path
from twins import api, paths
from twins.score import score_store
from twins.twin.customer import TwinParams

config, bundle, home = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
api.ingest(config, track=False)
build = api.build(config, "2024-05-01", TwinParams(outlook_horizon_days=28), track=False)
machines = api.machines("shop", "2024-05-01")
scores = score_store(bundle, "shop", home / "scores.parquet", chunk_size=5, k=3)
files = {f"events/{f.name}": f for f in sorted((paths.events_dir("shop") / "events.parquet").glob("*.parquet"))}
files |= {"customer": build.path / "twins.parquet", "scores": scores.out}
files |= {kind: snap.path / "twins.parquet" for kind, snap in machines.items()}
for name, file in files.items():
    print(name, file)
"""


def _chain(home: Path, config: Path, bundle: Path, env: dict[str, str]) -> dict[str, bytes]:
    """ingest, build, machines and score in a process of one thread (as a Ray worker runs) with ``env``'s engine,
    into ``home``; every output file's bytes."""
    env = {**os.environ, "TWINS_HOME": str(home), "POLARS_MAX_THREADS": "1", "TWINS_THREADS": "1",
           "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run([sys.executable, "-c", CHAIN, str(config), str(bundle), str(home)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    files = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    return {name: Path(file).read_bytes() for name, file in files.items()}


@pytest.mark.ray
@pytest.mark.slow
def test_ingest_build_machines_and_score_on_ray_equal_the_local_engine(ray_engine, nbr_bundle, tmp_path):
    import ray

    config = _shop(tmp_path / "src")
    local = _chain(tmp_path / "local", config, nbr_bundle, {"TWINS_ENGINE": "local"})
    on_ray = _chain(tmp_path / "ray", config, nbr_bundle,  # joins the session's Ray, as on a cluster
                    {"TWINS_ENGINE": "ray", "RAY_ADDRESS": ray.get_runtime_context().gcs_address})
    assert set(local) == set(on_ray) and {"machine", "behaviour", "events/bucket-00003.parquet"} <= set(local)
    assert pl.read_parquet(local["customer"]).height == 60
    for name in local:
        assert on_ray[name] == local[name], name


def test_cli_engine_and_workers_are_checked():
    from typer.testing import CliRunner

    from twins.cli import app

    bad = CliRunner().invoke(app, ["--engine", "spark", "twin", "list"])
    assert bad.exit_code == 2 and "--engine 'spark': choose one of local, ray" in bad.output
    bad = CliRunner().invoke(app, ["--workers", "0", "twin", "list"])
    assert bad.exit_code == 2 and "--workers 0" in bad.output
