import numpy as np
import pytest

from twins.models.tifuknn import TIFUKNN, basket_weights, tune_tifuknn


def _vector(model: TIFUKNN, user) -> dict:
    row = model.vectors_[model.user_index_[user]].toarray().ravel()
    return {item: float(row[i]) for i, item in enumerate(model.items_) if row[i] != 0}


def _toy(seed: int, n_users: int = 40, n_items: int = 30) -> dict[str, list[list[int]]]:
    rng = np.random.default_rng(seed)
    return {f"u{u:02d}": [sorted(rng.choice(n_items, size=rng.integers(1, 6), replace=False).tolist())
                          for _ in range(rng.integers(1, 12))] for u in range(n_users)}


def test_user_vector_hand_computed_long_history():
    # group_size (= number of groups) 2, within_decay 0.5, group_decay 0.5; 3 baskets [a], [a, b], [c].
    # n = 3 >= 2 groups: base = 3 // 2 = 1, extra = 1 -> oldest group {basket 0} (1 basket),
    #   newest group {baskets 1, 2} (2 baskets).
    # within decay over the whole history: basket 0: 0.5^2 = 0.25, basket 1: 0.5^1 = 0.5, basket 2: 0.5^0 = 1.
    # group decay: group 0: 0.5^(2-1-0) = 0.5, group 1: 0.5^0 = 1; group vector = mean of its baskets;
    # user vector = sum over groups / number of groups (2).
    #   basket 0: 0.25 * 0.5 / 1 / 2 = 0.0625;  basket 1: 0.5 * 1 / 2 / 2 = 0.125;  basket 2: 1 * 1 / 2 / 2 = 0.25
    #   a = 0.0625 + 0.125 = 0.1875;  b = 0.125;  c = 0.25
    model = TIFUKNN(k=1, within_decay=0.5, group_decay=0.5, group_size=2).fit({"u": [["a"], ["a", "b", "b"], ["c"]]})
    assert _vector(model, "u") == pytest.approx({"a": 0.1875, "b": 0.125, "c": 0.25})


def test_user_vector_hand_computed_short_history():
    # group_size 3 > n = 2 baskets: one group per basket, divided by the 2 groups formed, but the group decay
    # exponent still counts from group_size - 1 (reference code): basket 0 -> group 0: 0.5^(3-1-0) = 0.25,
    # basket 1 -> group 1: 0.5^(3-1-1) = 0.5. Within decay: basket 0: 0.5^1 = 0.5, basket 1: 1.
    #   a = 0.5 * 0.25 / 2 = 0.0625;  b = 1 * 0.5 / 2 = 0.25
    model = TIFUKNN(k=1, within_decay=0.5, group_decay=0.5, group_size=3).fit({"u": [["a"], ["b"]]})
    assert _vector(model, "u") == pytest.approx({"a": 0.0625, "b": 0.25})


def test_basket_weights_groups_put_the_extra_baskets_in_the_newest_groups():
    # 7 baskets, 3 groups: base 2, extra 1 -> groups of 2, 2, 3 (oldest first). Without decay, each basket
    # weighs 1 / group size / 3.
    w = basket_weights(7, within_decay=1.0, group_decay=1.0, group_size=3)
    assert w == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 9, 1 / 9, 1 / 9])
    assert basket_weights(0, 0.9, 0.7, 7).shape == (0,)


def test_alpha_one_is_personal_decayed_frequency():
    train, queries = _toy(0), _toy(1, n_users=10)
    recs = TIFUKNN(k=5, alpha=1.0).fit(train).recommend(queries, k=8)
    own = TIFUKNN(k=5).fit(queries)  # the queries' own vectors
    for user, items in recs.items():
        vec = _vector(own, user)
        expected = sorted(vec, key=lambda item: (-vec[item], item))[:8]
        assert items == expected
    # hand case: [x, y] then [y]: y is in the newest basket and in both -> y before x, nothing else
    assert TIFUKNN(k=5, alpha=1.0).fit(train).recommend({"q": [[100, 101], [101]]}, k=10) == {"q": [101, 100]}


def test_neighbours_are_used_when_alpha_below_one():
    train = {"t1": [["a", "b"]], "t2": [["c", "d", "e"]]}
    # one-basket vectors: w * onehot, w = 0.7^6; query [a]: d^2 to t1 = w^2, to t2 = 4 w^2 -> neighbour t1
    model = TIFUKNN(k=1, alpha=0.5).fit(train)
    assert model.recommend({"q": [["a"]]}, k=10) == {"q": ["a", "b"]}
    # empty own vector: the nearest fitted user is the one with the smallest norm (t1); its items only
    assert model.recommend({"q": []}, k=10) == {"q": ["a", "b"]}
    # with both neighbours (k=2) every item of the mean weighs w / 2: all five tie and are ordered by id
    assert TIFUKNN(k=2, alpha=0.5).fit(train).recommend({"q": []}, k=10) == {"q": ["a", "b", "c", "d", "e"]}


def test_a_fitted_user_is_not_its_own_neighbour():
    train = {"t1": [["a"]], "t2": [["a", "b"]], "t3": [["x", "y", "z"]]}
    recs = TIFUKNN(k=1, alpha=0.5).fit(train).recommend(train, k=10)
    assert recs["t1"] == ["a", "b"]  # neighbour t2, not t1 itself
    assert recs["t2"] == ["a", "b"]  # neighbour t1 adds a; b only from itself
    # a query with the same vector but another id may have t1 as neighbour (distance 0)
    assert TIFUKNN(k=1, alpha=0.5).fit(train).recommend({"q": [["a"]]}, k=10) == {"q": ["a"]}


def test_new_items_and_determinism():
    train, queries = _toy(2), _toy(3, n_users=15, n_items=40)  # items 30..39 unseen in fit
    first = TIFUKNN(k=7, alpha=0.6, group_size=3).fit(train).recommend(queries, k=10)
    second = TIFUKNN(k=7, alpha=0.6, group_size=3).fit(train).recommend(queries, k=10)
    assert first == second
    assert all(len(items) == len(set(items)) <= 10 for items in first.values())
    seen = {item for baskets in queries.values() for basket in baskets for item in basket}
    assert all(set(items) <= seen | {i for b in train.values() for bb in b for i in bb} for items in first.values())
    solo = TIFUKNN(k=3, alpha=1.0).fit(train).recommend({"q": [[35, 36]]}, k=5)
    assert solo == {"q": [35, 36]}


def test_errors():
    with pytest.raises(RuntimeError):
        TIFUKNN().recommend({"q": [["a"]]}, k=1)
    with pytest.raises(ValueError):
        TIFUKNN(alpha=1.5).fit({"u": [["a"]]})
    with pytest.raises(ValueError):
        TIFUKNN().fit({})
    with pytest.raises(ValueError):
        TIFUKNN().fit({"u": [["a"]]}).recommend({"q": [["a"]]}, k=0)


def test_tune_returns_best_of_grid():
    train = _toy(4, n_users=60)
    valid = _toy(5, n_users=20)
    histories = {u: b[:-1] for u, b in valid.items() if len(b) > 1}
    targets = {u: valid[u][-1] for u in histories}
    grid = {"k": [2, 10], "alpha": [0.3, 1.0], "group_size": [2, 7]}
    best, table = tune_tifuknn(train, histories, targets, grid)
    assert len(table) == 8
    assert set(best) == {"k", "within_decay", "group_decay", "alpha", "group_size"}
    top = max(row["recall@10"] for row in table)
    assert next(row for row in table if row["recall@10"] == top) == {**best, "recall@10": top}
    # the table's numbers are what a plain fit + recommend gives
    from twins.evaluate.metrics import recall_at_k

    row = table[3]
    params = {k: v for k, v in row.items() if k != "recall@10"}
    recs = TIFUKNN(**params).fit(train).recommend(histories, k=10)
    assert np.mean([recall_at_k(recs[u], targets[u], 10) for u in targets]) == pytest.approx(row["recall@10"])
