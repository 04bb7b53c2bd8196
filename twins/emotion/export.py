"""Export an emotion model (fine-tuned encoder, optionally blended with the TF-IDF model) as an ONNX bundle
whose runtime takes raw text: ``tokenizer.json`` and the TF-IDF vocabulary travel in the bundle folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from twins.emotion.classifier import EmotionClassifier, EmotionNet
from twins.emotion.ensemble import LevelThresholds
from twins.emotion.labels import LabelSpace
from twins.emotion.lexical import TfidfLogReg
from twins.export.onnx_bundle import export_bundle

TOKENIZER_FILE = "tokenizer.json"
LEXICAL_FILE = "lexical.json"


class EmotionGraph(nn.Module):
    """Token ids (+ TF-IDF ids/values) -> label, Ekman and sentiment probabilities.

    ``p = w * sigmoid(encoder) + (1 - w) * sigmoid(tfidf @ coef + b)``; a group's probability is the max over
    its member labels. Without a lexical model, ``w = 1`` and the TF-IDF inputs are absent.
    """

    def __init__(self, net: EmotionNet, space: LabelSpace, lexical: TfidfLogReg | None, weight: float) -> None:
        super().__init__()
        self.net = net
        self.weight = float(weight) if lexical is not None else 1.0
        self.register_buffer("ekman_members", torch.from_numpy(space.group_matrix("ekman")))
        self.register_buffer("sentiment_members", torch.from_numpy(space.group_matrix("sentiment")))
        if lexical is not None:
            self.register_buffer("lex_coef", torch.from_numpy(np.ascontiguousarray(lexical.coef_.T)))  # (vocab, labels)
            self.register_buffer("lex_bias", torch.from_numpy(lexical.intercept_))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lex_ids: torch.Tensor | None = None,
                lex_values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = torch.sigmoid(self.net(input_ids, attention_mask))
        if lex_ids is not None:
            lex = (self.lex_coef[lex_ids] * lex_values[..., None]).sum(1) + self.lex_bias
            p = self.weight * p + (1 - self.weight) * torch.sigmoid(lex)
        return p, (p[:, :, None] * self.ekman_members).amax(1), (p[:, :, None] * self.sentiment_members).amax(1)


def export_emotion(classifier: EmotionClassifier, space: LabelSpace, thresholds: LevelThresholds, out_dir: str | Path, *,
                   lexical: TfidfLogReg | None = None, weight: float = 1.0, name: str = "goemotions_emotion",
                   version: str = "1", metrics: dict | None = None, run_id: str | None = None,
                   overwrite: bool = False) -> Path:
    """Write the bundle: ``model.onnx``, ``manifest.json`` (labels, groups, thresholds per level, max length),
    ``tokenizer.json`` and, with a lexical model, ``lexical.json`` (n-gram range, terms in column order, idf)."""
    graph = EmotionGraph(classifier.net_.cpu().eval(), space, lexical, weight).eval()
    ids = torch.tensor([[101, 2023, 2003, 2307, 102], [101, 7592, 102, 0, 0], [101, 2, 3, 4, 102]], dtype=torch.long)
    mask = (ids > 0).long()
    inputs: tuple = (ids, mask)
    names = ["input_ids", "attention_mask"]
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    if lexical is not None:
        inputs += (torch.tensor([[1, 5, 9], [2, 0, 0], [3, 4, 0]]), torch.tensor([[0.5, 0.5, 0.7], [1.0, 0, 0], [0.6, 0.8, 0]]))
        names += ["lex_ids", "lex_values"]
        axes |= {"lex_ids": {0: "batch", 1: "terms"}, "lex_values": {0: "batch", 1: "terms"}}
    manifest = {
        "name": name, "version": version, "task": "emotion", "labels": list(space.labels),
        "groups": {"ekman": {k: list(v) for k, v in space.ekman.items()},
                   "sentiment": {k: list(v) for k, v in space.sentiment.items()}},
        "thresholds": {level: [float(t) for t in th] for level, th in thresholds.thresholds.items()},
        "preprocessing": {"tokenizer": TOKENIZER_FILE, "max_length": classifier.max_length,
                          "lexical": LEXICAL_FILE if lexical is not None else None, "blend_weight": graph.weight,
                          "text_cleaning": "twins.emotion.tokenize.clean_text: UTF-8 (invalid bytes replaced), "
                                           "HTML tags and control characters removed, NFC, whitespace collapsed"},
        "metrics": metrics or {}, "training_run_id": run_id,
    }
    files: dict[str, str | bytes] = {TOKENIZER_FILE: classifier.tokenizer_path_}
    if lexical is not None:
        terms = sorted(lexical.features_.vocabulary, key=lexical.features_.vocabulary.get)
        files[LEXICAL_FILE] = json.dumps({"ngram_range": list(lexical.ngram_range), "terms": terms,
                                          "idf": [float(v) for v in lexical.features_.idf]}).encode()
    return export_bundle(graph, inputs, out_dir, manifest, input_names=names, output_names=["labels", "ekman", "sentiment"],
                         dynamic_axes=axes, overwrite=overwrite, extra_files=files)
