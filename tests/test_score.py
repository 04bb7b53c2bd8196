"""`twins score`: a whole twin snapshot scored to Parquet in chunks, equal to the runtime on the same histories;
a run killed between chunks leaves the previous output intact and a rerun resumes and completes it."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from twins import api
from twins.cli import app
from twins.data.events import baskets_by_customer, scan_events
from twins.runtime import load
from twins.score import score_store
from twins.twin.customer import TwinParams

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*axis name:UserWarning")]
AS_OF = "2024-06-01"


@pytest.fixture
def shop(tmp_path, twins_home) -> str:
    """45 customers buying items i00..i29 over 2024-01..07 (some after as_of), with a few returns; twins as of June."""
    rng = np.random.default_rng(1)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    lines = ["order,cust,sku,qty,price,ts,kind"]
    for c in range(45):
        for b in range(rng.integers(1, 7)):
            day = c if b == 0 else float(rng.uniform(0, 200))   # everyone's first basket is before as_of
            when = (start + timedelta(days=day)).strftime("%Y-%m-%d %H:%M:%S")
            for item in rng.choice(30, rng.integers(1, 4), replace=False):
                lines.append(f"o{c}-{b},c{c:02d},i{item:02d},1,{rng.uniform(1, 20):.2f},{when},{'R' if rng.random() < 0.05 else 'P'}")
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "shop.yaml").write_text(
        "name: shop\nfiles: [{path: log.csv}]\n"
        "columns: {customer_id: cust, basket_id: order, item_id: sku, quantity: qty, unit_price: price, event_time: ts}\n"
        "returns: {flag_column: kind, flag_values: [R]}\nvalidation: {not_after: 2025-01-01T00:00:00Z}\n")
    api.ingest(tmp_path / "shop.yaml", track=False)
    api.build(tmp_path / "shop.yaml", AS_OF, TwinParams(outlook_horizon_days=None), track=False)
    return "shop"


def test_next_basket_scores_equal_the_runtime(shop, nbr_bundle, twins_home):
    report = score_store(nbr_bundle, shop, chunk_size=10, k=5)
    assert report.rows == 45 and report.chunks == 5 and report.resumed_chunks == 0
    assert report.out == twins_home / "scores" / "shop" / "gp-topfreq.parquet"
    out = pl.read_parquet(report.out)
    assert out.columns == ["customer_id", "items", "scores"] and out["customer_id"].to_list() == sorted(out["customer_id"])
    as_of = datetime(2024, 6, 1, tzinfo=timezone.utc)
    histories = baskets_by_customer(scan_events(twins_home / "events" / "shop").filter(pl.col("event_time") < as_of))
    want = load(nbr_bundle).recommend([histories.get(c, []) for c in out["customer_id"]], k=5)
    assert out["items"].to_list() == [[i for i, _ in r] for r in want]
    assert [p.name for p in report.out.parent.iterdir()] == ["gp-topfreq.parquet"]  # no parts or temporary files left


def test_outlook_scores(shop, outlook_bundle, tmp_path):
    out = pl.read_parquet(score_store(outlook_bundle, shop, tmp_path / "outlook.parquet", chunk_size=20, horizon_days=91).out)
    assert out.height == 45 and {"expected_purchases", "expected_spend", "p_alive", "churn_risk", "next_purchase"} <= set(out.columns)
    assert out["known"].all() and (out["horizon_days"] == 91).all()
    assert out["next_purchase"].dtype == pl.Datetime("us", "UTC") and (out["next_purchase"] >= datetime(2024, 6, 1, tzinfo=timezone.utc)).all()


KILL = """
import os, sys
from twins.score import score_store

def die(done, total):
    if done >= 20:
        os._exit(9)   # killed: no cleanup, no exception handlers

score_store(sys.argv[1], "shop", sys.argv[2], chunk_size=10, k=3, on_chunk=die)
"""


def test_killed_run_keeps_previous_output_and_rerun_completes(shop, nbr_bundle, tmp_path, twins_home):
    out = tmp_path / "sales.parquet"
    score_store(nbr_bundle, shop, out, chunk_size=10, k=5)
    previous = out.read_bytes()
    killed = subprocess.run([sys.executable, "-c", KILL, str(nbr_bundle), str(out)], timeout=120, capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    assert out.read_bytes() == previous                                    # the old list is untouched
    parts = tmp_path / ".sales.parquet.parts"
    assert sorted(p.name for p in parts.glob("part-*")) == ["part-000000.parquet", "part-000001.parquet"]

    def fail(done: int, total: int) -> None:
        if done >= 30:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):                   # fails again one chunk later
        score_store(nbr_bundle, shop, out, chunk_size=10, k=3, on_chunk=fail)
    assert out.read_bytes() == previous
    report = score_store(nbr_bundle, shop, out, chunk_size=10, k=3)       # the same job: resumes
    assert report.resumed_chunks == 3 and report.chunks == 5
    fresh = score_store(nbr_bundle, shop, tmp_path / "fresh.parquet", chunk_size=10, k=3)
    assert pl.read_parquet(out).equals(pl.read_parquet(fresh.out)) and pl.read_parquet(out)["items"].list.len().max() == 3
    assert not parts.exists()


def test_a_different_job_does_not_reuse_parts(shop, nbr_bundle, tmp_path):
    out = tmp_path / "s.parquet"
    with pytest.raises(ZeroDivisionError):
        score_store(nbr_bundle, shop, out, chunk_size=10, k=3, on_chunk=lambda done, total: 1 / 0 if done >= 20 else None)
    report = score_store(nbr_bundle, shop, out, chunk_size=10, k=4)     # another k: another job
    assert report.resumed_chunks == 0 and pl.read_parquet(out)["items"].list.len().max() == 4


def test_cli_score(shop, nbr_bundle, tmp_path):
    out = CliRunner().invoke(app, ["score", str(nbr_bundle), "--source", shop, "--out", str(tmp_path / "x.parquet"), "--chunk-size", "7"])
    assert out.exit_code == 0, out.output
    assert "45 customers (next_basket) in 7 chunk(s)" in out.output and pl.read_parquet(tmp_path / "x.parquet").height == 45
    out = CliRunner().invoke(app, ["score", str(nbr_bundle), "--source", "nowhere"])
    assert out.exit_code == 2 and "twins build" in out.output


SNAPSHOT_KILL = """
import os, sys
from pathlib import Path
import polars as pl
from twins.twin.store import TwinStore

def die(self, target):
    os._exit(9)   # killed after the files are written, before the snapshot is published

os.rename = die   # Path.rename calls it too
TwinStore(sys.argv[1]).write(pl.DataFrame({"customer_id": ["a", "b", "c"], "baskets": [9, 9, 9]}), "shop")
"""


def test_killed_snapshot_write_leaves_the_previous_snapshot(tmp_path):
    from twins.twin.store import TwinStore

    store = TwinStore(tmp_path / "store")
    first = store.write(pl.DataFrame({"customer_id": ["a"], "baskets": [1]}), "shop")
    killed = subprocess.run([sys.executable, "-c", SNAPSHOT_KILL, str(store.root)], timeout=60, capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    assert store.snapshots("shop") == [f"{first.path.parent.name}/{first.path.name}"]
    assert store.open("shop").path == first.path and store.open("shop").get("a")["baskets"] == 1
    again = store.write(pl.DataFrame({"customer_id": ["a", "b", "c"], "baskets": [9, 9, 9]}), "shop")   # the rerun
    assert store.open("shop").path == again.path and store.open("shop").get("c")["baskets"] == 9


def test_replenishment_scores_every_machine_of_the_machine_twins(twins_home, tmp_path):
    from twins.models.replenishment import histories, runtime_inputs, samples
    from twins.models.replenishment_export import export_replenishment
    from twins.models.replenishment_torch import ReplenishmentForecaster
    from twins.sim import MarketConfig, simulate
    from twins import paths
    from twins.sim.store import write_market
    from twins.twin.store import TwinStore

    market = simulate(MarketConfig(name="mini", seed=4, n_machines=40, days=120, horizon_days=0, humans={"n": 10}))
    write_market(market)
    api.machines("mini")  # machine twins as of the end: the machines to score
    hist = histories(market.events())
    rows = samples(hist, list(hist), [float(d) for d in range(20130, 20200, 7)], 30.0, until=20200.0)
    model = ReplenishmentForecaster(epochs=3, hidden=8).fit(rows.X, rows.T, rows.Q, rows.censored, rows.bound)
    bundle = export_replenishment(model, tmp_path / "repl")
    report = score_store(bundle, "mini", chunk_size=15)
    got = pl.read_parquet(report.out)
    machines = sorted(hist)
    assert report.task == "replenishment" and report.chunks == 3 and sorted(got["customer_id"]) == machines
    as_of = TwinStore(paths.store_dir()).open("mini", "machine").manifest["as_of"]  # the machine twins' as_of
    orders, readings = runtime_inputs(hist, got["customer_id"].to_list())
    want = load(bundle).forecast(orders, as_of, readings)
    assert got["known"].to_list() == [w["known"] for w in want] and got["known"].sum() > 20  # >= 3 orders by then
    known = got["known"].to_numpy()
    np.testing.assert_allclose(got["days"].to_numpy()[known], [w["days"] for w in want if w["known"]], rtol=1e-9)
    # the graph computes in float32 and a batch of another size may round one output a unit in the last place apart
    np.testing.assert_allclose(got["quantity_high"].to_numpy()[known], [w["quantity_high"] for w in want if w["known"]],
                               rtol=1e-6)


def _rebucketed(source: str, name: str, n: int, kind: str = "customer") -> str:
    """Source ``name``: ``source``'s events in ``n`` buckets and its latest ``kind`` twins."""
    from twins import paths
    from twins.data.events import BucketWriter
    from twins.twin.store import TwinStore

    writer = BucketWriter(paths.events_dir(name) / "events.parquet", n)
    writer.add(scan_events(paths.events_dir(source)).collect())
    writer.finish()
    store = TwinStore(paths.store_dir())
    snap = store.open(source, kind)
    store.write(snap.frame, name, kind, datetime.fromisoformat(snap.manifest["as_of"]), id_column=snap.id_column)
    return name


@pytest.mark.parametrize("bundle", ["nbr_bundle", "outlook_bundle"])
def test_scores_by_bucket_are_todays_bytes_for_one_bucket_or_many(shop, bundle, request, tmp_path):
    bundle = request.getfixturevalue(bundle)
    one = score_store(bundle, shop, tmp_path / "one.parquet", chunk_size=7, k=5, horizon_days=91)
    many = score_store(bundle, _rebucketed(shop, "shop8", 8), tmp_path / "many.parquet", chunk_size=7, k=5,
                       horizon_days=91)
    assert many.chunks > one.chunks  # each bucket's customers in chunks of their own
    if "outlook" in str(bundle):  # its ONNX graph rounds a few values a unit in the last place apart by batch size
        assert_frame_equal(pl.read_parquet(one.out), pl.read_parquet(many.out), check_exact=False, rel_tol=1e-13)
    else:
        assert one.out.read_bytes() == many.out.read_bytes()
    # today's path before buckets: every chunk scored on the whole log, parts concatenated
    from twins.score import SCORERS

    model, as_of = load(bundle), datetime(2024, 6, 1, tzinfo=timezone.utc)
    ids = pl.read_parquet(tmp_path / "one.parquet")["customer_id"].to_list()
    events = scan_events(paths_events(shop)).filter(pl.col("event_time") < as_of)
    whole = pl.concat([SCORERS[model.manifest["task"]](model, events.filter(pl.col("customer_id").is_in(ids[i:i + 7])),
                                                       ids[i:i + 7], as_of, k=5, horizon_days=91)
                       for i in range(0, len(ids), 7)])
    (tmp_path / "today").mkdir()
    for n, part in enumerate(whole.iter_slices(7)):
        part.write_parquet(tmp_path / "today" / f"part-{n:06d}.parquet")
    pl.scan_parquet(sorted((tmp_path / "today").glob("*.parquet"))).sink_parquet(tmp_path / "today.parquet")
    assert (tmp_path / "today.parquet").read_bytes() == (tmp_path / "one.parquet").read_bytes()


def paths_events(source: str):
    from twins import paths

    return paths.events_dir(source)
