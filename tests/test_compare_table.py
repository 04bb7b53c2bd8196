"""`twins compare` in a terminal (issue 25): models as rows, a few chosen metrics as columns with the better
direction, no ± for single runs, nothing cut in an 80-column terminal; no MLflow store needed."""

from __future__ import annotations

import io
import math

from rich.console import Console

from twins.compare import Comparison, default_metrics, direction, number, wrap_title

NBR = ["test/recall@10", "test/ndcg@10", "test/phr@10", "test/repeat_recall@10", "test/explore_recall@10"]


def _comparison(n: int, metrics: list[str] = NBR) -> Comparison:
    values = {"gp_topfreq": 0.13, "g_topfreq": 0.07, "tifuknn_tuned": 0.151, "reranker": 0.1}
    summary = [{"dataset": "tafeng", "model": model, "n": n,
                **{m: (v * (i + 1), 0.0123 if n > 1 else 0.0) for i, m in enumerate(metrics)}}
               for model, v in values.items()]
    return Comparison("tafeng-next-basket", metrics, [], summary)


def _render(comparison: Comparison, width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(comparison.terminal_table(width))
    return out.getvalue().splitlines()


def test_directions_and_defaults_per_kind_of_experiment():
    assert [direction(m) for m in NBR] == [1, 1, 1, 1, 1]
    assert direction("test/count/mae") == direction("test/time_mae_observed") == direction("train/fit_seconds") == -1
    assert direction("test/macro_f1/ekman") == direction("test/any/auc") == direction("test/count/spearman") == 1
    assert direction("test/count/sum_ratio") == direction("test/time_coverage") == direction("test/n_users") == 0
    have = sorted([*NBR, "test/recall@20", "test/ndcg_min@10", "test/n_users"])
    assert default_metrics(have) == NBR  # chosen and ordered, not every metric alphabetically
    emotion = ["test/f1/admiration", "test/f1/anger", "test/macro_f1/ekman", "test/macro_f1/labels", "test/macro_f1/sentiment"]
    assert default_metrics(emotion) == ["test/macro_f1/labels", "test/macro_f1/ekman", "test/macro_f1/sentiment"]
    assert default_metrics(["test/n_rows", "test/x", "test/y"]) == ["test/x", "test/y"]  # an unknown kind: its metrics
    assert number(0.12345) == "0.1235" and number(40.123, 1.5) == "40.12 ±1.50" and number(12345.6) == "12,346"
    assert number(math.nan) == "–"
    assert wrap_title("explore_recall@10 ↑") == "explore_\nrecall@10 ↑" and wrap_title("ndcg@10 ↑") == "ndcg@10 ↑"


def test_single_runs_show_no_spread_and_models_are_rows_best_first():
    once = _comparison(1)
    assert once.header() == ["model", "recall@10 ↑", "ndcg@10 ↑", "phr@10 ↑", "repeat_recall@10 ↑", "explore_recall@10 ↑"]
    rows = once.rows()
    assert [cells[0] for cells, _ in rows] == ["tifuknn_tuned", "gp_topfreq", "reranker", "g_topfreq"]
    assert rows[0][0][1] == "0.1510" and rows[0][1] == {1, 2, 3, 4, 5}  # the best of every metric, in bold
    text = "\n".join(_render(once, 80))
    assert "±" not in text and "± 0.0000" not in "\n".join(once.table())
    assert "one run per model" in text and "↑ higher is better" in text


def test_the_table_fits_80_columns_without_cutting_a_value():
    for n in (1, 3):
        comparison = _comparison(n)
        lines = _render(comparison, 80)
        assert max(len(line.rstrip()) for line in lines) <= 80
        text = "\n".join(lines)
        assert "…" not in text and "tifuknn_tuned" in text  # names and values whole
        for cells, _ in comparison.rows():
            for cell in cells[1:]:
                assert all(part in text for part in cell.split("\n"))
    three = "\n".join(_render(_comparison(3), 120))
    assert "±0.0123" in three and "mean ±std over 3 seeds" in three
    assert "| tafeng | gp_topfreq | 3 | 0.1300 ± 0.0123 |" in "\n".join(_comparison(3).table())  # Markdown as before
