"""TF-IDF features in plain Python + numpy, identical to scikit-learn's ``TfidfVectorizer`` with
``lowercase=True``, the default token pattern, word n-grams, ``sublinear_tf``, smooth idf and L2 norm.

Used by the emotion bundle's runtime (no scikit-learn at serving time) and checked against scikit-learn
in the tests. Features come out sparse, as (column ids, values) padded to the longest row.
"""

import math
import re

import numpy as np

TOKEN = re.compile(r"(?u)\b\w\w+\b")


class TfidfFeatures:
    """``vocabulary``: term -> column; ``idf``: per column; ``ngram_range``: (min n, max n)."""

    def __init__(self, vocabulary: dict[str, int], idf: np.ndarray, ngram_range: tuple[int, int] = (1, 2)) -> None:
        self.vocabulary = vocabulary
        self.idf = np.asarray(idf, dtype=np.float64)
        self.ngram_range = tuple(ngram_range)

    def terms(self, text: str) -> list[str]:
        tokens = TOKEN.findall(text.lower())
        low, high = self.ngram_range
        return [" ".join(tokens[i:i + n]) for n in range(low, high + 1) for i in range(len(tokens) - n + 1)]

    def row(self, text: str) -> tuple[list[int], list[float]]:
        counts: dict[int, int] = {}
        for term in self.terms(text):
            column = self.vocabulary.get(term)
            if column is not None:
                counts[column] = counts.get(column, 0) + 1
        columns = sorted(counts)
        values = [(1.0 + math.log(counts[c])) * self.idf[c] for c in columns]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        return columns, [v / norm for v in values]

    def transform(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, values float32), shape (n, max terms per text, at least 1); padding is id 0, value 0."""
        rows = [self.row(t) for t in texts]
        width = max([1] + [len(c) for c, _ in rows])
        ids = np.zeros((len(texts), width), dtype=np.int64)
        values = np.zeros((len(texts), width), dtype=np.float32)
        for i, (c, v) in enumerate(rows):
            ids[i, : len(c)] = c
            values[i, : len(v)] = v
        return ids, values
