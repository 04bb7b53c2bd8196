"""Models and baselines. PyTorch modules live in their own submodules (e.g. ``twins.models.topfreq_torch``) so
that importing the baselines does not import torch."""

from twins.models.topfreq import GPTopFreq, GTopFreq, PTopFreq

__all__ = ["GPTopFreq", "GTopFreq", "PTopFreq"]
