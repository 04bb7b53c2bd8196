"""`twins run` with the outlook pipeline on a generated shop: holdout table, refitted bundles that the runtime
reproduces from raw purchase days, MLflow child runs with calibration plots, and parameter errors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from twins import api
from twins.cli import app
from twins.runtime import load

START = datetime(2023, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def shop(tmp_path) -> Path:
    """A year of orders by 120 customers with their own rates, some of them leaving, and some returns; a CSV log
    and its configs."""
    rng = np.random.default_rng(5)
    lines = ["order,customer,sku,qty,price,ts"]
    for c in range(120):
        rate, life = rng.gamma(1.5, 1 / 10), rng.exponential(500)
        for o, day in enumerate(np.sort(rng.uniform(0, min(life, 365), rng.poisson(rate * min(life, 365)) + 1))):
            when = START + timedelta(days=float(day))
            lines.append(f"c{c}-{o},c{c},p{o % 7},{1 + o % 3},{rng.gamma(3.0, 4.0):.2f},{when:%Y-%m-%d %H:%M:%S}")
            if o % 9 == 4:  # a return a day later, worth more than that day's purchases: net spend < 0 that day
                lines.append(f"r{c}-{o},c{c},p0,-4,30.00,{when + timedelta(days=1):%Y-%m-%d %H:%M:%S}")
    (tmp_path / "orders.csv").write_text("\n".join(lines) + "\n")
    segments = ["retail", "trade", "online"]
    (tmp_path / "customers.csv").write_text("customer,segment,size\n" + "".join(
        f"c{c},{segments[c % 3]},{'' if c % 10 == 0 else c % 7}\n" for c in range(0, 120, 1) if c % 13))
    (tmp_path / "shop.yaml").write_text(
        "name: shop\nfiles: [{path: orders.csv}]\n"
        "columns: {basket_id: order, customer_id: customer, item_id: sku, quantity: qty, unit_price: price, event_time: ts}\n"
        "validation: {not_after: 2030-01-01T00:00:00Z}\n"
        "customer_attributes: [{path: customers.csv, key: customer, columns: [segment, size]}]\n")
    (tmp_path / "outlook.yaml").write_text(
        "pipeline: outlook\nexperiment: shop-outlook\nsource: shop.yaml\nas_of: end\n"
        "params: {cutoff: 2023-10-01, horizon_days: 28, neural: {n_members: 1, max_epochs: 3, hidden: 16}}\n")
    return tmp_path


def test_outlook_pipeline_evaluates_exports_and_tracks(shop, twins_home):
    import mlflow

    catalog = api.run(shop / "outlook.yaml")
    rows = {r["model"]: r for r in catalog["rows"]}
    assert list(rows) == ["persistence", "rate_extrapolation", "bgnbd", "mbgnbd", "seasonal_bgnbd", "neural"]
    assert rows["neural"]["params"]["calendar"].startswith("flat: the history before the cut-off spans 39.0 weeks")
    assert all(r["customers"] == rows["neural"]["customers"] > 50 and r["count/mae"] >= 0 for r in rows.values())
    assert {"r", "alpha", "a", "b", "gg_p", "gg_q", "gg_gamma"} <= set(rows["bgnbd"]["params"])
    # the bundles are refitted on every purchase day; the pipeline checked the runtime against the models
    assert catalog["fitted"]["as_of"] > datetime(2023, 12, 1, tzinfo=timezone.utc)
    bundles = catalog["bundles"]
    assert sorted(Path(p).name for p in bundles.values()) == ["shop-outlook", "shop-outlook-net"]
    answer = load(bundles["neural"]).score([[("2023-12-20T10:00:00", 12.0)]], as_of="2024-01-01")[0]
    assert answer["known"] and answer["expected_purchases"] > 0 and answer["horizon_days"] == 28.0
    client = mlflow.MlflowClient()
    children = client.search_runs([mlflow.get_experiment_by_name("shop-outlook").experiment_id],
                                  f"tags.mlflow.parentRunId = '{catalog['run_id']}'")
    assert sorted(c.data.tags["model"] for c in children) == sorted(rows)
    neural = next(c for c in children if c.data.tags["model"] == "neural")
    assert neural.data.metrics["test/count/mae"] == pytest.approx(rows["neural"]["count/mae"])
    assert neural.data.params["neural.n_members"] == "1"
    plots = {a.path for a in client.list_artifacts(neural.info.run_id, "calibration")}
    assert plots == {"calibration/neural-count.png", "calibration/neural-spend.png"}
    assert {m.name for m in client.search_registered_models()} >= {"shop-outlook", "shop-outlook-net"}


@pytest.mark.parametrize(("override", "words"), [
    ("params.cutoff=null", "params.cutoff is required"),
    ("params.models=[prophet]", "params.models: unknown ['prophet']"),
    ("params.neural={layers: 3}", "layers"),
    ("params.cutoff=2031-01-01", "no customer buys both before it and in the 28 days after it"),
    ("params.horizon=7", "unknown key(s) ['horizon']"),
    ("params.horizon_days=30", "params.horizon_days must be whole weeks"),
    ("params.horizon_days=735", "whole weeks from 7 to 728 days (1 to 104 weeks) for the neural outlook, got 735 (e.g. 728)"),
    ("params.holidays=[25-12]", "holidays[0]: date '25-12' must be MM-DD"),
    ("params.spend=refunds", "params.spend must be one of ['net', 'gross']"),
    ("params.count_by=week", "params.count_by must be one of ['day', 'order']"),
    ("params.covariates=[shoe_size]", "params.covariates: ['shoe_size'] not among the customer attributes of source 'shop'"),
])
def test_outlook_pipeline_parameter_errors_name_the_key(shop, twins_home, override, words):
    out = CliRunner().invoke(app, ["run", str(shop / "outlook.yaml"), "--set", override])
    assert out.exit_code == 2 and words in out.output, out.output


def test_outlook_pipeline_for_the_analyst(shop, twins_home, capsys):
    """A horizon the neural outlook cannot answer is refused before the log is read; with as_of at the cut-off the
    holdout's neural outlook is the exported one (trained once); per-customer predictions are Parquet files;
    progress is printed while it trains."""
    import polars as pl

    out = CliRunner().invoke(app, ["run", str(shop / "outlook.yaml"), "--set", "params.horizon_days=183"])
    assert out.exit_code == 2 and "got 183 (e.g. 182)" in out.output and not (twins_home / "events" / "shop").exists()
    catalog = api.run(shop / "outlook.yaml", ["as_of=2023-10-01", "params.models=[persistence, bgnbd, neural]",
                                              "params.covariates=[segment, size]"])
    assert catalog["fitted"]["neural"] is catalog["holdout"]["models"]["neural"][0]
    # covariates: encoded from the attribute table, their effects reported, the bundle takes them per history
    effects = catalog["rows"][-1]["params"]
    assert {"effect.segment.mean", "effect.size.abs"} <= set(effects) and all(np.isfinite(effects[k]) for k in effects if k.startswith("effect."))
    bundle = load(catalog["bundles"]["neural"])
    assert [c["name"] for c in bundle.covariates] == ["segment", "size"] and bundle.covariates[1]["kind"] == "numeric"
    history = [[("2023-09-20T10:00:00", 12.0), ("2023-08-01T10:00:00", 30.0)]]
    kinds = [bundle.score(history, "2023-10-01", attributes=[a])[0]["expected_purchases"]
             for a in ({"segment": "retail", "size": 1}, {"segment": "online", "size": 6}, None)]
    assert len(set(kinds)) == 3
    with pytest.raises(ValueError, match="attributes has 2 entries for 1 histories"):
        bundle.score(history, "2023-10-01", attributes=[None, None])
    holdout = pl.read_parquet(catalog["predictions"]["holdout"])
    assert {"customer_id", "actual_count", "neural_count", "bgnbd_spend"} <= set(holdout.columns)
    assert holdout.height == catalog["rows"][0]["customers"]
    preds = pl.read_parquet(catalog["predictions"]["predictions"])
    assert {"neural_expected_purchases", "bgnbd_expected_spend", "neural_churn_risk"} <= set(preds.columns)
    assert preds["neural_expected_purchases"].is_finite().all()
    printed = capsys.readouterr().out
    assert "outlook: training the neural outlook" in printed and "trained once" in printed


def test_the_bundles_are_checked_bucket_by_bucket_and_each_answer_is_its_customers(shop, twins_home):
    """On a store of several buckets the runtime check reads one bucket's raw lines at a time; the per-customer
    predictions still line up with their customers: each equals the bundle's answer from that customer's lines."""
    import polars as pl

    from pipelines.outlook import raw_histories
    from twins.data.events import bucket_files
    from twins.data.source import load_source

    (shop / "shop.yaml").write_text((shop / "shop.yaml").read_text() + "buckets: 3\n")
    catalog = api.run(shop / "outlook.yaml", ["params.models=[bgnbd, neural]", "params.covariates=[segment]"])
    assert len(bucket_files(twins_home / "events" / "shop")) == 3
    preds = pl.read_parquet(catalog["predictions"]["predictions"])
    assert preds["customer_id"].to_list() == catalog["fitted"]["summary"]["customer_id"].to_list()
    when, some = catalog["fitted"]["as_of"], preds["customer_id"].to_list()[::17]
    histories = raw_histories(load_source(shop / "shop.yaml"), when, some)
    segments = pl.read_csv(shop / "customers.csv", schema_overrides={"size": pl.String})
    segment = dict(zip(segments["customer"], segments["segment"]))
    for name, extra in (("bgnbd", {}), ("neural", {"attributes": [{"segment": segment.get(c)} if c in segment else None
                                                                    for c in some]})):
        got = [a["expected_purchases"] for a in load(catalog["bundles"][name]).score(histories, when, **extra)]
        assert preds.filter(pl.col("customer_id").is_in(some))[f"{name}_expected_purchases"].to_list() == got
