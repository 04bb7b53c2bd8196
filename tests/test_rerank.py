import numpy as np
import pytest

from twins.evaluate.metrics import recall_at_k
from twins.models.rerank import FEATURES, CandidateReranker
from twins.models.tifuknn import TIFUKNN

TP = FEATURES.index("target_popularity")


def _feature(users, cands, X, user, item, column):
    row = 0
    for u, c in zip(users, cands):
        if u == user:
            return X[row + c.index(item), column]
        row += len(c)
    raise KeyError(user)


def _hand_case(target_u1):
    # 5 training users, everyone bought a, b, c; 5 users -> 5 folds of one user each, so a training row counts
    # the other 4 users' targets, scaled by 5 / 4 to the all-users scale.
    histories = {f"u{i}": [["a", "b"], ["c"]] for i in range(1, 6)}
    targets = {"u1": target_u1, "u2": ["a"], "u3": ["b"], "u4": ["b"], "u5": ["c"]}
    model = CandidateReranker(max_iter=5, tifu_params={"k": 2}).fit(histories, targets)
    return model, histories, targets


def test_training_target_popularity_excludes_the_users_own_target():
    model, histories, targets = _hand_case(["a"])
    assert model.target_popularity_ == {"a": 2, "b": 2, "c": 1}
    users, cands, X, y = model.training_rows(histories, targets)
    # u1's own target [a] must not count: a is in one OTHER target (u2) -> 1 * 5/4; b in two (u3, u4) -> 2 * 5/4
    assert _feature(users, cands, X, "u1", "a", TP) == pytest.approx(1.25)
    assert _feature(users, cands, X, "u1", "b", TP) == pytest.approx(2.5)
    assert _feature(users, cands, X, "u1", "c", TP) == pytest.approx(1.25)
    assert _feature(users, cands, X, "u2", "a", TP) == pytest.approx(1.25)  # u1's target counts for u2
    assert y[cands[0].index("a")] == 1 and y[cands[0].index("b")] == 0  # labels: u1's rows come first
    # a user's features do not depend on its own target at all (the label cannot leak into them)
    model2, _, targets2 = _hand_case(["c"])
    users2, cands2, X2, _ = model2.training_rows(histories, targets2)
    u1_rows = slice(0, len(cands[0]))
    assert users[0] == users2[0] == "u1" and cands[0] == cands2[0]
    np.testing.assert_array_equal(X[u1_rows], X2[u1_rows])
    # at recommend time every training target counts
    cands_new, X_new = model._features({"new": [["a", "b"], ["c"]]})
    assert X_new[cands_new[0].index("a"), TP] == 2 and X_new[cands_new[0].index("c"), TP] == 1


def _planted(seed: int, n_users: int, n_items: int = 30):
    """Noise baskets from user-specific favourites; X (item 100) is in every user's last history basket and its
    follower Y (item 101) is in the basket after every X. X is rare earlier, so Y is rare in histories and
    TIFU-KNN ranks it low, but Y is in every target basket."""
    rng = np.random.default_rng(seed)
    histories, targets = {}, {}
    for u in range(n_users):
        favourites = rng.choice(n_items, size=8, replace=False)
        baskets = []
        n = int(rng.integers(4, 9))
        for t in range(n + 1):
            basket = set(rng.choice(favourites, size=3, replace=False).tolist())
            basket |= set(rng.choice(n_items, size=1).tolist())
            if t == n - 1 or (t < n - 1 and rng.random() < 0.1):
                basket.add(100)
            if baskets and 100 in baskets[-1]:
                basket.add(101)
            baskets.append(sorted(basket))
        histories[f"u{seed}_{u}"], targets[f"u{seed}_{u}"] = baskets[:-1], baskets[-1]
    return histories, targets


def _mean_recall(pred, targets, k):
    return float(np.mean([recall_at_k(pred[u], targets[u], k) for u in targets]))


def test_planted_signal_is_learned_and_beats_tifuknn():
    train_h, train_t = _planted(0, 300)
    test_h, test_t = _planted(1, 100)
    params = {"k": 50}
    model = CandidateReranker(max_iter=60, learning_rate=0.1, tifu_params=params).fit(train_h, train_t)
    pred = model.recommend(test_h, 3)
    tifu = TIFUKNN(**params).fit(train_h).recommend(test_h, 3)
    assert np.mean([101 in p for p in pred.values()]) > 0.95
    assert np.mean([101 in p for p in tifu.values()]) < 0.5
    assert _mean_recall(pred, test_t, 3) > _mean_recall(tifu, test_t, 3) + 0.05


def test_recommend_returns_k_distinct_items_and_fills_short_lists():
    train_h, train_t = _planted(0, 120)
    model = CandidateReranker(max_iter=20, n_candidates=5, tifu_params={"k": 10}).fit(train_h, train_t)
    test_h, _ = _planted(2, 20)
    test_h["short"] = [[0]]
    test_h["unknown_items"] = [[999, 998]]
    pred = model.recommend(test_h, 25)
    assert set(pred) == set(test_h)
    for items in pred.values():
        assert len(items) == 25 and len(set(items)) == 25
    assert set(pred["unknown_items"][:2]) <= {999, 998, *model.tifu_.items_} and 999 in pred["unknown_items"]
    assert model.recommend({}, 5) == {}
    with pytest.raises(ValueError):
        model.recommend(test_h, 0)


def test_deterministic_for_a_seed():
    train_h, train_t = _planted(0, 150)
    test_h, _ = _planted(3, 30)
    a = CandidateReranker(max_iter=30, seed=4, tifu_params={"k": 20}).fit(train_h, train_t).recommend(test_h, 10)
    b = CandidateReranker(max_iter=30, seed=4, tifu_params={"k": 20}).fit(train_h, train_t).recommend(test_h, 10)
    assert a == b


def test_unfitted_and_bad_inputs():
    with pytest.raises(RuntimeError):
        CandidateReranker().recommend({"u": [[1]]}, 5)
    with pytest.raises(ValueError):
        CandidateReranker().fit({}, {})
    with pytest.raises(ValueError):
        CandidateReranker(n_candidates=0).fit({"u": [[1]]}, {"u": [1]})
