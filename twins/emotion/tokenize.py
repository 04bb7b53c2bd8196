"""Word-piece tokenisation for training: truncation, no fixed padding (batches pad themselves, ``runtime.text.pad``).

The packaged ``tokenizer.json`` pads every input to 128 tokens; :func:`load_tokenizer` turns that off and
truncates to ``max_length`` tokens (``[CLS]`` and ``[SEP]`` included) instead. Text is cleaned first
(``twins.runtime.text.clean_text``, as in the runtime) so empty, whitespace-only, control-character or invalid-UTF-8 input has a defined answer.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from twins.runtime.text import clean_text


def load_tokenizer(path: str | Path, max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


def encode(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids per text (cleaned first); an empty text is ``[CLS] [SEP]``."""
    return [e.ids for e in tokenizer.encode_batch([clean_text(t) for t in texts])]
