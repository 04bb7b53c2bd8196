"""The replenishment forecaster's ONNX bundle: parity with PyTorch (log space, within 1e-4), and the torch-free runtime fed raw orders and
readings answers exactly as the Python forecaster on held-out simulated machines."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
import torch

from twins.models.replenishment import histories, samples
from twins.models.replenishment_export import export_replenishment
from twins.models.replenishment_torch import ReplenishmentForecaster
from twins.runtime import BundleError, ReplenishmentBundle, load
from twins.runtime.replenishment import LOG_OUTPUTS
from twins.sim import MarketConfig, simulate

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*axis name:UserWarning")]
DAY_S = 86_400
HORIZON = 40.0


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A small market, a forecaster (two nets averaged) trained on 70 % of its machines, its bundle, and the held-out
    machines."""
    torch.set_num_threads(1)
    market = simulate(MarketConfig(seed=11, n_machines=240, days=150, horizon_days=int(HORIZON), humans={"n": 0}))
    events = market.events()
    hist = histories(events)
    as_of = market.as_of.timestamp() / DAY_S
    ids = sorted(m for m, h in hist.items() if np.sum(h.t < as_of) >= 3)
    train, test = ids[: int(0.7 * len(ids))], ids[int(0.7 * len(ids)):]
    start = market.config.start.timestamp() / DAY_S
    rows = samples(hist, train, [start + d for d in range(40, 151, 10)], HORIZON)
    model = ReplenishmentForecaster(hidden=16, epochs=3, members=2, device="cpu").fit(rows.X, rows.T, rows.Q, rows.censored, HORIZON)
    model.scale_intervals(time=1.3, quantity=0.9).exact_periods().interval_blend(0.5)  # all travel in the graph
    path = export_replenishment(model, tmp_path_factory.mktemp("repl") / "bundle")
    return market, events, hist, test, model, path


def test_bundle_loads_as_replenishment_with_parity_at_several_batch_sizes(fitted):
    market, _, hist, test, model, path = fitted
    bundle = load(path)
    assert isinstance(bundle, ReplenishmentBundle) and bundle.horizon_days == HORIZON and bundle.interval == 0.8
    X = samples(hist, test, [market.as_of.timestamp() / DAY_S], HORIZON).X
    for n in (1, 7, len(X)):
        with torch.no_grad():
            log_t, log_q = model.net_.log_quantiles(torch.as_tensor(X[:n], dtype=torch.float32))
        got = bundle.run({"features": X[:n].astype(np.float32)})
        for k, name in enumerate(LOG_OUTPUTS):
            want = (log_t if k < 3 else log_q)[:, k % 3].numpy()
            np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-4, err_msg=name)


def _raw(events: pl.DataFrame, machine: str) -> tuple[list[tuple], list[tuple]]:
    """A machine's orders ``(time, quantity, promised_days)`` and readings ``(time, stock, usage)`` as plain tuples."""
    mine = events.filter(pl.col("customer_id") == machine)
    orders = mine.filter(pl.col("event_type") == "purchase").select("event_time", "quantity", "promised_days").rows()
    tele = mine.filter(pl.col("event_type") == "telemetry")
    readings = (tele.filter(pl.col("text") == "stock").select("event_time", pl.col("quantity").alias("stock"))
                .join(tele.filter(pl.col("text") == "usage").select("event_time", pl.col("quantity").alias("usage")),
                      on="event_time").sort("event_time").rows())
    return orders, readings


def test_runtime_from_raw_orders_and_readings_equals_the_python_forecaster(fitted):
    market, events, hist, test, model, path = fitted
    as_of = market.as_of
    raw = [_raw(events, m) for m in test]
    assert any(r for _, r in raw) and not all(r for _, r in raw)      # machines with and without readings
    got = load(path).forecast([o for o, _ in raw], as_of.isoformat(), readings=[r for _, r in raw])
    want = model.predict(samples(hist, test, [as_of.timestamp() / DAY_S], HORIZON).X)
    assert all(a["known"] for a in got)
    for ours, theirs in (("days", "time"), ("days_low", "time_low"), ("days_high", "time_high"),
                         ("quantity", "quantity"), ("quantity_low", "quantity_low"), ("quantity_high", "quantity_high")):
        np.testing.assert_allclose([a[ours] for a in got], want[theirs], rtol=1e-5, atol=1e-4, err_msg=ours)
    first = got[0]
    assert first["next_order"] == as_of + timedelta(days=first["days"])
    assert first["next_order_low"] <= first["next_order"] <= first["next_order_high"]


def test_short_histories_mismatched_readings_and_foreign_bundles(fitted, tmp_path):
    market, events, _, test, _, path = fitted
    bundle = load(path)
    orders, _ = _raw(events, test[0])
    few = bundle.forecast([orders[:2], orders], market.as_of)
    assert few[0]["known"] is False and few[0]["days"] is None and few[1]["known"] is True
    assert bundle.forecast([orders], market.as_of)[0]["days"] == bundle.forecast([orders[::-1]], market.as_of)[0]["days"]
    with pytest.raises(ValueError, match="one entry per machine"):
        bundle.forecast([orders, orders], market.as_of, readings=[[]])
    broken = [(when, -5.0, promised) for when, _, promised in orders]
    with pytest.raises(ValueError, match=r"machine 1: orders\[0\]: quantity -5.0 must be a finite number >= 0"):
        bundle.forecast([orders, broken], market.as_of)
    with pytest.raises(ValueError, match=r"readings\[0\]"):
        bundle.forecast([orders], market.as_of, readings=[[(orders[0][0], float("inf"), 1.0)]])
    # usage that runs backwards (noisy meters) and one-day histories still get finite answers
    backwards = [(orders[-1][0] - timedelta(days=d), 10.0, 100.0 - d) for d in range(30, 0, -1)]
    same_day = [(orders[0][0] + timedelta(hours=h), 5.0, None) for h in range(3)]
    for answer in bundle.forecast([orders, same_day], market.as_of, readings=[backwards, []]):
        assert np.isfinite([answer[k] for k in ("days", "days_low", "days_high", "quantity")]).all()
    other = shutil.copytree(path, tmp_path / "other")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["features"] = manifest["features"][:-1]
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="features"):
        load(other)


def test_service_answers_replenishment_requests_like_the_runtime(fitted):
    from fastapi.testclient import TestClient

    from twins.serve import create_app

    market, events, _, test, _, path = fitted
    raw = [_raw(events, m) for m in test[:3]]
    body = {"orders": [[{"time": t.isoformat(), "quantity": q, "promised_days": p} for t, q, p in o] for o, _ in raw],
            "readings": [[{"time": t.isoformat(), "stock": s, "usage": u} for t, s, u in r] for _, r in raw],
            "as_of": market.as_of.isoformat()}
    with TestClient(create_app({"fleet": path}, [], poll_seconds=0)) as client:
        r = client.post("/v1/models/fleet/replenishment", json=body)
        assert r.status_code == 200, r.text
        want = load(path).forecast([o for o, _ in raw], market.as_of, [r_ for _, r_ in raw])
        assert [a["quantity"] for a in r.json()["results"]] == pytest.approx([a["quantity"] for a in want])
        bad = client.post("/v1/models/fleet/replenishment", json={**body, "readings": body["readings"][:1]})
        assert bad.status_code == 422 and "one list per machine" in bad.text
