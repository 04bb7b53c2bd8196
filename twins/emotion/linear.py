"""One logistic regression per label (one-vs-rest), as plain (coef, intercept) arrays that export anywhere."""

from __future__ import annotations

import numpy as np


def fit_per_label(x, y: np.ndarray, C: float, solver: str = "liblinear", max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(coef (n_labels, n_features), intercept (n_labels,)) float32. A label that is constant in ``y`` (no
    positive in a small slice) gets zero weights and the logit of its clipped training prevalence."""
    from sklearn.linear_model import LogisticRegression

    coef = np.zeros((y.shape[1], x.shape[1]), dtype=np.float32)
    intercept = np.zeros(y.shape[1], dtype=np.float32)
    for j in range(y.shape[1]):
        if y[:, j].min() == y[:, j].max():
            rate = np.clip(y[:, j].mean(), 1e-4, 1 - 1e-4)
            intercept[j] = np.log(rate / (1 - rate))
            continue
        model = LogisticRegression(C=C, solver=solver, max_iter=max_iter).fit(x, y[:, j])
        coef[j], intercept[j] = model.coef_[0], model.intercept_[0]
    return coef, intercept


def sigmoid(z: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))).astype(np.float32)
