"""`twins serve` with FastAPI's TestClient: next basket and purchase outlook from bundle folders, twin look-up,
batches, explanatory 4xx, health/readiness, OpenAPI, JSON request logs, and reloads that refuse broken bundles."""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient

from twins.runtime import TASKS, load
from twins.serve import ROUTES, create_app
from twins.serve.logs import JsonFormatter
from twins.twin.store import TwinStore

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*axis name:UserWarning")]


@pytest.fixture
def folders(nbr_bundle, outlook_bundle, tmp_path) -> dict[str, Path]:
    """Copies of the session bundles that a test may replace or tamper with."""
    return {"nbr": Path(shutil.copytree(nbr_bundle, tmp_path / "nbr")),
            "outlook": Path(shutil.copytree(outlook_bundle, tmp_path / "outlook"))}


@pytest.fixture
def store(twins_home) -> TwinStore:
    store = TwinStore(twins_home / "store")
    store.write(pl.DataFrame({"customer_id": ["a", "b"], "baskets": [3, 1], "ipt_cv": [0.5, float("nan")],
                              "last_purchase": [datetime(2024, 1, 5, tzinfo=timezone.utc), None],
                              "top_items": [[{"item_id": "i01", "weight": 1.9}], []]}), "shop")
    return store


@pytest.fixture
def client(folders, store):
    with TestClient(create_app(folders, ["shop"], poll_seconds=0)) as c:
        yield c


def test_next_basket_batch_equals_the_runtime(client, folders):
    histories = [[["i01", "i02"], ["i01"]], [], [["unknown"]]]
    r = client.post("/v1/models/nbr/recommend", json={"histories": histories, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "nbr" and body["version"] == "1"
    want = load(folders["nbr"]).recommend(histories, k=5)
    assert [[(x["item"], x["score"]) for x in recs] for recs in body["results"]] == want
    assert r.headers["x-request-id"]
    # numeric item ids are read as strings
    assert client.post("/v1/models/nbr/recommend", json={"histories": [[[1, 2]]]}).status_code == 200


def test_outlook_answers_when_how_many_how_much_churn(client):
    history = [{"time": "2024-03-01T10:00:00Z", "amount": 20.0}, {"time": "2024-05-20", "amount": 35.5},
               {"time": "2024-06-10T09:00:00+02:00", "amount": -5.0}]
    r = client.post("/v1/models/outlook/outlook", json={"histories": [history, []], "as_of": "2024-07-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    known, new = r.json()["results"]
    assert known["known"] and not new["known"]
    assert known["horizon_days"] == 28.0 and known["churn_risk"] == pytest.approx(1 - known["p_alive"])
    assert known["expected_purchases"] > 0 and known["expected_spend"] > 0
    assert known["next_purchase_low"] <= known["next_purchase"] and known["next_purchase"] >= "2024-07-01"
    r = client.post("/v1/models/outlook/outlook", json={"histories": [history], "as_of": "2024-07-01", "horizon_days": 91})
    assert r.json()["results"][0]["expected_purchases"] > known["expected_purchases"]


@pytest.mark.parametrize(("body", "where"), [
    ({"histories": [["i01"]]}, "histories[0][0]: Input should be a valid list"),
    ({"histories": []}, "histories: List should have at least 1 item"),
    ({"histories": [[]], "k": 0}, "k: Input should be greater than or equal to 1"),
    ({"histories": [[]], "k": 21}, "k must be in [1, 20]"),
    ({"histories": [[]], "top": 3}, "top: Extra inputs are not permitted"),
    ({}, "histories: Field required"),
])
def test_validation_errors_explain(client, body, where):
    r = client.post("/v1/models/nbr/recommend", json=body)
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_request" and where in r.json()["message"], r.json()


def test_outlook_validation_and_bad_json(client):
    r = client.post("/v1/models/outlook/outlook", json={"histories": [[{"time": "yesterday", "amount": 1}]], "as_of": "2024-07-01"})
    assert r.status_code == 422 and "histories[0][0].time" in r.json()["message"]
    r = client.post("/v1/models/outlook/outlook", content=b'{"histories": [[{"time": "2024-01-01", "amount": NaN}]], "as_of": "2024-07-01"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "amount" in r.json()["message"]
    r = client.post("/v1/models/nbr/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["message"]
    assert client.post("/v1/models/nope/recommend", json={}).status_code == 404


def test_twin_lookup_single_and_batch(client):
    r = client.get("/v1/twins/shop/a")
    assert r.status_code == 200
    twin = r.json()["twin"]
    assert twin["baskets"] == 3 and twin["last_purchase"].startswith("2024-01-05") and twin["top_items"][0]["item_id"] == "i01"
    assert client.get("/v1/twins/shop/b").json()["twin"]["ipt_cv"] is None  # NaN is not JSON
    r = client.get("/v1/twins/shop/zz")
    assert r.status_code == 404 and "no twin 'zz'" in r.json()["message"]
    assert client.get("/v1/twins/elsewhere/a").status_code == 422
    r = client.post("/v1/twins/shop", json={"ids": ["b", "zz", "a"]})
    assert [t["customer_id"] for t in r.json()["twins"]] == ["b", "a"] and r.json()["missing"] == ["zz"]


def test_health_ready_models_and_openapi(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"]
    assert {m["name"]: m["task"] for m in client.get("/v1/models").json()} == {"nbr": "next_basket", "outlook": "purchase_outlook"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/models/nbr/recommend", "/v1/models/outlook/outlook", "/v1/twins/{source}/{twin_id}", "/health", "/ready"} <= set(paths)
    assert "/v1/models/nbr/outlook" not in paths  # a task's endpoint appears only for models of that task


def test_request_logs_are_json_lines(client, caplog):
    with caplog.at_level(logging.INFO, logger="twins.serve"):
        client.post("/v1/models/nbr/recommend", json={"histories": [[], []]}, headers={"x-request-id": "abc"})
    record = next(r for r in caplog.records if r.getMessage() == "request")
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "request" and line["status"] == 200 and line["request_id"] == "abc"
    assert line["model"] == "nbr" and line["version"] == "1" and line["batch"] == 2 and line["ms"] > 0


def test_a_bug_answers_json_500_with_the_request_id_and_logs_the_traceback(folders, store, caplog, monkeypatch):
    from twins.runtime.bundle import NextBasketBundle
    from twins.runtime.next_basket_net import NeighbourNextBasketBundle

    def broken(self, *args, **kwargs):
        raise IndexError("boolean index did not match")

    for cls in (NextBasketBundle, NeighbourNextBasketBundle):
        monkeypatch.setattr(cls, "recommend", broken)
    with TestClient(create_app(folders, ["shop"], poll_seconds=0), raise_server_exceptions=False) as c, \
            caplog.at_level(logging.INFO, logger="twins.serve"):
        r = c.post("/v1/models/nbr/recommend", json={"histories": [[]]}, headers={"x-request-id": "bug-1"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "bug-1"
    assert r.json() == {"error": "internal", "request_id": "bug-1"}  # the message may hold paths or data: log only
    logged = json.loads(JsonFormatter().format(next(x for x in caplog.records if x.getMessage() == "internal_error")))
    assert logged["request_id"] == "bug-1" and "IndexError" in logged["traceback"] and logged["level"] == "ERROR"
    assert logged["error"] == "IndexError: boolean index did not match"
    status = json.loads(JsonFormatter().format(next(x for x in caplog.records if x.getMessage() == "request")))["status"]
    assert status == 500


def _append_byte(folder: Path) -> None:
    with (folder / "model.onnx").open("ab") as f:
        f.write(b"\0")


def _edit_manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({k: v for k, v in {**manifest, **changes}.items() if v is not None}))


@pytest.mark.parametrize(("tamper", "why"), [
    (_append_byte, "does not match model_sha256"),
    (lambda folder: _edit_manifest(folder, opset=16), "opset 16 is not supported"),
    (lambda folder: _edit_manifest(folder, vocabulary=None), "'vocabulary'"),
])
def test_a_tampered_bundle_is_refused_and_the_old_one_kept(client, folders, caplog, tamper, why):
    service = client.app.state.service
    tamper(folders["nbr"])
    with caplog.at_level(logging.INFO, logger="twins.serve"):
        service.refresh()
        service.refresh()  # a refused version is logged once
    refused = [r for r in caplog.records if r.getMessage() == "reload_refused"]
    assert len(refused) == 1 and why in refused[0].fields["error"] and refused[0].levelname == "ERROR"
    assert refused[0].fields["serving"] == "1"
    assert client.post("/v1/models/nbr/recommend", json={"histories": [[]]}).status_code == 200
    status = client.get("/ready").json()["models"]["nbr"]
    assert status["loaded"] and status["version"] == "1" and why in next(iter(status["refused"].values()))


def test_a_new_bundle_is_picked_up_and_a_wrong_task_refused(client, folders, nbr_bundle, outlook_bundle, caplog):
    service = client.app.state.service
    manifest = json.loads((nbr_bundle / "manifest.json").read_text())
    (folders["nbr"] / "manifest.json").write_text(json.dumps({**manifest, "version": "2"}))
    service.refresh()
    assert client.post("/v1/models/nbr/recommend", json={"histories": [[]]}).json()["version"] == "2"
    shutil.rmtree(folders["nbr"])
    shutil.copytree(outlook_bundle, folders["nbr"])
    os.utime(folders["nbr"] / "model.onnx")
    with caplog.at_level(logging.INFO, logger="twins.serve"):
        service.refresh()
    assert any("serves 'next_basket'" in r.fields["error"] for r in caplog.records if r.getMessage() == "reload_refused")
    assert client.post("/v1/models/nbr/recommend", json={"histories": [[]]}).json()["version"] == "2"


def test_twins_follow_the_latest_snapshot(client, store):
    store.write(pl.DataFrame({"customer_id": ["a"], "baskets": [7]}), "shop")
    client.app.state.service.refresh()
    assert client.get("/v1/twins/shop/a").json()["twin"]["baskets"] == 7


def test_startup_errors_name_the_problem(folders, tmp_path):
    with pytest.raises(ValueError, match="cannot load .*missing: cannot read the bundle .*No such file"):
        create_app({"x": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="model name"):
        create_app({"bad/name": str(folders["nbr"])})
    assert set(ROUTES) == set(TASKS)  # every task the runtime loads has an endpoint


def test_ready_is_503_without_a_snapshot(folders):
    with TestClient(create_app({"nbr": str(folders["nbr"])}, ["nothing"], poll_seconds=0)) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["twins"]["nothing"]["snapshot"] is None
        assert c.get("/v1/twins/nothing/a").status_code == 503


def test_cli_serve_needs_something_to_serve(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from twins.cli import app
    from twins.serve.logs import LOGGER

    monkeypatch.setattr(LOGGER, "handlers", [])   # `twins serve` installs its JSON handler; keep this process's
    monkeypatch.setattr(LOGGER, "level", LOGGER.level)
    out = CliRunner().invoke(app, ["serve"])
    assert out.exit_code == 2 and "nothing to serve" in out.output
    out = CliRunner().invoke(app, ["serve", "--model", f"x={tmp_path}"])
    assert out.exit_code == 2 and "cannot read the bundle" in out.output and "model.onnx" in out.output
