import time

import numpy as np
import pytest

from twins.models import GPTopFreq, GTopFreq, PTopFreq

# Baskets containing each item (a repeat inside one basket counts once):
#   a: u1 x3                    = 3
#   b: u1 x2 (["a","b","b"] once) + u2 = 3   (4 if occurrences were counted)
#   c: u1 + u3                  = 2
#   d: u2 + u3 x2               = 3
#   e: u2                       = 1
# Global ranking, popularity desc then id: a, b, d (3 each), c (2), e (1).
HISTORIES = {
    "u1": [["a", "b"], ["a", "c"], ["a", "b", "b"]],
    "u2": [["b"], ["d", "e"]],
    "u3": [["c", "d"], ["d"]],
}


def test_fit_counts_baskets_and_ranks_ties_by_id():
    model = GTopFreq().fit(HISTORIES)
    assert model.popularity_ == {"a": 3, "b": 3, "c": 2, "d": 3, "e": 1}
    assert model.ranking_ == ["a", "b", "d", "c", "e"]


def test_g_topfreq_same_for_everyone():
    recs = GTopFreq().fit(HISTORIES).recommend(HISTORIES, k=2)
    assert recs == {"u1": ["a", "b"], "u2": ["a", "b"], "u3": ["a", "b"]}


def test_p_topfreq_personal_counts_then_popularity_then_id():
    recs = PTopFreq().fit(HISTORIES).recommend(HISTORIES, k=10)
    # u1: a in 3 baskets, b in 2, c in 1
    # u2: b, d, e in 1 basket each -> popularity b 3 = d 3 > e 1; b before d by id
    # u3: d in 2, c in 1; nothing else (P-TopFreq does not fill)
    assert recs == {"u1": ["a", "b", "c"], "u2": ["b", "d", "e"], "u3": ["d", "c"]}
    assert PTopFreq().fit(HISTORIES).recommend(HISTORIES, k=2)["u2"] == ["b", "d"]


def test_tie_break_first_follows_first_appearance():
    history = {"h": [["e", "d"], ["c"]]}  # all counts 1; popularity d 3 > c 2 > e 1
    assert PTopFreq().fit(HISTORIES).recommend(history, k=3) == {"h": ["d", "c", "e"]}
    assert PTopFreq(tie_break="first").fit(HISTORIES).recommend(history, k=3) == {"h": ["e", "d", "c"]}
    with pytest.raises(ValueError, match="tie_break"):
        PTopFreq(tie_break="random").fit(HISTORIES)


def test_gp_topfreq_fills_with_popular_unseen_items():
    recs = GPTopFreq().fit(HISTORIES).recommend(HISTORIES, k=4)
    # u3: personal [d, c], then the global ranking a, b, (d), (c), e minus chosen -> a, b
    assert recs["u3"] == ["d", "c", "a", "b"]
    # u2: personal [b, d, e], then a
    assert recs["u2"] == ["b", "d", "e", "a"]
    assert recs["u1"] == ["a", "b", "c", "d"]


def test_empty_history_and_unknown_items():
    histories = {"new": [], "z": [["z"]]}
    assert PTopFreq().fit(HISTORIES).recommend(histories, k=3) == {"new": ["a", "b", "d"], "z": ["z"]}
    # an unknown item still counts for its user (popularity 0)
    assert GPTopFreq().fit(HISTORIES).recommend(histories, k=3) == {"new": ["a", "b", "d"], "z": ["z", "a", "b"]}


def test_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        GPTopFreq().recommend(HISTORIES, k=3)
    with pytest.raises(ValueError, match="k must be"):
        GPTopFreq().fit(HISTORIES).recommend(HISTORIES, k=0)
    with pytest.raises(ValueError, match="no items"):
        GTopFreq().fit({"u": [[]]})


def test_fit_returns_self():
    model = GPTopFreq()
    assert model.fit(HISTORIES) is model


def test_fast_on_tafeng_sized_data():
    # ~2,800 test users, 12,000 items, Zipf-like popularity, 2-10 baskets of 1-12 items
    rng = np.random.default_rng(0)
    n_items = 12_000
    probs = 1 / np.arange(1, n_items + 1)
    probs /= probs.sum()

    def histories(n_users: int) -> dict[int, list[list[int]]]:
        n_baskets = rng.integers(2, 11, n_users)
        sizes = rng.integers(1, 13, n_baskets.sum())
        items = rng.choice(n_items, sizes.sum(), p=probs).tolist()
        baskets = [items[end - size : end] for end, size in zip(np.cumsum(sizes), sizes)]
        ends = np.cumsum(n_baskets)
        return {u: baskets[end - n : end] for u, (end, n) in enumerate(zip(ends, n_baskets))}

    train, test = histories(3_000), histories(2_800)
    start = time.perf_counter()
    recs = GPTopFreq().fit(train).recommend(test, k=20)
    assert time.perf_counter() - start < 2.0
    assert all(len(items) == 20 == len(set(items)) for items in recs.values())
