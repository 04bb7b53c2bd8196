"""Machine-vs-human detection: a classifier over per-customer behaviour features (``twins.twin.behaviour``) whose
probability is the customer's machine-likeness score.

Two well-regularised models: shallow gradient-boosted trees (``boosting``: sklearn's
``HistGradientBoostingClassifier``, depth 3, L2, early stopping on a held-out tenth) and a standardised logistic
regression (``logistic``). ``features`` picks the behaviour columns the detector reads (e.g. timing only).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Self

import numpy as np
import polars as pl
import skops.io
import sklearn
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from twins.twin.behaviour import BEHAVIOUR_FEATURES, behaviour_features

MODELS = ("boosting", "logistic")
#: what a detector file may hold beyond the types skops trusts by default (scikit-learn's estimators, numpy)
TRUSTED = ("twins.models.machine_detector.MachineDetector",
           "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor")


class MachineDetector(ClassifierMixin, BaseEstimator):
    """``fit(features frame, is_machine)``; ``predict_proba`` -> [n, 2] (column 1: P(machine))."""

    def __init__(self, model: str = "boosting", features: tuple[str, ...] = BEHAVIOUR_FEATURES, max_depth: int = 3,
                 learning_rate: float = 0.05, max_iter: int = 300, l2_regularization: float = 1.0,
                 min_samples_leaf: int = 20, C: float = 1.0, seed: int = 0) -> None:
        self.model = model
        self.features = features
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.l2_regularization = l2_regularization
        self.min_samples_leaf = min_samples_leaf
        self.C = C
        self.seed = seed

    def _matrix(self, X: pl.DataFrame) -> np.ndarray:
        missing = [f for f in self.features if f not in X.columns]
        if missing:
            raise ValueError(f"behaviour features {missing} are missing; compute them with "
                             "twins.twin.behaviour.behaviour_features")
        return X.select(self.features).to_numpy().astype(np.float64)

    def fit(self, X: pl.DataFrame, y: np.ndarray) -> Self:
        """``X``: behaviour features (one row per customer); ``y``: 1 for machines, 0 for people."""
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        y = np.asarray(y).astype(int)
        if self.model == "boosting":
            est = HistGradientBoostingClassifier(
                max_depth=self.max_depth, learning_rate=self.learning_rate, max_iter=self.max_iter,
                l2_regularization=self.l2_regularization, min_samples_leaf=self.min_samples_leaf,
                early_stopping=True, validation_fraction=0.1, n_iter_no_change=20, random_state=self.seed)
        else:
            est = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=2000))
        self.estimator_ = est.fit(self._matrix(X), y)
        self.platt_ = None
        self.classes_ = self.estimator_.classes_
        self.n_features_in_ = len(self.features)
        return self

    def calibrate(self, X: pl.DataFrame, y: np.ndarray) -> Self:
        """Platt scaling on held-out customers (``X``, ``y``: validation markets, never the training ones): a
        logistic regression of ``y`` on the logit of the raw score, so that a score reads as P(machine)."""
        self.platt_ = None
        raw = self._logit(self.predict_proba(X)[:, 1])
        fit = LogisticRegression(C=1e4, max_iter=1000).fit(raw[:, None], np.asarray(y).astype(int))
        self.platt_ = (float(fit.coef_[0, 0]), float(fit.intercept_[0]))
        return self

    @staticmethod
    def _logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    def predict_proba(self, X: pl.DataFrame) -> np.ndarray:
        """[n, 2]; column 1 is P(machine), calibrated when ``calibrate`` was called."""
        if not hasattr(self, "estimator_"):
            raise RuntimeError("MachineDetector is not fitted; call fit first")
        p = self.estimator_.predict_proba(self._matrix(X))
        if getattr(self, "platt_", None) is not None:
            slope, intercept = self.platt_
            p1 = 1 / (1 + np.exp(-(slope * self._logit(p[:, 1]) + intercept)))
            p = np.column_stack([1 - p1, p1])
        return p

    def predict(self, X: pl.DataFrame) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


def machine_likeness(detector: MachineDetector, events: pl.DataFrame | pl.LazyFrame, min_orders: int = 3) -> pl.DataFrame:
    """``customer_id, n_orders, machine_score`` (P(machine)) for every customer with ``min_orders`` orders."""
    feats = behaviour_features(events, min_orders)
    score = detector.predict_proba(feats)[:, 1] if feats.height else np.empty(0)
    return feats.select("customer_id", "n_orders").with_columns(pl.Series("machine_score", score, pl.Float64))


def save_detector(detector: MachineDetector, path: str | Path) -> Path:
    """Write a fitted detector as a skops file (written atomically; ``.skops`` by convention). Unlike pickle or
    joblib, reading it back runs no code from the file (``load_detector``)."""
    if not hasattr(detector, "estimator_"):
        raise ValueError("the detector is not fitted; fit it before saving")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    skops.io.dump({"detector": detector, "sklearn": sklearn.__version__}, tmp)
    tmp.replace(path)
    return path


def load_detector(path: str | Path) -> MachineDetector:
    """Read a detector written by ``save_detector``. skops builds only the types it trusts (scikit-learn's, numpy's)
    and ``TRUSTED``; a file naming any other type is refused before anything is built."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such detector file; write one with twins.models.machine_detector.save_detector "
                                "(python -m experiments.detect_machines saves .twins/models/machine-detector.skops)")
    try:
        foreign = sorted(set(skops.io.get_untrusted_types(file=path)) - set(TRUSTED))
        saved = None if foreign else skops.io.load(path, trusted=list(TRUSTED))
    except Exception as error:  # zipfile, json and skops raise many types for a damaged or foreign file
        raise ValueError(f"{path}: cannot be read as a detector file ({error!r}); write it with save_detector (files "
                         "from before twins saved detectors with skops were joblib pickles: refit and save again)") from None
    if foreign:
        raise ValueError(f"{path}: names types a machine detector does not hold ({', '.join(foreign)}); refused "
                         "without loading. Write the file with save_detector")
    if not isinstance(saved, dict) or not isinstance(saved.get("detector"), MachineDetector):
        raise ValueError(f"{path}: not a twins machine detector file; write it with save_detector")
    if saved.get("sklearn") != sklearn.__version__:
        warnings.warn(f"{path}: saved with scikit-learn {saved.get('sklearn')}, loaded with {sklearn.__version__}; "
                      "refit it if the scores look wrong", stacklevel=2)
    return saved["detector"]


def labelled_features(family: str, seed: int, n_machines: int, n_people: int) -> tuple[pl.DataFrame, np.ndarray]:
    """Behaviour features of one simulated market of ``family`` (``twins.sim.family``; observation window, no
    telemetry) and each customer's label (1: a machine)."""
    from twins.sim.family import family_market

    market, events, truth = family_market(family, seed, n_machines, n_people, horizon_days=0, telemetry=False)
    feats = behaviour_features(events.filter(pl.col("event_time") < market.as_of))
    return feats, feats["customer_id"].is_in(truth["customer_id"].unique().implode()).to_numpy().astype(int)


def train_on_families(families: list[str], seeds: list[int], n_machines: int = 400, n_people: int = 200,
                      model: str = "boosting") -> MachineDetector:
    """A detector fitted on one market per (family, seed) and Platt-calibrated on one more market per family
    (seed + 10,000), never seen in fitting."""
    fit = [labelled_features(f, s, n_machines, n_people) for f in families for s in seeds]
    val = [labelled_features(f, seeds[0] + 10_000, n_machines, n_people) for f in families]
    detector = MachineDetector(model=model).fit(pl.concat([x for x, _ in fit]), np.concatenate([y for _, y in fit]))
    return detector.calibrate(pl.concat([x for x, _ in val]), np.concatenate([y for _, y in val]))
