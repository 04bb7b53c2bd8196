"""Next-basket metrics against hand-computed values.

log2(2) = 1, log2(3) = 1.58496, log2(4) = 2, log2(5) = 2.32193.
"""

import math

import pytest

from twins.evaluate import (
    evaluate_rankings,
    explore_recall_at_k,
    ndcg_at_k,
    phr_at_k,
    recall_at_k,
    repeat_recall_at_k,
)

INV_LOG2_3 = 1 / math.log2(3)  # 0.63093
INV_LOG2_5 = 1 / math.log2(5)  # 0.43068
IDCG_2 = 1 + INV_LOG2_3  # 1.63093: two hits at ranks 1, 2
IDCG_3 = 1 + INV_LOG2_3 + 0.5  # 2.13093: three hits at ranks 1, 2, 3


def test_worked_example_k3():
    # truth {a,b,c}, pred [a,x,b]: hits at ranks 1 and 3.
    truth, pred = {"a", "b", "c"}, ["a", "x", "b"]
    assert recall_at_k(pred, truth, 3) == pytest.approx(2 / 3)
    # DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5; IDCG = 2.13093 for both forms (min(3, 3) = 3)
    assert ndcg_at_k(pred, truth, 3) == pytest.approx(1.5 / IDCG_3)  # 0.70392
    assert ndcg_at_k(pred, truth, 3, form="min") == pytest.approx(1.5 / IDCG_3)
    assert 1.5 / IDCG_3 == pytest.approx(0.703918, abs=1e-6)
    assert phr_at_k(pred, truth, 3) == 1.0


def test_k_smaller_than_truth_separates_the_ndcg_forms():
    # top-2 of [a,x,b] is [a,x]: one hit at rank 1, DCG = 1.
    truth, pred = {"a", "b", "c"}, ["a", "x", "b"]
    assert recall_at_k(pred, truth, 2) == pytest.approx(1 / 3)
    # RC: IDCG over all 3 truth items = 2.13093 -> 0.46928; min form: IDCG over min(2, 3) = 2 items = 1.63093 -> 0.61315
    assert ndcg_at_k(pred, truth, 2, form="rc") == pytest.approx(1 / IDCG_3)
    assert ndcg_at_k(pred, truth, 2, form="min") == pytest.approx(1 / IDCG_2)
    assert 1 / IDCG_3 == pytest.approx(0.469278, abs=1e-6)
    assert 1 / IDCG_2 == pytest.approx(0.613147, abs=1e-6)


def test_k_larger_than_truth():
    # truth {a,b}, pred [x,a,y,b,z], k=5: hits at ranks 2 and 4, recall 2/2.
    truth, pred = {"a", "b"}, ["x", "a", "y", "b", "z"]
    assert recall_at_k(pred, truth, 5) == 1.0
    # DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068 = 1.06161; IDCG = 1.63093 in both forms -> 0.65092
    expected = (INV_LOG2_3 + INV_LOG2_5) / IDCG_2
    assert ndcg_at_k(pred, truth, 5) == pytest.approx(expected)
    assert ndcg_at_k(pred, truth, 5, form="min") == pytest.approx(expected)
    assert expected == pytest.approx(0.650921, abs=1e-6)


def test_fewer_predictions_than_k():
    # pred [b] against truth {a,b} at k=10: one hit at rank 1; missing ranks earn nothing.
    truth, pred = {"a", "b"}, ["b"]
    assert recall_at_k(pred, truth, 10) == 0.5
    assert ndcg_at_k(pred, truth, 10) == pytest.approx(1 / IDCG_2)
    assert ndcg_at_k(pred, truth, 10, form="min") == pytest.approx(1 / IDCG_2)  # min(10, 2) = 2
    assert recall_at_k([], truth, 10) == 0.0
    assert phr_at_k([], truth, 10) == 0.0


def test_duplicate_predictions_keep_first_occurrence():
    # [x,x,a,b] -> [x,a,b]; top-3 hits at ranks 2 and 3 (not [x,x,a], which would give recall 1/2).
    truth, pred = {"a", "b"}, ["x", "x", "a", "b"]
    assert recall_at_k(pred, truth, 3) == 1.0
    # DCG = 1/log2(3) + 1/log2(4) = 1.13093; / 1.63093 = 0.69343
    assert ndcg_at_k(pred, truth, 3) == pytest.approx((INV_LOG2_3 + 0.5) / IDCG_2)
    assert (INV_LOG2_3 + 0.5) / IDCG_2 == pytest.approx(0.693426, abs=1e-6)


def test_truth_is_a_set():
    # truth [a,a,b] is {a,b}: recall of [a] is 1/2, not 2/3.
    assert recall_at_k(["a"], ["a", "a", "b"], 10) == 0.5
    assert ndcg_at_k(["a"], ["a", "a", "b"], 10) == pytest.approx(1 / IDCG_2)


def test_no_hit():
    assert recall_at_k(["x", "y"], {"a"}, 2) == 0.0
    assert ndcg_at_k(["x", "y"], {"a"}, 2) == 0.0
    assert phr_at_k(["x", "y"], {"a"}, 2) == 0.0
    assert phr_at_k(["x", "a"], {"a"}, 1) == 0.0  # the hit is at rank 2
    assert phr_at_k(["x", "a"], {"a"}, 2) == 1.0


def test_perfect_ranking_scores_one():
    assert ndcg_at_k(["a", "b", "c"], {"a", "b", "c"}, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["a", "b"], {"a", "b", "c"}, 2, form="min") == pytest.approx(1.0)
    assert ndcg_at_k(["a", "b"], {"a", "b", "c"}, 2, form="rc") == pytest.approx(IDCG_2 / IDCG_3)


@pytest.mark.parametrize(
    "call",
    [
        lambda: recall_at_k(["a"], [], 10),
        lambda: ndcg_at_k(["a"], set(), 10),
        lambda: phr_at_k(["a"], [], 10),
        lambda: repeat_recall_at_k(["a"], [], [["a"]], 10),
    ],
)
def test_empty_truth_raises(call):
    with pytest.raises(ValueError, match="truth basket is empty"):
        call()


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="k must be >= 1"):
        recall_at_k(["a"], {"a"}, 0)
    with pytest.raises(ValueError, match="form must be"):
        ndcg_at_k(["a"], {"a"}, 1, form="dnntsp")


def test_repeat_and_explore_recall():
    # history items {a,x,y}; truth {a,b,c} -> repeat {a}, explore {b,c}; top-3 of [a,b,z] hits a and b.
    history, truth, pred = [["a", "x"], ["y"]], {"a", "b", "c"}, ["a", "b", "z"]
    assert repeat_recall_at_k(pred, truth, history, 3) == 1.0  # 1 hit / 1 repeat item
    assert explore_recall_at_k(pred, truth, history, 3) == 0.5  # 1 hit / 2 explore items
    # No repeat truth items -> None (the user is left out of the repeat average); likewise explore.
    assert repeat_recall_at_k(pred, {"b"}, history, 3) is None
    assert explore_recall_at_k(pred, {"a"}, history, 3) is None


def test_evaluate_rankings_averages_by_hand():
    predictions = {"u1": ["a", "x", "b"], "u2": ["d"]}
    truths = {"u1": {"a", "b", "c"}, "u2": ["e"]}
    histories = {"u1": [["a"], ["x"]], "u2": [["e"]]}
    result = evaluate_rankings(predictions, truths, histories, ks=(3,))
    # u1: recall 2/3, ndcg 1.5/2.13093 = 0.70392 (both forms), phr 1, repeat {a}: 1/1, explore {b,c}: 1/2
    # u2: recall 0, ndcg 0, phr 0, repeat {e}: 0/1, explore: none -> u2 not in the explore average
    assert result["recall@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert result["ndcg@3"] == pytest.approx(1.5 / IDCG_3 / 2)
    assert result["ndcg_min@3"] == pytest.approx(1.5 / IDCG_3 / 2)
    assert result["phr@3"] == 0.5
    assert result["repeat_recall@3"] == 0.5  # (1 + 0) / 2 users
    assert result["explore_recall@3"] == 0.5  # 0.5 / 1 user
    assert (result["n_users"], result["n_repeat_users"], result["n_explore_users"]) == (2, 2, 1)


def test_evaluate_rankings_default_names_and_nan_when_nobody_qualifies():
    result = evaluate_rankings({"u": ["a"]}, {"u": ["a"]}, {"u": [["a"]]})
    expected = {
        f"{name}@{k}"
        for k in (10, 20)
        for name in ("recall", "ndcg", "ndcg_min", "phr", "repeat_recall", "explore_recall")
    }
    assert set(result) == expected | {"n_users", "n_repeat_users", "n_explore_users"}
    assert result["recall@10"] == 1.0 and result["repeat_recall@20"] == 1.0
    assert math.isnan(result["explore_recall@10"])  # the only truth item is a repeat


def test_evaluate_rankings_rejects_missing_users():
    with pytest.raises(ValueError, match="no prediction or no history"):
        evaluate_rankings({}, {"u": ["a"]}, {"u": []})
    with pytest.raises(ValueError, match="no prediction or no history"):
        evaluate_rankings({"u": ["a"]}, {"u": ["a"]}, {})
    with pytest.raises(ValueError, match="no users"):
        evaluate_rankings({}, {}, {})
