"""ONNX export of the learned seller policy (the contextual bandit), so that a sales system quotes without
torch or scikit-learn: onnxruntime and numpy only.

The bundle is a folder: ``model.onnx`` (opset 17, dynamic batch; input ``X`` float32 ``[n, len(FEATURES)]``,
output ``offer`` float32 ``[n, 4]`` = ``OFFER``) and ``manifest.json`` (name, task ``seller_bandit``, opset, the
feature and offer names, arms, sha256 of the model). The graph is the bandit's ``predict``: arm values
``[1, agent_declared, log1p(quantity), counter_ratio (nan as 0)] @ coef.T``, the best arm's price multiple of the
list price, the floor ``floor_share`` of the way to cost, 2 concession rounds, standard delivery. The twin policy
has no learned parts (its parameters are numbers chosen on development markets) and needs no export.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from twins.commerce.policies import COL, FEATURES, OFFER, STANDARD_DAYS

TASK = "seller_bandit"
OPSET = 17


def _graph(coef: np.ndarray, arms: np.ndarray, floor_share: float):
    from onnx import TensorProto, helper, numpy_helper

    f32 = np.float32
    init = [numpy_helper.from_array(np.asarray(v, dtype), name) for name, v, dtype in [
        ("ctx_cols", [COL["agent_declared"], COL["quantity"], COL["counter_ratio"]], np.int64),
        ("lp_col", [COL["list_price"]], np.int64), ("cost_col", [COL["unit_cost"]], np.int64),
        ("w", coef[:, 1:].T, f32), ("b", coef[:, 0], f32), ("arms", arms, f32),
        ("log_mask", [0, 1, 0], f32), ("one", 1.0, f32), ("zero", 0.0, f32),
        ("share", floor_share, f32), ("tail", [2.0, STANDARD_DAYS], f32)]]
    n = helper.make_node
    nodes = [
        n("Gather", ["X", "ctx_cols"], ["raw"], axis=1),
        n("IsNaN", ["raw"], ["nan"]), n("Where", ["nan", "zero", "raw"], ["clean"]),
        # log1p on the quantity column only: x + mask * (log1p(x) - x)
        n("Add", ["clean", "one"], ["plus1"]), n("Log", ["plus1"], ["log1p"]), n("Sub", ["log1p", "clean"], ["dlog"]),
        n("Mul", ["dlog", "log_mask"], ["dlog_m"]), n("Add", ["clean", "dlog_m"], ["ctx"]),
        n("MatMul", ["ctx", "w"], ["wx"]), n("Add", ["wx", "b"], ["value"]),
        n("ArgMax", ["value"], ["arm"], axis=1, keepdims=1, select_last_index=0),
        n("Gather", ["arms", "arm"], ["multiple"]),
        n("Gather", ["X", "lp_col"], ["lp"], axis=1), n("Gather", ["X", "cost_col"], ["cost"], axis=1),
        n("Mul", ["lp", "multiple"], ["price"]), n("Sub", ["price", "cost"], ["room"]),
        n("Mul", ["room", "share"], ["give"]), n("Sub", ["price", "give"], ["floor_raw"]),
        n("Min", ["floor_raw", "price"], ["floor"]),
        n("Mul", ["price", "zero"], ["zeros"]), n("Add", ["zeros", "tail"], ["rest"]),
        n("Concat", ["price", "floor", "rest"], ["offer"], axis=1),
    ]
    graph = helper.make_graph(nodes, "seller_bandit",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", len(FEATURES)])],
                              [helper.make_tensor_value_info("offer", TensorProto.FLOAT, ["n", len(OFFER)])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="twins")
    import onnx

    onnx.checker.check_model(model, full_check=True)
    return model


def export_bandit(policy, folder: str | Path, name: str = "seller-bandit") -> Path:
    """Write a fitted ``BanditPolicy`` as a bundle folder (module docstring); returns the folder."""
    from twins import publish
    from twins.runtime.bundle import sha256_file

    if not hasattr(policy, "coef_"):
        raise ValueError("the bandit is not fitted (no coef_): fit it, or run it in the agent market, first")
    folder = Path(folder)
    model = _graph(np.asarray(policy.coef_, np.float32), np.asarray(policy.arms, np.float32), float(policy.floor_share))
    with publish.staged_dir(folder) as tmp:
        (tmp / "model.onnx").write_bytes(model.SerializeToString())
        manifest = {"name": name, "version": 1, "task": TASK, "opset": OPSET, "inputs": {"X": FEATURES},
                    "outputs": {"offer": OFFER}, "arms": [float(a) for a in policy.arms],
                    "floor_share": float(policy.floor_share), "model_sha256": sha256_file(tmp / "model.onnx")}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        publish.publish_dir(tmp, folder)
    return folder


class OnnxBandit:
    """The exported bandit, answering like ``BanditPolicy.predict`` through onnxruntime."""

    def __init__(self, folder: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        from twins.runtime.bundle import sha256_file

        folder = Path(folder)
        where = folder / "manifest.json"
        try:
            manifest = json.loads(where.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{where}: cannot read the bundle manifest ({error}); export it with "
                             "twins.commerce.onnx_policy.export_bandit") from None
        if manifest.get("task") != TASK or manifest.get("inputs", {}).get("X") != FEATURES:
            raise ValueError(f"{where}: not a seller bandit for this version's features (task {manifest.get('task')!r}, "
                             f"want {TASK!r} over {FEATURES}); export it again with this twins")
        if sha256_file(folder / "model.onnx") != manifest.get("model_sha256"):
            raise ValueError(f"{folder / 'model.onnx'}: sha256 differs from the manifest's model_sha256; the file "
                             "changed after export: export it again")
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.manifest = manifest

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X, np.float32)
        return self.session.run(["offer"], {"X": X})[0].astype(np.float64)
