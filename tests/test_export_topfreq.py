import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from twins.export import ParityError, check_parity, export_bundle
from twins.export.onnx_bundle import sha256_file
from twins.publish import publish_dir
from twins.models import GPTopFreq
from twins.models.topfreq_torch import FrequencyScorer, export_gp_topfreq
from twins.runtime import BundleError, NextBasketBundle, load

# torch.onnx's exporter warns about its own use of a deprecated torch API
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")

N_ITEMS = 40
TOP_K = 25


def _toy_histories(n_users: int = 120, seed: int = 0) -> dict[str, list[list[str]]]:
    """Zipf-like popularity over items i000..i039 (so counts tie often), 1-8 baskets of 1-6 items."""
    rng = np.random.default_rng(seed)
    probs = 1 / np.arange(1, N_ITEMS + 1)
    probs /= probs.sum()
    return {
        f"u{u}": [
            [f"i{j:03d}" for j in rng.choice(N_ITEMS, rng.integers(1, 7), p=probs)]
            for _ in range(rng.integers(1, 9))
        ]
        for u in range(n_users)
    }


@pytest.fixture(scope="module")
def fitted() -> tuple[GPTopFreq, dict[str, list[list[str]]]]:
    histories = _toy_histories()
    return GPTopFreq().fit(histories), histories


@pytest.fixture(scope="module")
def bundle_dir(fitted, tmp_path_factory) -> Path:
    model, _ = fitted
    return export_gp_topfreq(model, tmp_path_factory.mktemp("bundles") / "gp", k=TOP_K, metrics={"recall@10": 0.5})


def _encode(model: GPTopFreq, history: list[list[str]]) -> list[int]:
    index = {item: i + 1 for i, item in enumerate(sorted(model.popularity_))}
    return [index[item] for basket in history for item in dict.fromkeys(basket)]


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "copy"))


def test_manifest(bundle_dir, fitted):
    model, _ = fitted
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["task"] == "next_basket" and manifest["opset"] >= 17
    assert manifest["inputs"] == [{"name": "history", "dtype": "int64", "shape": ["batch", "sequence"]}]
    assert manifest["outputs"] == [
        {"name": "scores", "dtype": "float64", "shape": ["batch", TOP_K]},
        {"name": "indices", "dtype": "int64", "shape": ["batch", TOP_K]},
    ]
    assert manifest["vocabulary"] == sorted(model.popularity_)
    assert manifest["model_sha256"] == sha256_file(bundle_dir / "model.onnx")
    assert manifest["metrics"] == {"recall@10": 0.5} and manifest["training_run_id"] is None
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == ["gp"]  # no temporary folder left behind


def test_parity_at_several_batch_sizes_and_lengths(bundle_dir, fitted):
    model, histories = fitted
    scorer = FrequencyScorer.from_estimator(model, k=TOP_K)
    gen = torch.Generator().manual_seed(1)
    random_inputs = [
        (torch.randint(0, N_ITEMS + 1, (batch, length), generator=gen),)
        for batch in (1, 3, 17)
        for length in (1, 2, 9, 50, 300)
    ]
    rows = [_encode(model, h) for h in list(histories.values())[:17]]
    real = torch.zeros((17, max(map(len, rows))), dtype=torch.int64)
    for i, row in enumerate(rows):
        real[i, : len(row)] = torch.tensor(row)
    assert check_parity(scorer, bundle_dir, [*random_inputs, (real,), (real[:1],), (real[:3],)]) <= 1e-4


def test_check_parity_detects_a_different_model(bundle_dir, fitted):
    scorer = FrequencyScorer.from_estimator(fitted[0], k=TOP_K)
    scorer.prior[1:] += 1e-3
    with pytest.raises(ParityError, match="max abs diff"):
        check_parity(scorer, bundle_dir, [(torch.tensor([[1, 2, 3]]),)])


def test_runtime_matches_gp_topfreq(bundle_dir, fitted):
    model, histories = fitted
    bundle = load(bundle_dir)
    assert isinstance(bundle, NextBasketBundle)
    users = list(histories)
    for k in (1, 10, TOP_K):
        expected = model.recommend(histories, k=k)
        got = bundle.recommend([histories[u] for u in users], k=k, batch_size=7)
        assert [[item for item, _ in recs] for recs in got] == [expected[u] for u in users]
    # scores: baskets containing the item + a prior in (0, 1)
    top = bundle.recommend_one([["i005", "i005"], ["i005", "i007"]], k=3)
    assert [item for item, _ in top][:2] == ["i005", "i007"]
    assert 2 < top[0][1] < 3 and 1 < top[1][1] < 2 and 0 < top[2][1] < 1


def test_runtime_empty_and_unknown_histories_get_global_popular(bundle_dir, fitted):
    model, _ = fitted
    bundle = load(bundle_dir)
    popular = model.ranking_[:5]
    for history in ([], [[]], [["not-an-item"]]):
        assert [item for item, _ in bundle.recommend_one(history, k=5)] == popular
    assert bundle.recommend([], k=5) == []
    with pytest.raises(ValueError, match="top_k"):
        bundle.recommend_one([], k=TOP_K + 1)
    with pytest.raises(TypeError, match="string"):
        bundle.recommend_one(["i001"])


def test_runtime_keeps_the_most_recent_items(bundle_dir, fitted, tmp_path):
    model, _ = fitted
    copy = _copy(bundle_dir, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["preprocessing"]["max_history_items"] = 3
    (copy / "manifest.json").write_text(json.dumps(manifest))
    history = [["i001", "i002"], ["i003", "i001", "i001"], ["i004"]]
    # flattened, deduplicated per basket: i001 i002 i003 i001 i004 -> last 3: i003 i001 i004
    expected = model.recommend({"u": [["i003"], ["i001"], ["i004"]]}, k=6)["u"]
    assert [item for item, _ in load(copy).recommend_one(history, k=6)] == expected


def test_tampered_model_fails_the_hash(bundle_dir, tmp_path):
    copy = _copy(bundle_dir, tmp_path)
    with (copy / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 .* does not match"):
        load(copy)


def test_bad_manifests(bundle_dir, tmp_path):
    copy = _copy(bundle_dir, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "opset": 16}))
    with pytest.raises(BundleError, match="opset 16"):
        load(copy)
    (copy / "manifest.json").write_text(json.dumps({**manifest, "task": "weather"}))
    with pytest.raises(BundleError, match="unknown task 'weather'"):
        load(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: not found"):
        load(copy)
    with pytest.raises(BundleError, match="not a folder"):
        load(tmp_path / "missing")


def test_export_refuses_to_overwrite(bundle_dir, fitted):
    scorer = FrequencyScorer.from_estimator(fitted[0])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_bundle(
            scorer,
            (torch.ones((2, 2), dtype=torch.int64),),
            bundle_dir,
            {"name": "x", "version": "1", "task": "next_basket"},
            input_names=["history"],
            output_names=["scores", "indices"],
            dynamic_axes={"history": {0: "batch", 1: "sequence"}},
        )


def test_publish_dir_replaces_an_existing_folder(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "f").write_text("new")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_text("old")
    publish_dir(tmp_path / "new", tmp_path / "out")
    assert (tmp_path / "out" / "f").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_from_estimator_needs_popularity_tie_break(fitted):
    _, histories = fitted
    with pytest.raises(ValueError, match="tie_break"):
        FrequencyScorer.from_estimator(GPTopFreq(tie_break="first").fit(histories))


def test_runtime_does_not_import_torch(bundle_dir):
    code = (
        "import sys, twins.runtime as rt; b = rt.load(sys.argv[1]); b.recommend_one([['i001']]); "
        "bad = [m for m in ('torch', 'polars', 'mlflow', 'onnx') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code, str(bundle_dir)], check=True, timeout=60)
