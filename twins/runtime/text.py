"""Text preprocessing shared by training and the emotion runtime (standard library + numpy only)."""

import re
import unicodedata

import numpy as np

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_TAG = re.compile(r"</?[A-Za-z][^<>]{0,200}>")


def clean_text(text: str | bytes | None) -> str:
    """Defined input for any message: bytes decoded as UTF-8 with invalid bytes replaced, HTML tags and
    control characters removed, Unicode NFC, whitespace collapsed. ``None`` becomes ``""``."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = _CONTROL.sub(" ", _TAG.sub(" ", unicodedata.normalize("NFC", str(text))))
    return " ".join(text.split())


def by_length(ids: list[list[int]], batch_size: int):
    """Batches of similar-length sequences (less padding): yields ``(rows, input_ids, attention_mask)``, ``rows``
    being the batch's positions in ``ids``, so results scatter back with ``out[rows] = ...``."""
    order = np.argsort([len(seq) for seq in ids], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        yield (rows, *pad([ids[i] for i in rows]))


def pad(batch: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 arrays padded with 0 to the longest sequence in the batch."""
    width = max(len(ids) for ids in batch)
    ids = np.zeros((len(batch), width), dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for i, seq in enumerate(batch):
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return ids, mask
