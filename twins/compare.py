"""Compare the runs of an MLflow experiment (``twins compare``): model × data set × seed, mean ± std, PNG plots.

Reads the child runs that pipelines log per model and seed (tags ``model``, ``dataset`` and, where a pipeline
repeats over seeds, ``seed``; metrics ``test/...``, DESIGN §7). When an experiment was run several times, the
latest run of each (model, data set, seed) counts, so reruns do not add seeds. The terminal table (``rows``) has a
model per row and a few metrics as columns (``DEFAULT_METRICS`` for the kind of experiment the metrics show), each
marked with its better direction (``direction``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from twins import paths, tracking

KEYS = ("dataset", "model", "seed")
#: the metrics shown by default, per kind of experiment, most telling first; the kind is the list the experiment's
#: metrics overlap most (an experiment of none of these kinds shows its first ``MAX_DEFAULT`` test metrics)
DEFAULT_METRICS = {
    "next_basket": ["test/recall@10", "test/ndcg@10", "test/phr@10", "test/repeat_recall@10", "test/explore_recall@10"],
    "emotion": ["test/macro_f1/labels", "test/macro_f1/ekman", "test/macro_f1/sentiment"],
    "outlook": ["test/count/mae", "test/count/spearman", "test/spend/mae", "test/spend/spearman", "test/any/auc"],
    "replenishment": ["test/time_mae", "test/time_mae_observed", "test/quantity_mae", "test/time_coverage",
                      "test/quantity_coverage"],
}
MAX_DEFAULT = 5
#: name parts (or their words, split at ``_``) that say which way is better
HIGHER = ("recall", "ndcg", "ndcg_min", "phr", "precision", "hit_rate", "f1", "auc", "accuracy", "spearman", "pearson",
          "r2")
LOWER = ("mae", "rmse", "mape", "loss", "error", "seconds", "brier")
ARROWS = {1: "↑", -1: "↓", 0: ""}


def direction(metric: str) -> int:
    """1: higher is better, -1: lower is better, 0: neither (e.g. a coverage, a count or a ratio whose target is 1).
    Read from the metric's name parts, last first: ``test/count/mae`` -> -1, ``test/macro_f1/ekman`` -> 1."""
    for part in reversed(metric.replace("@", "/").split("/")):
        if part in HIGHER or any(word in HIGHER for word in part.split("_")):
            return 1
        if part in LOWER or any(word in LOWER for word in part.split("_")):
            return -1
    return 0


def default_metrics(have: list[str]) -> list[str]:
    """The metrics a comparison shows when none is asked for (see ``DEFAULT_METRICS``)."""
    kind = max(DEFAULT_METRICS.values(), key=lambda wanted: len(set(wanted) & set(have)))
    chosen = [m for m in kind if m in have]
    return chosen or [m for m in have if not m.startswith("test/n_")][:MAX_DEFAULT]  # n_users: counts, not scores


def number(value: float, spread: float | None = None) -> str:
    """``0.1234``, ``40.12`` or ``1,234``; with ``spread`` (a std over seeds) ``0.1234 ±0.0012`` in the same
    decimals."""
    if math.isnan(value):
        return "–"
    decimals = 0 if abs(value) >= 1000 else 2 if abs(value) >= 10 else 4
    text = f"{value:,.{decimals}f}"
    return text if spread is None else f"{text} ±{spread:,.{decimals}f}"


@dataclass
class Comparison:
    """``runs``: one dict per (data set, model, seed); ``summary``: per (data set, model), ``n`` seeds and
    ``{metric: (mean, sample std)}``; ``plots``: one PNG per metric."""

    experiment: str
    metrics: list[str]
    runs: list[dict]
    summary: list[dict] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)

    def table(self) -> list[str]:
        """The summary as Markdown table lines (no ± where a model ran once)."""
        lines = ["| dataset | model | seeds | " + " | ".join(self.metrics) + " |", "|---" * (3 + len(self.metrics)) + "|"]
        for row in self.summary:
            cells = [("–" if math.isnan(m) else f"{m:.4f}" if row["n"] == 1 else f"{m:.4f} ± {s:.4f}")
                     for m, s in (row[k] for k in self.metrics)]
            lines.append(f"| {row['dataset']} | {row['model']} | {row['n']} | " + " | ".join(cells) + " |")
        return lines

    def header(self) -> list[str]:
        """Column titles for ``rows``: model, the data set (if several), seeds (if the models ran a different number
        of times) and each metric without its ``test/`` prefix, with its arrow (↑ higher is better, ↓ lower)."""
        titles = ["model"] + (["dataset"] if self._datasets() else []) + (["seeds"] if self._seeds() else [])
        return titles + [f"{m.removeprefix('test/')} {ARROWS[direction(m)]}".rstrip() for m in self.metrics]

    def rows(self) -> list[tuple[list[str], set[int]]]:
        """Cells per model, ordered by the first metric, best first, and the indexes of the cells holding the best
        value of their metric. A metric's cell is its mean, and ``±std`` on a second line where a model ran more
        than once."""
        first = self.metrics[0]
        sign = direction(first) or 1
        ordered = sorted(self.summary, key=lambda r: (math.isnan(r[first][0]), -sign * r[first][0]))
        best = {}
        for m in self.metrics:
            values = [r[m][0] for r in self.summary if not math.isnan(r[m][0])]
            if direction(m) and len({*values}) > 1:
                best[m] = max(values) if direction(m) > 0 else min(values)
        lead = 1 + self._datasets() + self._seeds()
        out = []
        for r in ordered:
            cells = [r["model"]] + ([r["dataset"]] if self._datasets() else []) + ([str(r["n"])] if self._seeds() else [])
            cells += [number(r[m][0]) + (f"\n±{number(r[m][1])}" if r["n"] > 1 and not math.isnan(r[m][0]) else "")
                      for m in self.metrics]
            out.append((cells, {lead + i for i, m in enumerate(self.metrics) if best.get(m) == r[m][0]}))
        return out

    def terminal_table(self, width: int = 80):
        """A ``rich`` table of ``rows`` for a terminal ``width`` columns wide (80-120): long metric names break after
        a ``_`` or ``/``, best values in bold; what does not fit wraps, nothing is cut."""
        from rich import box
        from rich.table import Table
        from rich.text import Text

        counts = sorted({r["n"] for r in self.summary})
        spread = ("one run per model" if counts == [1] else f"mean ±std over {counts[0]} seeds" if len(counts) == 1
                  else "mean ±std over seeds")
        table = Table(title=f"{self.experiment}: {spread}; ↑ higher is better, ↓ lower, best in bold",
                      title_justify="left", box=box.SIMPLE_HEAD, leading=int(counts[-1] > 1))
        lead = 1 + self._datasets() + self._seeds()
        titles = [t if i < lead else wrap_title(t) for i, t in enumerate(self.header())]
        rows = self.rows()
        widths = [max(len(line) for text in [title, *(cells[i] for cells, _ in rows)] for line in text.splitlines())
                  for i, title in enumerate(titles)]
        fits = sum(widths) + 2 * len(widths) <= width  # then no title breaks before its arrow
        for i, title in enumerate(titles):
            table.add_column(title, justify="left" if i == 0 else "right", overflow="fold",
                             min_width=widths[i] if fits else None)
        for cells, best in rows:
            table.add_row(*[Text(c, style="bold" if i in best else "") for i, c in enumerate(cells)])
        return table

    def _datasets(self) -> bool:
        return len({r["dataset"] for r in self.summary}) > 1

    def _seeds(self) -> bool:
        return len({r["n"] for r in self.summary}) > 1


def wrap_title(title: str, width: int = 12) -> str:
    """``explore_recall@10 ↑`` -> ``explore_\nrecall@10 ↑``: lines of at most ``width`` where a break after ``_``
    or ``/`` allows (a part longer than that stays whole)."""
    parts, line, lines = [], "", []
    for ch in title:
        line += ch
        if ch in "_/":
            parts.append(line)
            line = ""
    parts.append(line)
    line = ""
    for part in parts:
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    return "\n".join([*lines, line])


def load_runs(experiment: str) -> list[dict]:
    """The latest child run per (dataset, model, seed): its keys, run id and ``test/...`` metrics (MLflow names
    ``test/recall_at_10`` are shown as ``test/recall@10``)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no experiment {experiment!r} in {tracking.tracking_uri()}")
    found = client.search_runs([exp.experiment_id], "tags.model != ''", max_results=50_000,
                               order_by=["attributes.start_time DESC"])
    latest: dict[tuple, dict] = {}
    for run in found:
        tags = run.data.tags
        key = (tags.get("dataset", "?"), tags["model"], tags.get("seed", "-"))  # "-": a pipeline run once, no seeds
        if key not in latest:
            metrics = {name.replace("_at_", "@"): value for name, value in run.data.metrics.items() if name.startswith("test/")}
            latest[key] = dict(zip(KEYS, key), run_id=run.info.run_id, start=run.info.start_time, **metrics)
    return sorted(latest.values(), key=lambda r: r["start"])


def compare(experiment: str, metrics: list[str] | None = None, out_dir: str | Path | None = None) -> Comparison:
    """Summarise ``experiment`` by data set and model over seeds, and plot each metric to
    ``out_dir`` (default ``$TWINS_HOME/compare/<experiment>``). ``metrics`` default: ``default_metrics``;
    ``["all"]``: every ``test/`` metric the runs have."""
    runs = load_runs(experiment)
    if not runs:
        raise ValueError(f"experiment {experiment!r} has no runs tagged with a model in {tracking.tracking_uri()}; "
                         "run a pipeline first (e.g. `twins run configs/pipelines/tafeng_next_basket.yaml`)")
    have = sorted({k for r in runs for k in r if k.startswith("test/")})
    metrics = have if metrics == ["all"] else metrics or default_metrics(have)
    unknown = [m for m in metrics if m not in have]
    if unknown:
        raise ValueError(f"metrics {unknown} are not in experiment {experiment!r}; it has {have} (or give `all`)")
    result = Comparison(experiment, metrics, runs)
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["model"]), []).append(run)
    for (dataset, model), rows in groups.items():
        entry = {"dataset": dataset, "model": model, "n": len(rows)}
        for m in metrics:
            values = [r[m] for r in rows if m in r]
            entry[m] = (statistics.fmean(values) if values else math.nan,
                        statistics.stdev(values) if len(values) > 1 else 0.0)
        result.summary.append(entry)
    out = Path(out_dir) if out_dir else paths.twins_home() / "compare" / experiment
    result.plots = [plot(result, m, out / f"{m.replace('/', '_').replace('@', '_at_')}.png") for m in metrics]
    return result


def plot(comparison: Comparison, metric: str, path: Path) -> Path:
    """A bar per (model, data set) with the std over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in comparison.summary))
    models = list(dict.fromkeys(r["model"] for r in comparison.summary))
    width = 0.8 / len(datasets)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(models) + 2), 3.6))
    for d, dataset in enumerate(datasets):
        rows = {r["model"]: r[metric] for r in comparison.summary if r["dataset"] == dataset}
        xs = [i + (d - (len(datasets) - 1) / 2) * width for i, m in enumerate(models) if m in rows]
        means = [rows[m][0] for m in models if m in rows]
        stds = [rows[m][1] for m in models if m in rows]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=dataset)
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set_ylabel(f"{metric} {ARROWS[direction(metric)]}".rstrip())
    ax.set_title(f"{comparison.experiment}: {metric} (mean ± std over seeds)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
