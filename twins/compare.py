"""Compare the runs of an MLflow experiment (``twins compare``): model × data set × seed, mean ± std, PNG plots.

Reads the child runs that pipelines log per model and seed (tags ``model``, ``dataset`` and, where a pipeline
repeats over seeds, ``seed``; metrics ``test/...``, DESIGN §7). When an experiment was run several times, the
latest run of each (model, data set, seed) counts, so reruns do not add seeds.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from twins import paths, tracking

KEYS = ("dataset", "model", "seed")


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
        """The summary as Markdown table lines."""
        lines = ["| dataset | model | seeds | " + " | ".join(self.metrics) + " |", "|---" * (3 + len(self.metrics)) + "|"]
        for row in self.summary:
            cells = [f"{m:.4f} ± {s:.4f}" if not math.isnan(m) else "–" for m, s in (row[k] for k in self.metrics)]
            lines.append(f"| {row['dataset']} | {row['model']} | {row['n']} | " + " | ".join(cells) + " |")
        return lines


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
    ``out_dir`` (default ``$TWINS_HOME/compare/<experiment>``). ``metrics`` default: every ``test/`` metric
    the runs have but the user counts (``test/n_...``), which can still be asked for."""
    runs = load_runs(experiment)
    if not runs:
        raise ValueError(f"experiment {experiment!r} has no runs tagged with a model in {tracking.tracking_uri()}; "
                         "run a pipeline first (e.g. `twins run configs/pipelines/tafeng_next_basket.yaml`)")
    have = sorted({k for r in runs for k in r if k.startswith("test/")})
    metrics = metrics or [m for m in have if not m.startswith("test/n_")]  # n_users, n_explore_users: counts, not scores
    unknown = [m for m in metrics if m not in have]
    if unknown:
        raise ValueError(f"metrics {unknown} are not in experiment {experiment!r}; it has {have}")
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
    ax.set_ylabel(metric)
    ax.set_title(f"{comparison.experiment}: {metric} (mean ± std over seeds)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
