"""Issue 19: per-file mappings in one source, return rules on purchase rows only, machine series without labels,
stock-only and usage-only readings in the forecaster's features and the runtime, unusable readings counted."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from twins.config import ConfigError
from twins.data.ingest import ingest
from twins.data.schema import CANONICAL
from twins.data.source import SourceConfig
from twins.models.replenishment import histories
from twins.runtime.replenishment import history
from twins.runtime.replenishment_features import FEATURES, History, features, usage_from_stock
from twins.twin.machine import machine_series


def _source(tmp_path, **extra) -> SourceConfig:
    (tmp_path / "orders.csv").write_text("client,at,sku,units\nc1,2025-01-01,a,5\nc1,2025-01-02,a,-2\n")
    (tmp_path / "tele.csv").write_text("dev,at,sku,kind,value\nc1,2025-01-01,a,stock,-3\nc1,2025-01-02,a,usage,4\n")
    tree = {"name": "log", "base_dir": str(tmp_path), "files": [
        {"path": "orders.csv", "columns": {"customer_id": "client", "event_time": "at", "item_id": "sku",
                                           "quantity": "units"}},
        {"path": "tele.csv", "event_type": "telemetry", "constants": {"channel": "iot", "site": "north"},
         "columns": {"customer_id": "dev", "event_time": "at", "item_id": "sku", "text": "kind", "quantity": "value"}}]}
    return SourceConfig(**(tree | extra))


def test_one_source_maps_each_file_and_returns_are_purchases_only(tmp_path):
    report = ingest(_source(tmp_path), tmp_path / "out", not_after=datetime(2030, 1, 1, tzinfo=timezone.utc))
    ev = pl.read_parquet(tmp_path / "out" / "events.parquet").sort("event_type", "event_time")
    assert report.accepted == 4 and report.returns == 1
    assert ev["event_type"].to_list() == ["purchase", "return", "telemetry", "telemetry"]
    assert ev["quantity"].to_list() == [5.0, 2.0, -3.0, 4.0]  # a negative reading keeps its sign: not a return
    assert ev["channel"].to_list()[2:] == ["iot", "iot"] and ev["site"].to_list() == [None, None, "north", "north"]


def test_per_file_mapping_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"files\[1\] \(tele.csv\): telemetry rows need columns.quantity"):
        _source(tmp_path, files=[{"path": "orders.csv", "columns": {"customer_id": "c", "event_time": "t", "item_id": "i"}},
                                 {"path": "tele.csv", "event_type": "telemetry", "columns": {"customer_id": "d", "event_time": "t"}}])
    with pytest.raises(ValueError, match="event_type or constants.event_type, not both"):
        _source(tmp_path, files=[{"path": "o.csv", "event_type": "telemetry", "constants": {"event_type": "purchase"}}])
    with pytest.raises((ValueError, ConfigError), match="columns"):  # without per-file columns the source needs them
        SourceConfig(name="x", files=[{"path": "o.csv"}])


def _log(rows: list[tuple]) -> pl.DataFrame:
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    return pl.DataFrame([{k: None for k in CANONICAL} | {"customer_id": c, "item_id": i, "event_time": start + timedelta(days=d),
                                                         "event_type": e, "quantity": q, "text": x, "actor": a,
                                                         "basket_id": f"{c}{d}"}
                         for c, i, d, e, q, x, a in rows], schema=CANONICAL)


def test_machine_series_without_labels_by_regularity_hint_or_detector():
    rng = np.random.default_rng(0)
    rows = [("m1", "ink", d, "purchase", 10.0, None, "unknown") for d in range(0, 100, 10)]
    rows += [("m2", "ink", d, "purchase", 10.0, None, "human") for d in range(0, 100, 10)]  # a hint wins
    rows += [("h1", f"g{k}", float(d), "purchase", 1.0, None, "unknown")
             for d in np.cumsum(rng.exponential(6, 15)) for k in rng.choice(30, 4, replace=False)]
    rows += [("h1", "milk", d, "purchase", 1.0, None, "unknown") for d in range(0, 100, 7)]  # one habit among many
    series = machine_series(_log(rows))
    assert series.rows() == [("m1", "ink", "regularity")]
    scores = pl.DataFrame({"customer_id": ["h1", "m1"], "machine_score": [0.9, 0.1]})
    assert set(machine_series(_log(rows), scores)["customer_id"]) == {"h1"}


def test_stock_only_readings_become_a_usage_counter():
    t = np.arange(0.0, 60)  # 2 units a day, an order of 30 when the stock falls to 10, delivered two days later
    stock, orders, level, due = [], [], 40.0, {}
    for day in t:
        level += due.pop(day, 0.0)
        stock.append(level)
        level -= 2.0
        if level <= 10 and not any(d > day for d in due):
            orders.append(day + 0.5)
            due[day + 2] = 30.0
    order_t = np.array(orders)
    usage = usage_from_stock(t, np.array(stock), order_t, np.full(len(order_t), 30.0))
    assert np.allclose(np.diff(usage), 2.0)
    h = History(order_t, np.full(len(order_t), 30.0), np.full(len(order_t), np.nan), t, np.array(stock), np.full(60, np.nan))
    x = dict(zip(FEATURES, features(h, 59.5)))
    assert x["has_telemetry"] == 1.0 and np.exp(x["log_usage_rate"]) == pytest.approx(2.0)
    counter = History(h.t, h.q, h.promised, t, np.full(60, np.nan), 2.0 * t)  # a usage counter only
    y = dict(zip(FEATURES, features(counter, 59.5)))
    assert y["has_telemetry"] == 1.0 and np.isfinite(list(y.values())).all()
    raw = history([(datetime(2025, 1, 1) + timedelta(days=d), 30.0) for d in order_t],
                  [(datetime(2025, 1, 1) + timedelta(days=d), s, None) for d, s in zip(t, stock)])
    assert np.allclose(raw.usage[1:] - raw.usage[:-1], 2.0)


def test_unusable_readings_are_counted():
    rows = [("m1", "ink", d, "purchase", 10.0, None, "machine") for d in range(0, 50, 10)]
    rows += [("m1", "ink", d + 0.5, "telemetry", 30.0 - d % 10, "stock", "machine") for d in range(45)]
    rows += [("m1", "ink", 46, "telemetry", -1.0, "stock", "machine"), ("m1", "ink", 47, "telemetry", 5.0, "temp", "machine"),
             ("m1", "toner", 47, "telemetry", 5.0, "stock", "machine")]
    skipped: dict[str, int] = {}
    hist = histories(_log(rows), skipped=skipped)
    assert skipped == {"negative_stock": 1, "unknown_kind": 1} and len(hist["m1"].tel_t) == 45


def test_detect_fits_a_calibrated_detector_on_market_families_and_saves_it(tmp_path):
    from typer.testing import CliRunner

    from twins.cli import app
    from twins.models.machine_detector import labelled_features, load_detector
    from twins.twin.behaviour import ITEM

    out = tmp_path / "det.skops"
    result = CliRunner().invoke(app, ["--threads", "1", "detect", "--out", str(out), "--families", "base,multi",
                                      "--seeds", "1", "--machines", "60", "--people", "30"])
    assert result.exit_code == 0, result.output
    detector = load_detector(out)
    assert set(ITEM) <= set(detector.features) and detector.platt_ is not None
    X, y = labelled_features("noisy", 5, 60, 30)  # a family it never saw
    p = detector.predict_proba(X)[:, 1]
    assert p[y == 1].mean() > 0.8 and p[y == 0].mean() < 0.2


def test_forecaster_holds_features_inside_the_training_range():
    from twins.models.replenishment_torch import ReplenishmentForecaster

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, len(FEATURES)))
    T = np.exp(X[:, 0]) * 5
    model = ReplenishmentForecaster(epochs=2, hidden=8).fit(X, T, np.ones(400), np.zeros(400, bool), 120.0)
    far = X[:1].copy()
    far[0, 1] = 1e4  # a machine unlike any training one (e.g. a stock that covers decades)
    edge = far.copy()
    edge[0, 1] = X[:, 1].max()
    assert model.predict(far)["time"] == pytest.approx(model.predict(edge)["time"])
    assert np.isfinite(model.predict(far * 1e3)["time_high"]).all()


def test_service_takes_readings_with_stock_or_usage_left_out():
    from twins.serve.tasks import ReplenishmentRequest

    body = ReplenishmentRequest.model_validate({
        "orders": [[{"time": "2025-01-03T00:00:00Z", "quantity": 40}]], "as_of": "2025-02-01",
        "readings": [[{"time": "2025-01-04T00:00:00Z", "stock": 12.0}, {"time": "2025-01-05T00:00:00Z", "usage": 80.0}]]})
    assert [(r.stock, r.usage) for r in body.readings[0]] == [(12.0, None), (None, 80.0)]


def test_training_rows_share_features_and_clock_days_are_exact():
    from twins.models.replenishment import samples
    from twins.runtime.replenishment_features import active_days, day_reached

    t = np.arange(0, 200.0, 9.5)
    hist = {"m": History(t, np.full(len(t), 4.0), np.full(len(t), np.nan))}
    cache: dict = {}
    first = samples(hist, ["m"], [50.0, 100.0], 120.0, until=110.0, cache=cache)
    again = samples(hist, ["m"], [50.0, 100.0, 150.0], 120.0, until=190.0, cache=cache)
    assert len(cache) == 3 and np.array_equal(again.X[:2], first.X)
    assert np.array_equal(again.X, samples(hist, ["m"], [50.0, 100.0, 150.0], 120.0, until=190.0).X)
    for day0, need in [(0, 0.3), (3, 5.0), (5, 12.5), (6, 40.0), (10, 0.0)]:
        d = day_reached(day0, need, True)
        assert active_days(day0, d, True) >= need - 1e-6 > active_days(day0, d - 1, True) or d == day0 + 1


def test_the_broad_training_prior_spans_the_families_and_stays_out_of_them():
    from twins.sim.family import FAMILIES, PRIOR, family_config, family_market

    assert set(PRIOR).isdisjoint(FAMILIES)  # a training prior, never a held-out family
    configs = [family_config("broad", seed, 10, 5) for seed in range(40)]
    shares = [c.policy.periodic_share for c in configs]
    noise = [c.consumption.noise_sigma for c in configs]
    assert min(shares) < 0.1 < 0.9 < max(shares) and min(noise) < 0.2 < 0.8 < max(noise)
    assert family_config("broad", 3, 10, 5) == configs[3]
    with pytest.raises(ValueError, match="unknown market family 'nope'"):
        family_config("nope", 0, 10, 5)
    _, events, truth = family_market("broad", 0, 40, 0, days=60, horizon_days=10)
    assert truth["customer_id"].n_unique() < truth.height  # its multi-item share groups machines under one id
    assert events.filter(pl.col("event_type") == "purchase").height > 0
