"""Write ONNX bundles (DESIGN.md section 6) and check them against PyTorch.

A bundle is a folder holding ``model.onnx`` (weights inside, dynamic axes) and ``manifest.json``. The manifest is
the caller's dict (name, version, task, vocabulary, preprocessing, metrics, training run id, ...) completed here
with what only the export knows: input/output names, dtypes and shapes as read back from the ONNX graph, the
opset and the sha256 of ``model.onnx``.
"""

import logging
import json
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from twins import publish
from twins.runtime.bundle import PLAIN_NAME, sha256_file

# The exporter logs one warning per torchvision op when torchvision is absent (it is not a dependency).
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
OPSET = 18
REQUIRED_MANIFEST_KEYS = ("name", "version", "task")


class ParityError(AssertionError):
    """ONNX Runtime and PyTorch outputs differ by more than the tolerance."""


def _tensor_specs(values: Sequence[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
    """Name, numpy dtype name and shape (ints for static axes, names for dynamic ones) of graph inputs/outputs."""
    return [
        {
            "name": value.name,
            "dtype": np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)).name,
            "shape": [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim],
        }
        for value in values
    ]


def export_bundle(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    out_dir: str | Path,
    manifest: Mapping[str, Any],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int = OPSET,
    overwrite: bool = False,
    extra_files: Mapping[str, str | Path | bytes] | None = None,
) -> Path:
    """Export ``module`` to ``out_dir/model.onnx`` and write ``out_dir/manifest.json``; return ``out_dir``.

    ``dynamic_axes`` maps a ``forward`` argument name to ``{axis: dimension name}``, e.g. ``{"history": {0:
    "batch", 1: "sequence"}}``; axes sharing a name share a size. ``input_names`` name the ONNX inputs (use the
    argument names). Uses the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, which needs onnxscript);
    example inputs must not have size 0 or 1 on a dynamic axis (the exporter would specialise it). The bundle is
    assembled in a temporary folder next to ``out_dir``, fsynced and swapped into place in one step under
    ``out_dir``'s lock (``twins.publish``), so a reader never sees a half-written bundle. An existing ``out_dir``
    is an error unless ``overwrite``. ``extra_files`` (bundle file name -> source path or bytes) are what the
    preprocessing needs (a tokenizer, a vocabulary); they are copied in before the rename and their sha256
    recorded in the manifest's ``files``.
    """
    missing = [key for key in REQUIRED_MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"manifest lacks required keys {missing}")
    if not isinstance(manifest["name"], str) or not PLAIN_NAME.match(manifest["name"]):
        raise ValueError(f"manifest name {manifest['name']!r} must be a plain name (letters, digits, '_', '.', '+', "
                         "'-', not starting with '.'): it may become a file name")
    for name in extra_files or {}:
        if not isinstance(name, str) or not PLAIN_NAME.match(name) or name in (MODEL_FILE, MANIFEST_FILE):
            raise ValueError(f"extra_files: {name!r} must be a plain file name inside the bundle folder (no folder, "
                             f"not starting with '.'), other than {MODEL_FILE} and {MANIFEST_FILE}")
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (DESIGN.md section 6), got {opset}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
    dims = {name: torch.export.Dim(name) for axes in dynamic_axes.values() for name in axes.values()}
    dynamic_shapes = {
        arg: {axis: dims[name] for axis, name in axes.items()} for arg, axes in dynamic_axes.items()
    }
    with publish.locked(out_dir, f"bundle export {out_dir.name}"), publish.staged_dir(out_dir) as tmp:
        model_path = tmp / MODEL_FILE
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecation notes from inside the exporter
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints")  # axes named alike, as meant
            program = torch.onnx.export(
                module.eval(),
                example_inputs,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
            program.save(str(model_path))
        model = onnx.load(str(model_path))
        onnx.checker.check_model(model, full_check=True)
        for name, source in (extra_files or {}).items():
            target = tmp / name
            if isinstance(source, bytes):
                target.write_bytes(source)
            else:
                shutil.copyfile(source, target)
        full_manifest = {
            **manifest,
            "opset": next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")),
            "inputs": _tensor_specs(model.graph.input),
            "outputs": _tensor_specs(model.graph.output),
            "model_file": MODEL_FILE,
            "model_sha256": sha256_file(model_path),
            **({"files": {name: sha256_file(tmp / name) for name in extra_files}} if extra_files else {}),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(full_manifest, indent=2, ensure_ascii=False) + "\n")
        publish.publish_dir(tmp, out_dir)
    return out_dir


def check_parity(
    module: nn.Module,
    bundle_dir: str | Path,
    inputs_list: Sequence[tuple[torch.Tensor, ...]],
    atol: float = 1e-4,
    rtol: float = 0.0,
) -> float:
    """Run ``module`` and the bundle's ``model.onnx`` (onnxruntime, CPU) on each input tuple.

    Float outputs must agree within ``atol + rtol * |PyTorch value|`` (infinities in the same places), integer
    outputs exactly. Raises
    ``ParityError`` naming the output, the input shapes and the max abs difference; returns the largest float
    difference seen.
    """
    session = ort.InferenceSession(str(Path(bundle_dir) / MODEL_FILE), providers=["CPUExecutionProvider"])
    names = [value.name for value in session.get_inputs()]
    output_names = [value.name for value in session.get_outputs()]
    worst = 0.0
    module.eval()
    for inputs in inputs_list:
        with torch.no_grad():
            expected = module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        actual = session.run(None, {name: tensor.numpy() for name, tensor in zip(names, inputs)})
        shapes = [tuple(tensor.shape) for tensor in inputs]
        for name, want, got in zip(output_names, expected, actual):
            want = want.numpy()
            if want.shape != got.shape:
                raise ParityError(f"output {name!r} at input shapes {shapes}: shape {got.shape} != {want.shape}")
            if np.issubdtype(want.dtype, np.floating):
                with np.errstate(invalid="ignore"):  # inf - inf; equal infinities count as no difference
                    excess = np.where(want == got, 0.0, np.abs(want - got) - rtol * np.abs(want))
                    diff = float(np.max(np.where(want == got, 0.0, np.abs(want - got)), initial=0.0))
                if np.isnan(diff) or float(np.max(excess, initial=0.0)) > atol:
                    raise ParityError(
                        f"output {name!r} at input shapes {shapes}: max abs diff {diff:.3g} > atol {atol:g} + rtol {rtol:g}"
                    )
                worst = max(worst, diff)
            elif not np.array_equal(want, got):
                n_diff = int(np.sum(want != got))
                raise ParityError(
                    f"output {name!r} at input shapes {shapes}: {n_diff} of {want.size} values differ, "
                    f"max abs diff {int(np.max(np.abs(want.astype(np.int64) - got.astype(np.int64))))}"
                )
    return worst
