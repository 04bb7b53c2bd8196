"""The next-basket benchmark's acceptance line: per-seed values and issue 4's verdict from the mean metrics."""

from experiments.next_basket_baselines import acceptance


def _rows(neural: tuple[float, float], reranker: tuple[float, float]) -> list[dict]:
    means = {"neural": neural, "reranker": reranker, "tifuknn_tuned": (0.14, 0.13)}
    return [{"model": m, "seed": s, "recall@10": r + d, "ndcg@10": n + d}
            for m, (r, n) in means.items() for s, d in enumerate((-0.01, 0.01))]


def test_complete_journey_needs_both_metrics_above_both_baselines():
    text = acceptance("complete_journey", _rows((0.16, 0.15), (0.155, 0.14)))
    assert "neural 0.1500 / 0.1700" in text and ": met" in text and "neural 0.1600 / 0.1500" in text
    assert "R@10 2 of 2, NDCG@10 2 of 2" in text
    below = acceptance("complete_journey", _rows((0.16, 0.139), (0.155, 0.14)))  # NDCG below the re-ranker
    assert "NOT met" in below and "R@10 2 of 2, NDCG@10 0 of 2" in below


def test_thresholds_on_the_tafeng_versions():
    assert "NOT met" in acceptance("tafeng_realitycheck", _rows((0.181, 0.157), (0.17, 0.15)))  # NDCG 0.157 < 0.158
    assert ": met" in acceptance("tafeng_realitycheck", _rows((0.181, 0.159), (0.17, 0.15)))
    dnntsp = acceptance("tafeng_dnntsp", _rows((0.19, 0.15), (0.2, 0.15)))
    assert ": met" in dnntsp and "PIETSP 0.187" in dnntsp
    assert "Acceptance" not in acceptance("other", _rows((0.19, 0.15), (0.2, 0.15)))
