"""Issue 23, items 1, 4 and 8: a bundle is a closed folder pinned by one digest, malformed manifests and
mismatched vocabularies are refused at load, onnxruntime's refusals say what they are, the registry cache never
hands one store's version to another, and no checkpoint or detector file is unpickled."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from twins.runtime import BundleError, load
from twins.runtime.bundle import manifest_sha256

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*axis name:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*noload:DeprecationWarning")]


def _copy(bundle: Path, dest: Path, **changes) -> Path:
    """A copy of ``bundle`` at ``dest`` whose manifest gets ``changes`` (None deletes a key)."""
    shutil.copytree(bundle, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Exploit:
    """Unpickling it creates ``marker``: stands for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ------------------------------------------------------------------------------------------- closed folders

def test_score_never_writes_where_a_manifest_name_points(tmp_path, twins_home, nbr_bundle):
    from twins import api
    from twins.score import score_store
    from twins.twin.customer import TwinParams

    (tmp_path / "log.csv").write_text("order,cust,sku,ts\n" + "".join(
        f"o{c},c{c},i{c % 7:02d},2024-01-{c + 1:02d} 10:00:00\n" for c in range(12)))
    (tmp_path / "shop.yaml").write_text("name: shop\nfiles: [{path: log.csv}]\ncolumns: {customer_id: cust, "
                                        "basket_id: order, item_id: sku, event_time: ts}\n")
    api.ingest(tmp_path / "shop.yaml", track=False)
    api.build(tmp_path / "shop.yaml", "2024-02-01", TwinParams(outlook_horizon_days=None), track=False)
    events = sorted(p.relative_to(twins_home) for p in (twins_home / "events").rglob("*"))
    for i, name in enumerate(["../../events/shop/events", "/tmp/elsewhere", ".hidden", "a/b"]):
        bad = _copy(nbr_bundle, tmp_path / f"bad{i}", name=name)
        with pytest.raises(ValueError, match="cannot name the output file.*--out"):
            score_store(bad, "shop", chunk_size=5)
    assert sorted(p.relative_to(twins_home) for p in (twins_home / "events").rglob("*")) == events
    assert not Path("/tmp/elsewhere.parquet").exists()
    assert not (twins_home / "scores").exists() or not any((twins_home / "scores").rglob("*.parquet"))
    explicit = score_store(_copy(nbr_bundle, tmp_path / "named", name="../x"), "shop", tmp_path / "out.parquet")
    assert explicit.out == tmp_path / "out.parquet" and explicit.rows == 12  # --out: the user's choice


def test_every_file_a_manifest_names_stays_inside_the_bundle(tmp_path, nbr_bundle):
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    for i, name in enumerate(["../outside.json", str(outside), "sub/../../outside.json"]):
        with pytest.raises(BundleError, match="outside the bundle"):
            load(_copy(nbr_bundle, tmp_path / f"b{i}", files={name: _sha(outside)}))
    linked = _copy(nbr_bundle, tmp_path / "linked", files={"extra.json": _sha(outside)})
    (linked / "extra.json").symlink_to(outside)
    with pytest.raises(BundleError, match="extra.json: a link leading outside the bundle folder"):
        load(linked)
    model_link = _copy(nbr_bundle, tmp_path / "model_link")
    shutil.move(model_link / "model.onnx", tmp_path / "model.onnx")
    (model_link / "model.onnx").symlink_to(tmp_path / "model.onnx")  # the right bytes, but not in the folder
    with pytest.raises(BundleError, match="model.onnx: a link leading outside"):
        load(model_link)
    inner = _copy(nbr_bundle, tmp_path / "inner", files={"extra.json": _sha(outside)})
    shutil.copy(outside, inner / "data.json")
    (inner / "extra.json").symlink_to("data.json")  # a link inside the folder is fine
    assert load(inner).recommend_one([["i01"]], k=2)


def test_the_manifest_digest_pins_the_whole_bundle(tmp_path, nbr_bundle):
    bundle = load(nbr_bundle)
    assert bundle.digest == manifest_sha256(nbr_bundle) == _sha(nbr_bundle / "manifest.json")
    assert load(nbr_bundle, expect_sha256=bundle.digest).digest == bundle.digest
    tampered = _copy(nbr_bundle, tmp_path / "tampered", metrics={"test/recall@10": 0.99})  # model still matches
    assert load(tampered).manifest["metrics"] == {"test/recall@10": 0.99}
    with pytest.raises(BundleError, match="is not the expected"):
        load(tampered, expect_sha256=bundle.digest)


@pytest.mark.parametrize("changes, key", [
    ({"inputs": "history"}, "'inputs' must be a list"),
    ({"inputs": [{"nom": "history"}]}, "missing key 'inputs\\[0\\].name'"),
    ({"outputs": [{"name": "scores", "dtype": "float64", "shape": ["batch", None]}]}, "outputs\\[0\\].shape\\[1\\]"),
    ({"version": True}, "'version' must be a string or an integer"),
    ({"opset": "18"}, "'opset' must be an integer"),
    ({"model_sha256": None}, "missing key 'model_sha256'"),
    ({"files": ["tokenizer.json"]}, "'files' must be an object"),
    ({"files": {"manifest.json": "abc"}}, "files\\['manifest.json'\\] must be the file's sha256"),
    ({"vocabulary": [1, 2]}, "vocabulary\\[0\\] must be a string"),
    ({"vocabulary": None}, "missing key 'vocabulary'"),
    ({"preprocessing": {"max_history_items": "12"}}, "'preprocessing.max_history_items' must be an integer"),
    ({"preprocessing": []}, "'preprocessing' must be an object"),
    ({"model_file": "../model.onnx"}, "'model_file' must be 'model.onnx'"),
])
def test_malformed_manifests_are_refused_naming_the_key(tmp_path, nbr_bundle, changes, key):
    with pytest.raises(BundleError, match=key):
        load(_copy(nbr_bundle, tmp_path / "b", **changes))


def test_a_manifest_that_is_not_an_object_is_refused(tmp_path, nbr_bundle):
    copy = _copy(nbr_bundle, tmp_path / "b")
    (copy / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="must hold a JSON object"):
        load(copy)


def test_a_vocabulary_that_does_not_cover_the_graph_is_refused_at_load(tmp_path, nbr_bundle):
    vocabulary = load(nbr_bundle).vocabulary
    for name, words in (("short", vocabulary[:-1]), ("long", [*vocabulary, "i99"]), ("twice", [*vocabulary[:-1], "i00"])):
        with pytest.raises(BundleError, match="vocabulary"):
            load(_copy(nbr_bundle, tmp_path / name, vocabulary=words))


def test_a_neural_graph_must_match_the_vocabulary(tmp_path):
    """Another export's model.onnx (9 or 5 items, not 7), hashed into the manifest: the neighbour file still agrees with
    the vocabulary, the graph's width does not."""
    from twins.models.nbr_net import NeuralNextBasket
    from twins.models.nbr_net_export import export_nbr_net

    def export(n_items: int, out: Path) -> Path:
        histories = {f"u{u}": [[f"i{(u + b) % n_items}", f"i{(u * b) % n_items}"] for b in range(3)] for u in range(24)}
        targets = {u: h[-1] for u, h in histories.items()}
        model = NeuralNextBasket(knn=5, dim=8, hidden=8, max_epochs=1, batch_size=8).fit(histories, targets)
        return export_nbr_net(model, out, k=3)

    seven = export(7, tmp_path / "seven")
    assert load(seven).recommend_one([["i1"]], k=3)
    for other in (9, 5):  # a wider graph and a narrower one
        shutil.copy(export(other, tmp_path / str(other)) / "model.onnx", seven / "model.onnx")
        manifest = json.loads((seven / "manifest.json").read_text())
        (seven / "manifest.json").write_text(json.dumps(manifest | {"model_sha256": _sha(seven / "model.onnx")}))
        with pytest.raises(BundleError, match="vocabulary's 7 items do not match the graph"):
            load(seven)


def test_external_data_is_refused_even_when_listed_and_hashed(tmp_path, nbr_bundle):
    import onnx

    copy = _copy(nbr_bundle, tmp_path / "ext")
    model = onnx.load(str(copy / "model.onnx"))
    onnx.save(model, str(copy / "model.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest |= {"model_sha256": _sha(copy / "model.onnx"), "files": {"weights.bin": _sha(copy / "weights.bin")}}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="external data") as refused:
        load(copy)
    assert "Upgrade onnxruntime" not in str(refused.value)


def test_onnxruntime_refusals_say_what_they_are(tmp_path, nbr_bundle):
    corrupt = _copy(nbr_bundle, tmp_path / "corrupt")
    (corrupt / "model.onnx").write_bytes(b"\x08\x07 this is not a protobuf" * 10)
    manifest = json.loads((corrupt / "manifest.json").read_text())
    (corrupt / "manifest.json").write_text(json.dumps(manifest | {"model_sha256": _sha(corrupt / "model.onnx")}))
    with pytest.raises(BundleError, match="corrupt or truncated") as refused:
        load(corrupt)
    assert "Upgrade onnxruntime" not in str(refused.value)


# ------------------------------------------------------------------------------------------- registry

def _register_in(monkeypatch, uri: str | None, bundle: Path, name: str) -> str:
    from twins import registry

    if uri is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return registry.log_bundle(bundle, name).version


@pytest.mark.slow
def test_registry_cache_keeps_stores_and_versions_apart(mlflow_home, nbr_bundle, tmp_path, monkeypatch):
    """Store A is $TWINS_HOME's SQLite store, store B another one; both have shopmodel/1, with other bundles."""
    import mlflow

    from twins.runtime.registry import cache_dir

    monkeypatch.chdir(tmp_path)  # store B keeps its artifacts in ./mlruns, as mlflow does for a bare SQLite URI
    name, other = "hardening-shopmodel", _copy(nbr_bundle, tmp_path / "other", version="2")
    assert _register_in(monkeypatch, None, nbr_bundle, name) == "1"
    first = load(f"models:/{name}/1")
    assert first.manifest["version"] == "1"
    store_b = f"sqlite:///{tmp_path / 'b.db'}"
    assert _register_in(monkeypatch, store_b, other, name) == "1"
    second = load(f"models:/{name}/1")
    assert second.manifest["version"] == "2" and second.path != first.path
    assert second.digest == manifest_sha256(other)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert load(f"models:/{name}/1").manifest["version"] == "1"  # store A's own copy again
    assert all(p.is_relative_to(cache_dir()) for p in (first.path, second.path))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o777 & ~umask  # a service running as another user reads it

    # a version whose stored manifest was changed (the model still matching it) is refused after download
    version = _register_in(monkeypatch, None, nbr_bundle, name)
    client = mlflow.MlflowClient(f"sqlite:///{mlflow_home / 'mlflow.db'}")
    model_id = client.get_model_version(name, version).source.removeprefix("models:/")
    stored = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    manifest = json.loads((stored / "manifest.json").read_text())
    (stored / "manifest.json").write_text(json.dumps(manifest | {"metrics": {"test/recall@10": 0.99}}))
    with pytest.raises(BundleError, match="recorded at registration"):
        load(f"models:/{name}/{version}")
    client.delete_model_version_tag(name, version, "bundle_sha256")
    from twins.runtime.registry import RegistryError

    with pytest.raises(RegistryError, match="without a valid bundle digest"):
        load(f"models:/{name}/{version}")


# ------------------------------------------------------------------------------------------- no pickle

def test_checkpoints_load_without_unpickling_code_and_resume_the_random_streams(tmp_path):
    import torch

    from twins.training import LAST, load_checkpoint, save_checkpoint

    state = {"epoch": 3, "best": np.float64(0.25), "history": [{"valid": np.float32(0.5)}], "order": np.arange(3)}
    save_checkpoint(tmp_path, LAST, {"net": {"w": torch.ones(2)}, "state": state, "fingerprint": "f"})
    after_save = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    saved = load_checkpoint(tmp_path, "f", torch.device("cpu"))  # torch.load(weights_only=True) took it all
    assert saved["state"]["best"] == 0.25 and torch.equal(saved["state"]["order"], torch.arange(3))
    assert torch.equal(torch.rand(3), after_save[0]) and np.array_equal(np.random.rand(3), after_save[1])
    assert random.random() == after_save[2]  # every generator continues where the checkpoint left it

    marker = tmp_path / "pwned"
    torch.save({"fingerprint": "f", "net": Exploit(marker)}, tmp_path / LAST)
    with pytest.raises(ValueError, match="refuses to load"):
        load_checkpoint(tmp_path, "f", torch.device("cpu"))
    assert not marker.exists()
    (tmp_path / LAST).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path, "f", torch.device("cpu"))


def test_a_detector_file_runs_no_code_when_loaded(tmp_path):
    import polars as pl
    import skops.io

    from twins.models.machine_detector import MachineDetector, load_detector, save_detector
    from twins.twin.behaviour import BEHAVIOUR_FEATURES

    rng = np.random.default_rng(0)
    X = pl.DataFrame({f: rng.normal(size=200) for f in BEHAVIOUR_FEATURES})
    y = (X[BEHAVIOUR_FEATURES[0]] > 0).to_numpy()
    for model in ("boosting", "logistic"):
        detector = MachineDetector(model=model, max_iter=20).fit(X, y)
        path = save_detector(detector, tmp_path / f"{model}.skops")
        assert np.allclose(load_detector(path).predict_proba(X), detector.predict_proba(X))

    marker = tmp_path / "pwned"
    (tmp_path / "old.joblib").write_bytes(pickle.dumps({"detector": Exploit(marker)}))  # joblib reads pickles
    with pytest.raises(ValueError, match="cannot be read as a detector file"):
        load_detector(tmp_path / "old.joblib")
    skops.io.dump({"detector": Exploit(marker)}, tmp_path / "foreign.skops")
    with pytest.raises(ValueError, match="test_hardening_bundles.Exploit.*refused without loading"):
        load_detector(tmp_path / "foreign.skops")
    assert not marker.exists()
