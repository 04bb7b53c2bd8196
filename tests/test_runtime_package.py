"""The runtime on its own: the ``twins-runtime`` wheel built from ``runtime/`` holds only the runtime, and scores
bundles in a Python that can import nothing but that wheel, numpy and onnxruntime (no torch, polars, mlflow)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy
import onnxruntime
import pytest
from conftest import REPO

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*axis name:UserWarning")]

SCRIPT = """
import json, sys
import twins.runtime as rt
nbr, outlook = rt.load(sys.argv[1]), rt.load(sys.argv[2])
try:
    rt.load("models:/nbr@champion")
except LookupError as error:
    registry_error = str(error)
print(json.dumps({
    "registry_error": registry_error,
    "top": nbr.recommend_one([["i01", "i02"], ["i01"]], k=3),
    "outlook": outlook.score([[("2024-03-01T10:00:00", 20.0), ("2024-05-20T10:00:00", 35.0)]], "2024-07-01")[0]["p_alive"],
    "modules": sorted({m.split(".")[0] for m in sys.modules if not m.startswith("_")} - set(sys.stdlib_module_names)),
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO / "runtime")], check=True, timeout=120)
    return next(out.glob("twins_runtime-*.whl"))


def test_wheel_holds_only_the_runtime(wheel):
    names = {n for n in zipfile.ZipFile(wheel).namelist() if not n.startswith("twins_runtime-")}
    assert names == {"twins/__init__.py", "twins/paths.py", "twins/tracking.py",
                     *(f"twins/runtime/{p.name}" for p in (REPO / "twins" / "runtime").glob("*.py"))}
    meta = zipfile.ZipFile(wheel).read(next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))).decode()
    requires = sorted(line.split()[1] for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line)
    assert [r.split(">")[0] for r in requires] == ["numpy", "onnxruntime", "tokenizers"]


def test_runtime_scores_with_only_numpy_and_onnxruntime(wheel, nbr_bundle, outlook_bundle, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=120)
    # a path with numpy and onnxruntime and nothing else: torch, polars and mlflow cannot even be found
    for module in (numpy, onnxruntime):
        package = Path(module.__file__).parent
        for entry in package.parent.glob(f"{package.name}*"):
            if not entry.name.endswith(".dist-info"):
                (target / entry.name).symlink_to(entry)
    code = f"import sys; sys.path[:0] = [{str(target)!r}]\n" + SCRIPT
    out = subprocess.run([sys.executable, "-S", "-c", code, str(nbr_bundle), str(outlook_bundle)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["modules"] == ["numpy", "onnxruntime", "twins"]
    assert "models:/ URIs need mlflow: pip install 'twins-runtime[registry]'" in result["registry_error"]
    from twins.runtime import load

    assert [tuple(x) for x in result["top"]] == load(nbr_bundle).recommend_one([["i01", "i02"], ["i01"]], k=3)
    assert 0 < result["outlook"] <= 1
