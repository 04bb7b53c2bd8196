"""Machine-vs-human detection on a small simulated mix: machines score above people, the sklearn contract holds."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from twins.models.machine_detector import MachineDetector, machine_likeness
from twins.sim import MarketConfig, simulate
from twins.sim.config import Telemetry
from twins.twin.behaviour import TIMING, behaviour_features


@pytest.fixture(scope="module")
def mix() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Behaviour features with a ``kind`` (bound/adaptable/autonomous/human) and the events they came from."""
    market = simulate(MarketConfig(seed=5, n_machines=300, days=180, horizon_days=0, humans={"n": 150},
                                   telemetry=Telemetry(share={"bound": 0.0, "adaptable": 0.0, "autonomous": 0.0})))
    events = market.events()
    kinds = market.truth().select(pl.col("machine_id").alias("customer_id"), "kind")
    feats = behaviour_features(events).join(kinds, on="customer_id", how="left").with_columns(
        pl.col("kind").fill_null("human"))
    return feats, events


def _split(feats: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    train = np.random.default_rng(0).random(feats.height) < 0.7
    return feats.filter(pl.Series(train)), feats.filter(pl.Series(~train))


@pytest.mark.parametrize("model", ["boosting", "logistic"])
def test_held_out_machines_score_above_people(mix, model):
    train, test = _split(mix[0])
    det = MachineDetector(model=model).fit(train, (train["kind"] != "human").to_numpy())
    score = det.predict_proba(test)[:, 1]
    kind = test["kind"].to_numpy()
    for k in ("bound", "adaptable", "autonomous"):
        pick = np.isin(kind, [k, "human"])
        assert roc_auc_score(kind[pick] == k, score[pick]) >= 0.95, k
    assert set(det.predict(test)) <= {0, 1}


def test_sklearn_contract_and_errors(mix):
    train, test = _split(mix[0])
    det = MachineDetector(features=TIMING, max_iter=50)
    with pytest.raises(RuntimeError, match="not fitted"):
        det.predict_proba(test)
    twin = clone(det)
    assert twin.get_params() == det.get_params() and not hasattr(twin, "estimator_")
    assert det.fit(train, (train["kind"] != "human").to_numpy()) is det and det.n_features_in_ == len(TIMING)
    with pytest.raises(ValueError, match="missing"):
        det.predict_proba(test.drop("weekend_share"))
    with pytest.raises(ValueError, match="model must be"):
        MachineDetector(model="forest").fit(train, np.ones(train.height))


def test_machine_likeness_scores_every_customer_with_enough_orders(mix):
    feats, events = mix
    det = MachineDetector().fit(feats, (feats["kind"] != "human").to_numpy())
    scores = machine_likeness(det, events).join(feats.select("customer_id", "kind"), on="customer_id")
    assert scores.height == feats.height and scores["machine_score"].is_between(0, 1).all()
    by_kind = dict(scores.group_by("kind").agg(pl.col("machine_score").mean()).iter_rows())
    assert by_kind["human"] < 0.1 and min(by_kind[k] for k in ("bound", "adaptable", "autonomous")) > 0.9
