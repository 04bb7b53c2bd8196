"""Emotion of raw text (task ``emotion``): tokenizers + numpy + onnxruntime, no torch.

Any input has a defined answer: text is cleaned like in training (``clean_text``: invalid UTF-8 replaced,
HTML tags and control characters removed, whitespace collapsed), truncated to the exported ``max_length``
tokens (the rest of a long message is ignored), and an empty message scores as ``[CLS] [SEP]``.
"""

import json

import numpy as np

from twins.runtime.bundle import Bundle, BundleError
from twins.runtime.lexical import TfidfFeatures
from twins.runtime.text import by_length, clean_text

LEVELS = ("labels", "ekman", "sentiment")


class EmotionBundle(Bundle):
    """28 GoEmotions label probabilities, Ekman and sentiment group probabilities, and the labels that pass the
    dev-tuned thresholds at each level."""

    def __init__(self, path, manifest: dict, session) -> None:
        super().__init__(path, manifest, session)
        from tokenizers import Tokenizer

        where = f"{path}/manifest.json"
        try:
            pre = manifest["preprocessing"]
            self.labels = list(manifest["labels"])
            self.groups = {"labels": self.labels, **{k: list(v) for k, v in manifest["groups"].items()}}
            self.thresholds = {level: np.asarray(manifest["thresholds"][level], dtype=np.float32) for level in LEVELS}
            self.max_length = int(pre["max_length"])
            files = dict(manifest["files"])
        except (KeyError, TypeError, ValueError) as error:
            raise BundleError(f"{where}: task 'emotion' needs labels, groups, thresholds, files and preprocessing."
                              f"max_length ({error!r}); re-export with twins.emotion.export.export_emotion") from None
        for level in LEVELS:
            if len(self.thresholds[level]) != len(self.groups[level]):
                raise BundleError(f"{where}: {len(self.thresholds[level])} thresholds for {len(self.groups[level])} "
                                  f"{level}; re-export the bundle")
        needed = [pre["tokenizer"]] + ([pre["lexical"]] if pre.get("lexical") else [])
        for name in needed:  # load() checked the sha256 of every file the manifest lists
            if name not in files:
                raise BundleError(f"{path / name}: missing from {where}'s files; the bundle's preprocessing needs it. "
                                  "Re-export it")
        self.tokenizer = Tokenizer.from_file(str(path / pre["tokenizer"]))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.lexical = None
        if pre.get("lexical"):
            lex = json.loads((path / pre["lexical"]).read_text(encoding="utf-8"))
            self.lexical = TfidfFeatures({t: i for i, t in enumerate(lex["terms"])}, np.asarray(lex["idf"]),
                                         tuple(lex["ngram_range"]))

    def probabilities(self, texts: list[str], batch_size: int = 64) -> dict[str, np.ndarray]:
        """``{"labels": (n, 28), "ekman": (n, 7), "sentiment": (n, 4)}`` float32 probabilities."""
        texts = [clean_text(t) for t in texts]
        encoded = [e.ids for e in self.tokenizer.encode_batch(texts)] if texts else []
        out = {level: np.zeros((len(texts), len(self.groups[level])), dtype=np.float32) for level in LEVELS}
        for rows, ids, mask in by_length(encoded, batch_size):
            feeds = {"input_ids": ids, "attention_mask": mask}
            if self.lexical is not None:
                feeds["lex_ids"], feeds["lex_values"] = self.lexical.transform([texts[i] for i in rows])
            for level, values in self.run(feeds).items():
                out[level][rows] = values
        return out

    def predict(self, texts: list[str], batch_size: int = 64) -> list[dict]:
        """Per text: ``{level: {"scores": {name: p}, "predicted": [names over threshold]}}`` for each level."""
        probs = self.probabilities(texts, batch_size)
        return [{level: {"scores": {name: round(float(p), 6) for name, p in zip(self.groups[level], probs[level][i])},
                         "predicted": [name for name, p, t in zip(self.groups[level], probs[level][i], self.thresholds[level]) if p >= t]}
                 for level in LEVELS} for i in range(len(texts))]
