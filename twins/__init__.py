"""twins: digital twins of customers, people and machines.

Kept import-light on purpose (the torch-free runtime lives under ``twins.runtime``): import what you need from
``twins.api`` (ingest, build, twin, run), ``twins.models``, ``twins.evaluate`` and ``twins.runtime``.
"""

__version__ = "0.1.0"
