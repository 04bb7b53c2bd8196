"""Shared fixtures: every test gets its own TWINS_HOME (events, twin store, MLflow) in a temp folder."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def twins_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "twins_home"
    monkeypatch.setenv("TWINS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture
def torchrun_histories(tmp_path) -> Callable[[str], dict[int, list]]:
    """Run ``body`` under ``torchrun`` with two CPU processes (gloo); returns ``{rank: history}``.

    ``body`` runs after ``import json, os, sys, torch`` with one torch thread and the tests folder on ``sys.path``;
    ``sys.argv[1]`` is the checkpoint folder ``tmp_path / "ckpt"``; it binds ``history`` (JSON-able). Each rank
    reports it in one ``os.write``: print's separate writes interleave between the ranks."""

    def run(body: str) -> dict[int, list]:
        script = tmp_path / "train.py"
        script.write_text("import json, os, sys\nimport torch\ntorch.set_num_threads(1)\nsys.path.insert(0, sys.argv[2])\n"
                          + body + "\nos.write(1, f\"HISTORY {os.environ['RANK']} {json.dumps(history)}\\n\".encode())\n")
        torchrun = Path(sys.executable).with_name("torchrun")
        out = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(script), str(tmp_path / "ckpt"),
                              str(Path(__file__).parent)], capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stderr[-2000:]
        lines = [line.split(" ", 2) for line in out.stdout.splitlines() if line.startswith("HISTORY ")]
        return {int(rank): json.loads(history) for _, rank, history in lines}

    return run


def needs_shared_data(*parts: str):
    """Skip (saying why) when the shared data sets are not beside the repository."""
    path = SHARED_DATA.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present (the shared data sets live in ../shared/data)")


@pytest.fixture(scope="session")
def nbr_bundle(tmp_path_factory) -> Path:
    """A GP-TopFreq next-basket bundle (top 20 of 30 items i00..i29, popularity falling with the index)."""
    import numpy as np

    from twins.models import GPTopFreq
    from twins.models.topfreq_torch import export_gp_topfreq

    rng = np.random.default_rng(0)
    p = 1 / np.arange(1, 31)
    histories = {f"u{u}": [[f"i{j:02d}" for j in rng.choice(30, rng.integers(1, 5), replace=False, p=p / p.sum())]
                           for _ in range(rng.integers(1, 6))] for u in range(80)}
    return export_gp_topfreq(GPTopFreq().fit(histories), tmp_path_factory.mktemp("nbr") / "gp", k=20)


@pytest.fixture(scope="session")
def outlook_bundle(tmp_path_factory) -> Path:
    """A purchase-outlook bundle with CDNOW's published BG/NBD and Gamma-Gamma estimates, 28-day horizon."""
    from twins.models.btyd import BetaGeoModel, GammaGammaModel
    from twins.models.outlook_export import export_outlook

    bg = BetaGeoModel.from_params({"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426})
    gg = GammaGammaModel.from_params({"p": 6.25, "q": 3.74, "gamma": 15.44})
    return export_outlook(bg, gg, tmp_path_factory.mktemp("outlook") / "outlook", horizon_days=28.0)


@pytest.fixture(scope="session")
def _shared_mlflow_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow_home")


@pytest.fixture
def mlflow_home(_shared_mlflow_home, twins_home, monkeypatch) -> Path:
    """One TWINS_HOME (SQLite MLflow store) per test session: its first migration takes seconds. Tests using it
    share runs and registered models, so each uses its own names."""
    monkeypatch.setenv("TWINS_HOME", str(_shared_mlflow_home))
    return _shared_mlflow_home
