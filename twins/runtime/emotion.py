"""Emotion of raw text (task ``emotion``): tokenizers + numpy + onnxruntime, no torch.

Any input has a defined answer: text is cleaned like in training (``clean_text``: invalid UTF-8 replaced,
HTML tags and control characters removed, whitespace collapsed), truncated to the exported ``max_length``
tokens (the rest of a long message is ignored), and an empty message scores as ``[CLS] [SEP]``.
"""

import json
from collections.abc import Callable

import numpy as np

from twins.runtime.bundle import Bundle, BundleError, need, need_numbers, need_strings
from twins.runtime.lexical import TfidfFeatures
from twins.runtime.text import by_length, clean_text

LEVELS = ("labels", "ekman", "sentiment")


class EmotionBundle(Bundle):
    """28 GoEmotions label probabilities, Ekman and sentiment group probabilities, and the labels that pass the
    dev-tuned thresholds at each level."""

    def __init__(self, path, manifest: dict, session) -> None:
        super().__init__(path, manifest, session)
        from tokenizers import Tokenizer

        where = self.manifest_path
        self.labels = need_strings(manifest, "labels", where, unique=True)
        self.groups = {"labels": self.labels}
        for level in LEVELS[1:]:
            self.groups[level] = list(need(manifest, f"groups.{level}", dict, where))
        self.thresholds = {}
        for level in LEVELS:
            self.thresholds[level] = need_numbers(manifest, f"thresholds.{level}", where).astype(np.float32)
            width = self.graph_width(level)
            if not len(self.thresholds[level]) == len(self.groups[level]) == width:
                raise BundleError(f"{where}: {len(self.thresholds[level])} thresholds and {len(self.groups[level])} "
                                  f"names for the graph's {width} {level}; re-export the bundle")
        self.max_length = need(manifest, "preprocessing.max_length", int, where)
        if self.max_length < 2:
            raise BundleError(f"{where}: preprocessing.max_length must be >= 2 ([CLS] and [SEP]); re-export the bundle")
        tokenizer = need(manifest, "preprocessing.tokenizer", str, where)
        lexical = (need(manifest, "preprocessing.lexical", str, where)
                   if manifest["preprocessing"].get("lexical") is not None else None)
        for name in [tokenizer] + ([lexical] if lexical else []):  # load() checked the sha256 of every listed file
            if name not in manifest.get("files", {}):
                raise BundleError(f"{path / name}: missing from {where}'s files; the bundle's preprocessing needs it. "
                                  "Re-export it")
        try:
            self.tokenizer = Tokenizer.from_file(str(path / tokenizer))
        except Exception as error:  # tokenizers raises a bare Exception for a file it cannot parse
            raise BundleError(f"{path / tokenizer}: not a tokenizer file ({error}); re-export the bundle") from None
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.lexical = _lexical(path / lexical) if lexical else None
        self._check_index_ranges()

    def _check_index_ranges(self) -> None:
        """The graph takes the tokenizer's last token id and, with a lexical model, its last term's column, and
        refuses the column past it (its tables refuse an index past their end): files and graph are one export."""
        tokens = self.tokenizer.get_vocab_size()
        probe = {"input_ids": np.array([[tokens - 1]], np.int64), "attention_mask": np.ones((1, 1), np.int64)}
        if self.lexical is None:
            fits, terms = self.accepts(probe), 0
        else:
            terms = len(self.lexical.vocabulary)

            def column(i: int) -> dict[str, np.ndarray]:
                return probe | {"lex_ids": np.array([[i]], np.int64), "lex_values": np.ones((1, 1), np.float32)}

            fits = self.accepts(column(terms - 1)) and not self.accepts(column(terms))
        if not fits:
            raise BundleError(f"{self.manifest_path}: the tokenizer's {tokens} tokens or the lexical model's {terms} "
                              "terms do not match the graph in model.onnx; the files come from different exports. "
                              "Re-export the bundle")

    def probabilities(self, texts: list[str], batch_size: int = 64,
                      on_batch: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """``{"labels": (n, 28), "ekman": (n, 7), "sentiment": (n, 4)}`` float32 probabilities. All ``texts`` are
        sorted by token length before batching (little padding: pass many at once); ``on_batch(done, n)`` after
        each batch."""
        texts = [clean_text(t) for t in texts]
        encoded = [e.ids for e in self.tokenizer.encode_batch(texts)] if texts else []
        out = {level: np.zeros((len(texts), len(self.groups[level])), dtype=np.float32) for level in LEVELS}
        done = 0
        for rows, ids, mask in by_length(encoded, batch_size):
            feeds = {"input_ids": ids, "attention_mask": mask}
            if self.lexical is not None:
                feeds["lex_ids"], feeds["lex_values"] = self.lexical.transform([texts[i] for i in rows])
            for level, values in self.run(feeds).items():
                out[level][rows] = values
            done += len(rows)
            if on_batch:
                on_batch(done, len(texts))
        return out

    def predict(self, texts: list[str], batch_size: int = 64) -> list[dict]:
        """Per text: ``{level: {"scores": {name: p}, "predicted": [names over threshold]}}`` for each level."""
        probs = self.probabilities(texts, batch_size)
        return [{level: {"scores": {name: round(float(p), 6) for name, p in zip(self.groups[level], probs[level][i])},
                         "predicted": [name for name, p, t in zip(self.groups[level], probs[level][i], self.thresholds[level]) if p >= t]}
                 for level in LEVELS} for i in range(len(texts))]


MAX_NGRAM = 10  # a lexical model's longest n-gram: more would make each request's term loop as long as asked


def _lexical(file) -> TfidfFeatures:
    """The TF-IDF model of ``lexical.json``: terms in column order, one idf each, an n-gram range."""
    try:
        lex = json.loads(file.read_bytes())
        terms, idf, (low, high) = lex["terms"], np.asarray(lex["idf"], dtype=np.float64), lex["ngram_range"]
        valid = (all(isinstance(t, str) for t in terms) and len(set(terms)) == len(terms) == len(idf) > 0
                 and idf.ndim == 1 and np.isfinite(idf).all() and all(type(n) is int for n in (low, high))
                 and 1 <= low <= high <= MAX_NGRAM)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as error:
        raise BundleError(f"{file}: not a lexical model ({error!r}); re-export the bundle") from None
    if not valid:
        raise BundleError(f"{file}: needs distinct string terms, one finite idf each and an ngram_range of two "
                          f"integers 1 <= low <= high <= {MAX_NGRAM}; re-export the bundle")
    return TfidfFeatures({t: i for i, t in enumerate(terms)}, idf, (low, high))
