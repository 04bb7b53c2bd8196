"""The negotiation moves every policy shares: a concession schedule from the opening price to the floor.

At round ``k`` (1 = the buyer's first counter) the seller's level is ``floor + (price - floor) * (1 - k / rounds)``;
a counter at or above the level is accepted at the counter; below it the seller counters with the level, and after
the last round (or with ``rounds`` 0) declines. Vectorised: every argument is an array over requests.
"""

from __future__ import annotations

import numpy as np

ACCEPT, COUNTER, DECLINE = 0, 1, 2
DECISIONS = ("accept", "counter", "decline")


def level(price: np.ndarray, floor: np.ndarray, rounds: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """The seller's price at round ``k`` of its concession schedule."""
    share = np.where(rounds > 0, np.clip(1 - np.asarray(k) / np.maximum(rounds, 1), 0, 1), 1.0)
    return floor + (price - floor) * share


def respond(price: np.ndarray, floor: np.ndarray, rounds: np.ndarray, k: np.ndarray | int,
            counter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(decision, price) answering the buyer's ``counter`` at round ``k``."""
    now = level(price, floor, rounds, k)
    accept = counter >= now - 1e-9
    last = np.asarray(k) >= rounds
    decision = np.where(accept, ACCEPT, np.where(last, DECLINE, COUNTER))
    return decision, np.where(accept, counter, now)
