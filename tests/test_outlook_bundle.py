"""The purchase-outlook ONNX bundle: raw histories in, the same answers as the PyTorch models on the polars
summary out; defined answers for new, heavy and returning customers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from twins.data.schema import CANONICAL
from twins.evaluate.outlook import purchase_days, summarise
from twins.models.btyd import BetaGeoModel, GammaGammaModel
from twins.models.outlook_export import export_outlook
from twins.runtime import OutlookBundle, load

UTC = timezone.utc
START, AS_OF = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def market():
    """Histories of 400 customers with individual purchase rates, and the models fitted on their summary."""
    rng = np.random.default_rng(7)
    histories = {}
    for c in range(400):
        rate = rng.gamma(0.8, 1 / 10)                      # purchases per day
        n = rng.poisson(rate * 240) + 1
        times = sorted(START + timedelta(days=float(d)) for d in rng.uniform(0, 240, n))
        histories[f"c{c}"] = [(t, float(np.round(rng.gamma(2.0, 15.0), 2))) for t in times]
    rows = [{k: None for k in CANONICAL} | {"customer_id": c, "event_time": t, "amount": a, "event_type": "purchase"}
            for c, h in histories.items() for t, a in h]
    s = summarise(purchase_days(pl.DataFrame(rows, schema=CANONICAL).lazy()), AS_OF, 28.0)
    bg = BetaGeoModel(penalizer=0.01).fit(s["x"].to_numpy(), s["t_x"].to_numpy(), s["T"].to_numpy())  # no dropout here
    rep = s.filter(pl.col("x") > 0)
    gg = GammaGammaModel().fit(rep["x"].to_numpy(), rep["m"].to_numpy())
    return histories, s, bg, gg


@pytest.fixture(scope="module")
def bundle(market, tmp_path_factory) -> OutlookBundle:
    _, _, bg, gg = market
    return load(export_outlook(bg, gg, tmp_path_factory.mktemp("b") / "outlook", horizon_days=28.0))


def test_runtime_from_raw_histories_equals_models_on_polars_summary(market, bundle):
    histories, s, bg, gg = market
    got = bundle.score([histories[c] for c in s["customer_id"]], AS_OF)
    x, t_x, T = (s[c].to_numpy() for c in ("x", "t_x", "T"))
    m = s["m"].fill_null(0.0).to_numpy()
    want = bg.expected_purchases(4.0, x, t_x, T)
    np.testing.assert_allclose([g["expected_purchases"] for g in got], want, rtol=1e-9)
    np.testing.assert_allclose([g["p_alive"] for g in got], bg.p_alive(x, t_x, T), rtol=1e-9)
    np.testing.assert_allclose([g["p_any_purchase"] for g in got], bg.p_at_least_one(4.0, x, t_x, T), rtol=1e-9)
    np.testing.assert_allclose([g["expected_spend"] for g in got], want * gg.expected_spend_per_transaction(x, m), rtol=1e-9)
    assert all(g["known"] and g["next_purchase_low"] <= g["next_purchase"] for g in got)
    assert all(g["next_purchase"] <= g["next_purchase_high"] for g in got if g["next_purchase_high"] is not None)
    assert all(g["next_purchase_low"] >= AS_OF for g in got)


def test_defined_answers_for_edge_cases(bundle):
    heavy = [(AS_OF - timedelta(days=d), 12.0) for d in range(1, 301)]                  # a purchase every day
    same_day = [(AS_OF - timedelta(days=10) + timedelta(hours=h), 5.0) for h in range(5)]  # all on one UTC day
    returns = [(AS_OF - timedelta(days=30), 40.0), (AS_OF - timedelta(days=5), -10.0)]   # a refund on a later day
    zero = [(AS_OF - timedelta(days=20), 0.0), (AS_OF - timedelta(days=2), 0.0)]
    future_only = [(AS_OF + timedelta(days=3), 9.0)]                                      # first seen after as_of
    new, heavy_a, one_day, ret, zer, fut = bundle.score([[], heavy, same_day, returns, zero, future_only], AS_OF)
    for answer in (new, heavy_a, one_day, ret, zer, fut):
        assert all(np.isfinite(v) for k, v in answer.items() if isinstance(v, float))
        assert 0 <= answer["p_alive"] <= 1 and answer["expected_purchases"] >= 0
    assert not new["known"] and not fut["known"] and new["expected_purchases"] == pytest.approx(fut["expected_purchases"])
    assert heavy_a["expected_purchases"] > 10 * one_day["expected_purchases"]
    assert one_day["known"] and one_day["p_alive"] == 1.0                                  # BG/NBD: x = 0 is alive
    per_day = lambda a: a["expected_spend"] / a["expected_purchases"]  # noqa: E731
    # Gamma-Gamma needs positive spend: zero-value repeat days, like no repeat day (ret), get the population mean
    assert per_day(zer) == pytest.approx(per_day(ret)) and per_day(ret) == pytest.approx(per_day(new))


def test_bad_input_is_refused_clearly(bundle):
    with pytest.raises(TypeError, match="datetime or an ISO 8601 string"):
        bundle.score([[(12345, 1.0)]], AS_OF)
    with pytest.raises(ValueError, match="horizon_days must be > 0"):
        bundle.score([[]], AS_OF, horizon_days=0)
    assert bundle.score([[("2024-06-01T10:00:00", 3.0)]], "2024-07-01")[0]["known"]
