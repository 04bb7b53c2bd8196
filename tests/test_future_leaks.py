"""No silent future (issue 25, item 4): LATEST is the newest as_of, a bundle fitted on the twins' future is refused
by `twins score` and `twins serve` (unless --allow-future), and machine twins of a simulated market default to
its as_of, not to the end of the simulator's truth horizon."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from twins import api
from twins.cli import app
from twins.provenance import FutureLeak
from twins.score import score_store
from twins.serve import create_app
from twins.sim import MarketConfig, simulate
from twins.sim.store import write_market
from twins.twin.store import TwinStore

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*axis name:UserWarning")]
UTC = timezone.utc


def test_latest_is_the_newest_as_of_not_the_last_written(twins_home):
    store = TwinStore(twins_home / "store")
    frame = pl.DataFrame({"customer_id": ["a"], "baskets": [1]})
    newest = store.write(frame, "shop", as_of=datetime(2017, 9, 30, tzinfo=UTC))
    backtest = store.write(frame, "shop", as_of=datetime(2017, 6, 30, tzinfo=UTC))   # written later, earlier as_of
    assert store.latest("shop") == newest.label
    assert store.open("shop").path == newest.path
    assert (twins_home / "store" / "shop" / "customer" / "LATEST_WRITTEN").read_text() == backtest.label
    end = store.write(frame, "shop")   # 'end' (after the last event) is the newest of all
    assert store.latest("shop") == end.label


def with_provenance(bundle: Path, folder: Path, source: str | None, until: str | None) -> Path:
    """A copy of ``bundle`` whose manifest says it was fitted on ``source``'s events up to ``until``."""
    copy = Path(shutil.copytree(bundle, folder))
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "data_source": source, "data_until": until}))
    return copy


@pytest.fixture
def shop(twins_home, tmp_path) -> str:
    """Five customers buying through 2024; their twins as of 2024-06-01."""
    rows = ["cust,order,sku,qty,price,ts"] + [f"c{c},o{c}-{m},i{m % 3},1,2.5,2024-{m:02d}-1{c} 10:00"
                                               for c in range(5) for m in range(1, 11)]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "shop.yaml").write_text(
        "name: shop\nfiles: [{path: log.csv}]\nvalidation: {not_after: 2030-01-01T00:00:00Z}\n"
        "columns: {customer_id: cust, basket_id: order, item_id: sku, quantity: qty, unit_price: price, event_time: ts}\n")
    api.ingest(tmp_path / "shop.yaml", track=False)
    api.build(tmp_path / "shop.yaml", "2024-06-01", track=False)
    return "shop"


def test_score_refuses_a_bundle_fitted_after_the_twins_as_of(shop, nbr_bundle, tmp_path):
    late = with_provenance(nbr_bundle, tmp_path / "late", "shop", "2024-10-15T10:00:00+00:00")
    with pytest.raises(FutureLeak, match=r"fitted on events of shop up to 2024-10-15.*as_of.*2024-06-01.*--allow-future"):
        score_store(late, shop, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()
    with pytest.warns(UserWarning, match="fitted on events of shop up to 2024-10-15"):
        assert score_store(late, shop, tmp_path / "out.parquet", allow_future=True).rows == 5
    result = CliRunner().invoke(app, ["score", str(late), "--source", shop, "--out", str(tmp_path / "cli.parquet")])
    assert result.exit_code == 2 and "--allow-future" in result.output


def test_score_accepts_earlier_or_other_data_and_warns_without_a_record(shop, nbr_bundle, tmp_path):
    early = with_provenance(nbr_bundle, tmp_path / "early", "shop", "2024-05-31T10:00:00+00:00")
    other = with_provenance(nbr_bundle, tmp_path / "other", "another_shop", "2024-10-15T10:00:00+00:00")
    for bundle in (early, other):
        assert score_store(bundle, shop, tmp_path / f"{bundle.name}.parquet").rows == 5
    with pytest.warns(UserWarning, match="does not record the data it was fitted on"):
        score_store(nbr_bundle, shop, tmp_path / "old.parquet")


def test_serve_refuses_a_model_fitted_after_the_served_twins(shop, nbr_bundle, tmp_path, twins_home):
    late = with_provenance(nbr_bundle, tmp_path / "late", "shop", "2024-10-15T10:00:00+00:00")
    with pytest.raises(ValueError, match="model nbr: bundle .* fitted on events of shop up to 2024-10-15"):
        create_app({"nbr": str(late)}, [shop], poll_seconds=0)
    with pytest.warns(UserWarning, match="fitted on events of shop"):
        create_app({"nbr": str(late)}, [shop], poll_seconds=0, allow_future=True)
    early = with_provenance(nbr_bundle, tmp_path / "early", "shop", "2024-05-31T10:00:00+00:00")
    with TestClient(create_app({"nbr": str(early)}, [shop], poll_seconds=0)) as client:
        assert client.get("/ready").json()["degraded"] is False
        api.build(Path(tmp_path / "shop.yaml"), "2024-03-01", track=False)   # a backtest: LATEST does not move
        client.app.state.service.refresh()
        assert client.get("/ready").json()["degraded"] is False


def small_market() -> MarketConfig:
    return MarketConfig(seed=1, n_machines=40, days=60, horizon_days=30, humans={"n": 5})


def test_machines_on_a_simulated_market_default_to_its_as_of(twins_home):
    market = simulate(small_market())
    files = write_market(market)
    recorded = json.loads(files["market"].read_text())
    assert datetime.fromisoformat(recorded["as_of"]) == market.as_of
    assert datetime.fromisoformat(recorded["truth_until"]) == market.as_of + timedelta(days=30)
    last = pl.read_parquet(files["events"])["event_time"].max()
    assert last > market.as_of   # the events run on through the truth horizon...
    snaps = api.machines("sim_market")
    for snap in snaps.values():   # ...but the twins stop where the market was observed
        assert datetime.fromisoformat(snap.manifest["as_of"]) == market.as_of
