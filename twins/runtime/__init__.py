"""Torch-free inference on exported bundles (numpy + onnxruntime only)."""

from twins.runtime.bundle import TASKS, Bundle, BundleError, NextBasketBundle, load
from twins.runtime.outlook import OutlookBundle

TASKS["purchase_outlook"] = OutlookBundle

__all__ = ["Bundle", "BundleError", "NextBasketBundle", "OutlookBundle", "load"]
