"""Issue 25, item 5: `twins serve` says where it listens and a 404 names what exists; `twin show` rounds its table;
`twin list` without --source lists the sources; errors for missing twins name the command that builds them;
`twins emotions` without a bundle says how to make one; `twins sim` refuses a market that will not fit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from twins.cli import app
from twins.serve import create_app
from twins.sim import load_config
from twins.sim.memory import check_fits, peak_bytes
from twins.twin.store import TwinStore

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*axis name:UserWarning")]


@pytest.fixture
def store(twins_home) -> TwinStore:
    store = TwinStore(twins_home / "store")
    store.write(pl.DataFrame({"customer_id": ["a"], "p_alive": [0.123456789], "top": [[{"w": 1.98765432}]]}), "shop")
    return store


def test_twin_show_rounds_the_table_and_keeps_json_exact(store):
    table = CliRunner().invoke(app, ["twin", "show", "a", "--source", "shop"])
    assert table.exit_code == 0 and "0.1235" in table.output and "0.123456789" not in table.output
    assert '"w": 1.988' in table.output
    exact = CliRunner().invoke(app, ["twin", "show", "a", "--source", "shop", "--json"])
    assert "0.123456789" in exact.output


def test_twin_list_without_source_lists_the_sources(store, twins_home):
    store.write(pl.DataFrame({"customer_id": ["x"]}), "goemotions", "emotion")
    result = CliRunner().invoke(app, ["twin", "list"])
    assert result.exit_code == 0 and result.output.splitlines() == ["goemotions: emotion", "shop: customer"]


def test_missing_twins_name_the_command_that_builds_them(store):
    for kind, command in (("emotion", "twins emotions"), ("machine", "twins machines"), ("customer", "twins build")):
        result = CliRunner().invoke(app, ["twin", "show", "a", "--source", "nowhere", "--kind", kind])
        assert result.exit_code == 2 and f"run `{command}` first" in result.output


def test_emotions_without_a_bundle_says_how_to_make_one():
    result = CliRunner().invoke(app, ["emotions", "configs/sources/goemotions.yaml"])
    assert result.exit_code == 2 and "twins run configs/pipelines/goemotions_emotion.yaml" in result.output
    assert "goemotions-ensemble" in result.output


def test_an_unknown_model_or_action_is_answered_with_what_exists(nbr_bundle, store):
    with TestClient(create_app({"nbr": str(nbr_bundle)}, ["shop"], poll_seconds=0)) as client:
        missing = client.post("/v1/models/basket/recommend", json={})
        assert missing.status_code == 404 and "no model 'basket'" in missing.json()["message"]
        assert "POST /v1/models/nbr/recommend" in missing.json()["message"]
        wrong = client.post("/v1/models/nbr/outlook", json={})
        assert wrong.status_code == 404 and "answers 'recommend' only" in wrong.json()["message"]
        assert "shop" in client.get("/v1/nothing").json()["message"]


def test_serve_prints_where_it_listens(nbr_bundle, twins_home):
    env = os.environ | {"TWINS_HOME": str(twins_home), "TWINS_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "twins.cli", "serve", "--model", f"nbr={nbr_bundle}", "--port", "0"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert line.startswith("twins serve: listening on http://127.0.0.1:") and not line.split(":")[3].startswith("0 ")


def test_sim_refuses_a_market_that_will_not_fit():
    big = load_config(REPO / "configs/sim/market.yaml", ["n_machines=100000"])
    assert peak_bytes(big) < 4 * 2**30   # simulated and written in chunks: memory is a chunk's (once 23 GiB, killed)
    assert check_fits(big, available=24 * 2**30, free_disk=100 * 2**30).chunks > 1
    with pytest.raises(OSError, match=r"100,000 machines .* GiB of disk .*--set n_machines=\d+"):
        check_fits(big, available=24 * 2**30, free_disk=2**30)
    with pytest.raises(MemoryError, match=r"a chunk of the market .* GiB"):
        check_fits(big, available=2**30)
    assert check_fits(load_config(REPO / "configs/sim/market.yaml", ["n_machines=2000"]), 24 * 2**30).peak_bytes < 2**30
