"""Export trained PyTorch modules as ONNX bundles (``model.onnx`` + ``manifest.json``) and check parity."""

from twins.export.onnx_bundle import MANIFEST_FILE, MODEL_FILE, ParityError, check_parity, export_bundle

__all__ = ["MANIFEST_FILE", "MODEL_FILE", "ParityError", "check_parity", "export_bundle"]
