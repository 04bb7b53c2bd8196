"""TF-IDF word n-grams + one logistic regression per label: the strong lexical baseline, and the lexical
view of the exported ensemble (its features are computed by :class:`twins.runtime.lexical.TfidfFeatures`)."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from twins.emotion.linear import fit_per_label, sigmoid
from twins.evaluate.emotion import macro_f1, predict_labels, tune_thresholds
from twins.runtime.lexical import TfidfFeatures
from twins.runtime.text import clean_text


class TfidfLogReg:
    """``C`` may be a list: each value is fitted and the best by dev macro-F1 (dev-tuned thresholds) kept."""

    def __init__(self, ngram_range: tuple[int, int] = (1, 2), min_df: int = 2, C: float | list[float] = (1.0, 4.0, 16.0),
                 max_iter: int = 1000) -> None:
        self.ngram_range = tuple(ngram_range)
        self.min_df = min_df
        self.C = C
        self.max_iter = max_iter

    def fit(self, texts: list[str], y: np.ndarray, dev_texts: list[str] | None = None,
            dev_y: np.ndarray | None = None) -> "TfidfLogReg":
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(ngram_range=self.ngram_range, min_df=self.min_df, sublinear_tf=True,
                                     dtype=np.float64).fit([clean_text(t) for t in texts])
        self.features_ = TfidfFeatures({t: int(i) for t, i in vectorizer.vocabulary_.items()}, vectorizer.idf_,
                                       self.ngram_range)
        x = self._matrix(texts)
        grid = [self.C] if np.isscalar(self.C) else list(self.C)
        if len(grid) > 1 and dev_texts is None:
            raise ValueError("several C values need dev_texts and dev_y to choose between them")
        best_score, self.dev_scores_ = -1.0, {}
        for c in grid:
            coef, intercept = fit_per_label(x, y, c, max_iter=self.max_iter)
            if len(grid) > 1:
                p = sigmoid(self._matrix(dev_texts) @ coef.T + intercept)
                self.dev_scores_[c] = macro_f1(dev_y, predict_labels(p, tune_thresholds(dev_y, p)))
            if len(grid) == 1 or self.dev_scores_[c] > best_score:
                best_score, self.C_, self.coef_, self.intercept_ = self.dev_scores_.get(c, -1.0), c, coef, intercept
        return self

    def _matrix(self, texts: list[str]) -> sparse.csr_matrix:
        ids, values = self.features_.transform([clean_text(t) for t in texts])
        rows = np.repeat(np.arange(len(texts)), ids.shape[1])
        return sparse.csr_matrix((values.ravel().astype(np.float64), (rows, ids.ravel())),
                                 shape=(len(texts), len(self.features_.vocabulary)))

    def decision_function(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._matrix(texts) @ self.coef_.T, dtype=np.float32) + self.intercept_

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return sigmoid(self.decision_function(texts))

