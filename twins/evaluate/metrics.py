"""Next-basket ranking metrics, per user and averaged over users.

Definitions follow the Reality Check evaluation code (Li et al., ACM TOIS 2023, ``evaluation/metrics.py``)
with binary gains and a log2(rank + 1) discount. Shared conventions:

- ``pred`` is a ranked list of item ids. Duplicates are dropped keeping the first occurrence, then the list is
  cut to ``k``. A list shorter than ``k`` is scored as it is: missing ranks earn nothing.
- ``truth`` is the target basket, used as a set. An empty one raises ``ValueError`` (recall is undefined).
- ``history`` is the user's earlier baskets; it only matters for the repeat/explore split.
"""

import math
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from typing import Literal

Item = Hashable
History = Iterable[Iterable[Item]]


def _truth_set(truth: Collection[Item]) -> set[Item]:
    items = set(truth)
    if not items:
        raise ValueError(
            "truth basket is empty: ranking metrics are undefined for a user with nothing to predict; "
            "drop users with an empty target basket before evaluating"
        )
    return items


def _top_k(pred: Sequence[Item], k: int) -> list[Item]:
    """The first ``k`` distinct items of ``pred``, in order."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return list(dict.fromkeys(pred))[:k]


def _hits(pred: Sequence[Item], truth: set[Item], k: int) -> list[bool]:
    return [item in truth for item in _top_k(pred, k)]


def recall_at_k(pred: Sequence[Item], truth: Collection[Item], k: int) -> float:
    """Hits in the top ``k`` divided by the number of distinct truth items."""
    items = _truth_set(truth)
    return sum(_hits(pred, items, k)) / len(items)


def _dcg(n_ranks: int) -> float:
    """DCG of ``n_ranks`` hits at ranks 1..n_ranks."""
    return sum(1.0 / math.log2(rank + 1) for rank in range(1, n_ranks + 1))


def ndcg_at_k(pred: Sequence[Item], truth: Collection[Item], k: int, form: Literal["rc", "min"] = "rc") -> float:
    """NDCG@k with binary gains.

    ``form="rc"`` (Reality Check): the ideal DCG places the WHOLE truth basket, so a user with more than ``k``
    truth items cannot reach 1. ``form="min"`` (DNNTSP): the ideal DCG places ``min(k, |truth|)`` items.
    """
    if form not in ("rc", "min"):
        raise ValueError(f"form must be 'rc' or 'min', got {form!r}")
    items = _truth_set(truth)
    dcg = sum(1.0 / math.log2(rank + 1) for rank, hit in enumerate(_hits(pred, items, k), start=1) if hit)
    n_ideal = len(items) if form == "rc" else min(k, len(items))
    return dcg / _dcg(n_ideal)


def phr_at_k(pred: Sequence[Item], truth: Collection[Item], k: int) -> float:
    """Personal hit ratio: 1.0 if at least one truth item is in the top ``k``, else 0.0."""
    return float(any(_hits(pred, _truth_set(truth), k)))


def _split_truth(truth: Collection[Item], history: History) -> tuple[set[Item], set[Item]]:
    """(repeat, explore): truth items that do / do not occur in the history."""
    items = _truth_set(truth)
    seen = {item for basket in history for item in basket}
    return items & seen, items - seen


def repeat_recall_at_k(pred: Sequence[Item], truth: Collection[Item], history: History, k: int) -> float | None:
    """Recall@k over the truth items already in the user's history; ``None`` when there are none."""
    repeat, _ = _split_truth(truth, history)
    return recall_at_k(pred, repeat, k) if repeat else None


def explore_recall_at_k(pred: Sequence[Item], truth: Collection[Item], history: History, k: int) -> float | None:
    """Recall@k over the truth items new to the user; ``None`` when there are none."""
    _, explore = _split_truth(truth, history)
    return recall_at_k(pred, explore, k) if explore else None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def evaluate_rankings(
    predictions: Mapping[Hashable, Sequence[Item]],
    truths: Mapping[Hashable, Collection[Item]],
    histories: Mapping[Hashable, History],
    ks: Sequence[int] = (10, 20),
) -> dict[str, float]:
    """Average the metrics over the users of ``truths``.

    Returns ``recall@k``, ``ndcg@k`` (RC form), ``ndcg_min@k`` (DNNTSP form), ``phr@k``, ``repeat_recall@k`` and
    ``explore_recall@k`` for each k, plus ``n_users``, ``n_repeat_users`` and ``n_explore_users``. Repeat recall
    averages only over users with at least one repeat truth item (``n_repeat_users``), explore recall only over
    users with at least one explore truth item (``n_explore_users``), as in the Reality Check code; the average
    is NaN when no user qualifies. Every user of ``truths`` needs an entry in ``predictions`` and ``histories``.
    """
    if not truths:
        raise ValueError("truths is empty: no users to evaluate")
    missing = [user for user in truths if user not in predictions or user not in histories]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(truths)} users in truths have no prediction or no history "
            f"(first: {missing[:3]}); pass an entry (an empty list is fine) for every evaluated user"
        )
    scores: dict[str, list[float]] = {}
    n_repeat = n_explore = 0
    for user, truth in truths.items():
        pred, history = predictions[user], histories[user]
        repeat, explore = _split_truth(truth, history)
        n_repeat += bool(repeat)
        n_explore += bool(explore)
        for k in ks:
            user_scores = {
                f"recall@{k}": recall_at_k(pred, truth, k),
                f"ndcg@{k}": ndcg_at_k(pred, truth, k, form="rc"),
                f"ndcg_min@{k}": ndcg_at_k(pred, truth, k, form="min"),
                f"phr@{k}": phr_at_k(pred, truth, k),
            }
            if repeat:
                user_scores[f"repeat_recall@{k}"] = recall_at_k(pred, repeat, k)
            if explore:
                user_scores[f"explore_recall@{k}"] = recall_at_k(pred, explore, k)
            for name, value in user_scores.items():
                scores.setdefault(name, []).append(value)
    results = {name: _mean(scores.get(name, [])) for name in _metric_names(ks)}
    results.update(n_users=len(truths), n_repeat_users=n_repeat, n_explore_users=n_explore)
    return results


def _metric_names(ks: Sequence[int]) -> list[str]:
    prefixes = ("recall", "ndcg", "ndcg_min", "phr", "repeat_recall", "explore_recall")
    return [f"{prefix}@{k}" for k in ks for prefix in prefixes]
