"""Frozen all-MiniLM-L6-v2 sentence embeddings (mean-pooled) + one logistic regression per label: the
baseline that shows what fine-tuning adds."""

from __future__ import annotations

import numpy as np
import torch

from twins.emotion.encoder import Encoder, pretrained_dir
from twins.emotion.linear import fit_per_label, sigmoid
from twins.emotion.tokenize import encode, load_tokenizer
from twins.runtime.text import by_length


class FrozenEncoderLogReg:
    def __init__(self, max_length: int = 64, C: float = 1.0, batch_size: int = 128) -> None:
        self.max_length = max_length
        self.C = C
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled embeddings (n, 384) from the pretrained encoder, no gradient."""
        if not hasattr(self, "encoder_"):
            self.encoder_ = Encoder.pretrained().eval()
            self.tokenizer_ = load_tokenizer(pretrained_dir() / "tokenizer.json", self.max_length)
        out = np.zeros((len(texts), self.encoder_.config.hidden), dtype=np.float32)
        with torch.no_grad():
            for rows, input_ids, mask in by_length(encode(self.tokenizer_, texts), self.batch_size):
                out[rows] = self.encoder_(torch.from_numpy(input_ids), torch.from_numpy(mask)).numpy()
        return out

    def fit(self, texts: list[str], y: np.ndarray) -> "FrozenEncoderLogReg":
        x = self.embed(texts)
        self.mean_, self.scale_ = x.mean(0), x.std(0) + 1e-6
        x = (x - self.mean_) / self.scale_
        self.coef_, self.intercept_ = fit_per_label(x, y, self.C, solver="lbfgs", max_iter=2000)
        return self

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        x = (self.embed(texts) - self.mean_) / self.scale_
        return sigmoid(x @ self.coef_.T + self.intercept_)
