"""Torch-free inference on exported bundles (numpy + onnxruntime only)."""

from twins.runtime.bundle import Bundle, BundleError, NextBasketBundle, load

__all__ = ["Bundle", "BundleError", "NextBasketBundle", "load"]
