"""Shared fixtures: every test gets its own TWINS_HOME (events, twin store, MLflow) in a temp folder."""

from __future__ import annotations

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


def needs_shared_data(*parts: str):
    """Skip (saying why) when the shared data sets are not beside the repository."""
    path = SHARED_DATA.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present (the shared data sets live in ../shared/data)")
