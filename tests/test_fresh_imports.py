"""A fresh process (``Engine.call`` / ``Engine.map(fresh=True)``) of a build phase that needs no torch never
imports it (2-8 s a process): the outlook's inputs, twins without the outlook, the machine and emotion phases and
the merges are polars and numpy work; only the outlook's population fit, which trains, loads torch."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from twins.engine import LocalEngine

AS_OF = datetime(2024, 7, 1, tzinfo=timezone.utc)


def imports_after(steps: list[tuple[str, Callable[..., Any], tuple]]) -> list[tuple[str, bool]]:
    """Run each step here, in order; (its name, whether torch is imported by then) after each."""
    out = []
    for name, fn, args in steps:
        fn(*args)
        out.append((name, "torch" in sys.modules))
    return out


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    from tests.test_build_buckets import people, store

    return store(people(40), tmp_path_factory.mktemp("fresh") / "many", 2)


def test_build_phases_without_training_never_import_torch(events, tmp_path):
    from twins.twin.behaviour import item_medians
    from twins.twin.customer import TwinParams, bucket_outlook_inputs, bucket_twins, population_fit
    from twins.twin.emotion import bucket_message_counts
    from twins.twin.machine import bucket_machines, bucket_price_counts
    from twins.twin.store import merge_parts

    bgnbd, neural = TwinParams(outlook_horizon_days=28), TwinParams(outlook_horizon_days=28, outlook_model="neural")
    off, inputs = TwinParams(outlook_horizon_days=None), [tmp_path / f"outlook-{b}.parquet" for b in (0, 1)]
    parts = [tmp_path / f"part-{b}.parquet" for b in (0, 1)]
    medians = item_medians([bucket_price_counts((events, b, AS_OF, 3)) for b in (0, 1)])
    steps = [("outlook inputs", bucket_outlook_inputs, ((events, 0, AS_OF, bgnbd, inputs[0]),)),
             ("outlook inputs", bucket_outlook_inputs, ((events, 1, AS_OF, bgnbd, inputs[1]),)),
             ("neural outlook inputs", bucket_outlook_inputs, ((events, 0, AS_OF, neural, None),)),
             ("twins without outlook", bucket_twins, ((events, 0, AS_OF, off, None, parts[0]),)),
             ("twins without outlook", bucket_twins, ((events, 1, AS_OF, off, None, parts[1]),)),
             ("snapshot merge", merge_parts, ((parts, "customer_id", tmp_path / "twins.parquet"),)),
             ("price counts", bucket_price_counts, ((events, 0, AS_OF, 3),)),
             ("machine twins", bucket_machines, ((None, None), (events, 0, AS_OF, 3, medians, None))),
             ("message counts", bucket_message_counts, ((events, 0),))]
    seen = LocalEngine().call(imports_after, steps)
    assert seen == [(name, False) for name, _, _ in steps]
    # the probe sees torch where it is needed: the population fit trains BG/NBD and Gamma-Gamma
    assert LocalEngine().call(imports_after, [("fit", population_fit, ((inputs, AS_OF, bgnbd),))]) == [("fit", True)]
