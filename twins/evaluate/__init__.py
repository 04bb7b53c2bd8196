"""Evaluation: next-basket ranking metrics and the user-split protocol."""

from twins.evaluate.metrics import (
    evaluate_rankings,
    explore_recall_at_k,
    ndcg_at_k,
    phr_at_k,
    recall_at_k,
    repeat_recall_at_k,
)
from twins.evaluate.next_basket import id_order_split, split_history_target, split_users

__all__ = [
    "evaluate_rankings",
    "explore_recall_at_k",
    "id_order_split",
    "ndcg_at_k",
    "phr_at_k",
    "recall_at_k",
    "repeat_recall_at_k",
    "split_history_target",
    "split_users",
]
