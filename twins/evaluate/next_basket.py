"""The next-basket protocol (Reality Check, Li et al., TOIS 2023): per user the last basket is the target and
all earlier baskets the history; users are split into train / valid / test."""

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np

User = TypeVar("User", bound=Hashable)
Item = TypeVar("Item", bound=Hashable)

DEFAULT_FRACTIONS = (0.72, 0.08, 0.20)


def _id_key(user: Hashable) -> tuple[int, int, str]:
    """Sort key putting numeric ids (ints or digit strings) in numeric order, before all other ids."""
    text = str(user)
    return (0, int(text), text) if text.isdigit() else (1, 0, text)


def _sorted_users(user_ids: Iterable[User]) -> list[User]:
    users = list(user_ids)
    if len(set(users)) != len(users):
        raise ValueError("user_ids contains duplicates; pass each user once")
    return sorted(users, key=_id_key)


def _cut(users: list[User], fractions: Sequence[float]) -> dict[str, list[User]]:
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    n = len(users)
    # The Reality Check split: train = users[:int(n * 0.72)], valid up to int(n * 0.8), test the rest.
    # The epsilon keeps e.g. 100 * (0.72 + 0.08) = 79.999... from losing a user to rounding.
    end_train = int(n * fractions[0] + 1e-9)
    end_valid = int(n * (fractions[0] + fractions[1]) + 1e-9)
    return {"train": users[:end_train], "valid": users[end_train:end_valid], "test": users[end_valid:]}


def split_users(
    user_ids: Iterable[User], seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, list[User]]:
    """Random train / valid / test split of users.

    The ids are sorted (numeric ids numerically) and permuted with ``numpy.random.default_rng(seed)``, so the
    split depends only on the set of ids and the seed. Returns ``{"train": [...], "valid": [...], "test": [...]}``.
    """
    users = _sorted_users(user_ids)
    order = np.random.default_rng(seed).permutation(len(users))
    return _cut([users[i] for i in order], fractions)


def id_order_split(user_ids: Iterable[User], fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[str, list[User]]:
    """Split users in id order (numeric ids numerically), as the TIFU-KNN code does: the first 72% train, the
    next 8% valid, the last 20% test."""
    return _cut(_sorted_users(user_ids), fractions)


def split_history_target(
    baskets_by_user: Mapping[User, Sequence[Sequence[Item]]],
) -> tuple[dict[User, list[list[Item]]], dict[User, list[Item]], int]:
    """Split each user's time-ordered baskets into history (all but the last) and target (the last).

    Empty baskets are dropped first. Users left with fewer than 2 baskets are excluded.
    Returns ``(histories, targets, n_excluded)``.
    """
    histories: dict[User, list[list[Item]]] = {}
    targets: dict[User, list[Item]] = {}
    n_excluded = 0
    for user, baskets in baskets_by_user.items():
        kept = [list(basket) for basket in baskets if len(basket) > 0]
        if len(kept) < 2:
            n_excluded += 1
            continue
        histories[user], targets[user] = kept[:-1], kept[-1]
    return histories, targets, n_excluded
