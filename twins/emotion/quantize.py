"""Dynamic int8 variant of an emotion bundle (onnxruntime's weight-only MatMul quantisation).

Only ever shipped behind a metric check (``experiments/bench_emotion_runtime.py`` compares its test macro-F1
with the fp32 bundle's): int8 can collapse a head with extreme weights, so never assume it is harmless.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from twins import publish
from twins.export.onnx_bundle import MANIFEST_FILE, MODEL_FILE, sha256_file


def quantize_bundle(src: str | Path, dst: str | Path) -> Path:
    """Write ``dst``: a copy of bundle ``src`` whose ``model.onnx`` has int8 MatMul weights; the manifest gets the
    new sha256, ``name`` + ``-int8`` and ``quantization``. Assembled beside ``dst`` and swapped into place under
    ``dst``'s lock (``twins.publish``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    with publish.locked(dst, f"quantize {dst.name}"), publish.staged_dir(dst) as tmp:
        for file in src.iterdir():
            if file.name != MODEL_FILE:
                shutil.copyfile(file, tmp / file.name)
        quantize_dynamic(str(src / MODEL_FILE), str(tmp / MODEL_FILE), op_types_to_quantize=["MatMul"],
                         weight_type=QuantType.QInt8)
        manifest = json.loads((tmp / MANIFEST_FILE).read_text())
        manifest |= {"name": manifest["name"] + "-int8", "model_sha256": sha256_file(tmp / MODEL_FILE),
                     "quantization": "onnxruntime dynamic int8, MatMul weights (per tensor, QInt8)"}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        publish.publish_dir(tmp, dst)
    return dst
