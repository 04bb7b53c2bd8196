import random

import pytest

from twins.evaluate import id_order_split, split_history_target, split_users


def _ids(n: int) -> list[str]:
    return [str(i) for i in range(1, n + 1)]


def test_split_users_is_deterministic_and_order_free():
    ids = _ids(500)
    shuffled = random.Random(1).sample(ids, len(ids))
    assert split_users(ids, seed=3) == split_users(shuffled, seed=3)
    assert split_users(ids, seed=3) != split_users(ids, seed=4)


@pytest.mark.parametrize("n", [1, 7, 100, 1000, 13858])
def test_split_users_is_a_partition_with_the_fractions(n):
    split = split_users(_ids(n), seed=0)
    train, valid, test = split["train"], split["valid"], split["test"]
    assert sorted(train + valid + test) == sorted(_ids(n))  # covers every user exactly once
    assert not (set(train) & set(valid) or set(train) & set(test) or set(valid) & set(test))
    # train = int(0.72 n), valid = int(0.8 n) - int(0.72 n), test = the rest (the Reality Check cut)
    assert len(train) == int(n * 0.72 + 1e-9)
    assert len(train) + len(valid) == int(n * 0.8 + 1e-9)


def test_split_sizes_exact():
    assert [len(v) for v in split_users(_ids(100), seed=0).values()] == [72, 8, 20]
    assert [len(v) for v in split_users(_ids(13858), seed=0).values()] == [9977, 1109, 2772]
    assert [len(v) for v in split_users(_ids(10), seed=0, fractions=(0.5, 0.3, 0.2)).values()] == [5, 3, 2]


def test_id_order_split_uses_numeric_order():
    split = id_order_split(random.Random(0).sample(_ids(20), 20))
    # int(20 * 0.72) = 14, int(20 * 0.8) = 16
    assert split == {"train": _ids(14), "valid": ["15", "16"], "test": ["17", "18", "19", "20"]}


def test_invalid_inputs():
    with pytest.raises(ValueError, match="fractions"):
        split_users(_ids(10), seed=0, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="fractions"):
        id_order_split(_ids(10), fractions=(0.9, 0.1))
    with pytest.raises(ValueError, match="duplicates"):
        split_users(["1", "1"], seed=0)


def test_split_history_target():
    baskets = {
        "a": [[1, 2], [3], [2, 4]],
        "b": [[5], [6]],
        "c": [[7]],  # one basket: excluded
        "d": [],  # none: excluded
        "e": [[8], []],  # the empty basket is dropped, leaving one: excluded
        "f": [[1], [], [9]],
    }
    histories, targets, n_excluded = split_history_target(baskets)
    assert histories == {"a": [[1, 2], [3]], "b": [[5]], "f": [[1]]}
    assert targets == {"a": [2, 4], "b": [6], "f": [9]}
    assert n_excluded == 3
