import numpy as np
import pytest

from twins.models.upcf import UPCF, tune_upcf

TRAIN = {"v1": [["a"], ["a", "b"]], "v2": [["c"]]}


def _dense(model: UPCF, histories) -> dict:
    row = model.scores(histories).toarray()[0]
    return {item: float(row[j]) for j, item in enumerate(model.items_) if row[j]}


def test_scores_hand_computed():
    # query u = [[a], [c]]: I_u = {a, c}; I_v1 = {a, b}, I_v2 = {c}. asymmetry 0.5:
    #   w(u, v1) = 1 / (2**0.5 * 2**0.5) = 0.5;  w(u, v2) = 1 / (2**0.5 * 1**0.5) = 0.7071
    # recency 1 -> pi = the last basket: pi_v1 = {a: 1, b: 1}, pi_v2 = {c: 1}, pi_u = {c: 1}
    # locality 1: a = 0.5, b = 0.5, c = 0.7071 + 1 (the user itself, w = 1)
    model = UPCF(recency=1, asymmetry=0.5, locality=1).fit(TRAIN)
    assert _dense(model, {"u": [["a"], ["c"]]}) == pytest.approx({"a": 0.5, "b": 0.5, "c": 1 + 2 ** -0.5})
    # locality 2 squares the weights: a = b = 0.25, c = 0.5 + 1
    model = UPCF(recency=1, asymmetry=0.5, locality=2).fit(TRAIN)
    assert _dense(model, {"u": [["a"], ["c"]]}) == pytest.approx({"a": 0.25, "b": 0.25, "c": 1.5})
    assert model.recommend({"u": [["a"], ["c"]]}, 2) == {"u": ["c", "a"]}  # a and b tie: item id order


def test_recency_window_and_self_counted_once():
    # recency None: pi over both baskets of v1 = {a: 1, b: 0.5}; a training user queried with its own id
    # gets its own pi once and its neighbours' through the overlap (v2 shares nothing with v1)
    model = UPCF(recency=None, asymmetry=0.5, locality=1).fit(TRAIN)
    assert _dense(model, {"v1": TRAIN["v1"]}) == pytest.approx({"a": 1.0, "b": 0.5})
    assert model.recommend({"new": [], "stranger": [["zz"]]}, 3) == {"new": [], "stranger": []}


def test_tuning_picks_from_the_grid_and_validates():
    rng = np.random.default_rng(0)
    hist = {f"u{u}": [[f"i{j}" for j in rng.choice(8, 2, replace=False)] for _ in range(4)] for u in range(30)}
    valid = {f"w{u}": [[f"i{j}" for j in rng.choice(8, 2, replace=False)] for _ in range(3)] for u in range(8)}
    targets = {u: [f"i{rng.integers(8)}"] for u in valid}
    best, table = tune_upcf(hist, valid, targets, grid={"recency": [1, None], "asymmetry": [0.5], "locality": [1, 5]})
    assert len(table) == 4 and set(best) == {"recency", "asymmetry", "locality"}
    assert max(r["recall@10"] for r in table) == next(r["recall@10"] for r in table if {k: r[k] for k in best} == best)
    with pytest.raises(ValueError, match="recency"):
        UPCF(recency=0).fit(hist)
    with pytest.raises(ValueError, match="asymmetry"):
        UPCF(asymmetry=2).fit(hist)
