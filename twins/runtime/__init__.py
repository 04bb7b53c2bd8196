"""Torch-free inference on exported bundles (numpy + onnxruntime only)."""

from twins.runtime.bundle import TASKS, Bundle, BundleError, NextBasketBundle, load
from twins.runtime.emotion import EmotionBundle
from twins.runtime.next_basket_net import NeighbourNextBasketBundle
from twins.runtime.outlook import OutlookBundle, OutlookNetBundle
from twins.runtime.replenishment import ReplenishmentBundle

TASKS["purchase_outlook"] = OutlookBundle
TASKS["purchase_outlook_net"] = OutlookNetBundle
TASKS["emotion"] = EmotionBundle
TASKS["next_basket_net"] = NeighbourNextBasketBundle
TASKS["replenishment"] = ReplenishmentBundle

__all__ = ["Bundle", "BundleError", "EmotionBundle", "NeighbourNextBasketBundle", "NextBasketBundle", "OutlookBundle", "OutlookNetBundle", "ReplenishmentBundle", "load"]
