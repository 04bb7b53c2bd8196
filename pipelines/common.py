"""What the named pipelines share: the ingest node and the checks of their ``params``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from twins import api
from twins.data.ingest import IngestReport
from twins.data.source import SourceConfig


def ingest_events(source: SourceConfig) -> IngestReport:
    return api.ingest(source, track=False)  # the parent run logs the report in log_results


def merge_params(params: dict[str, Any], defaults: dict[str, Any], pipeline: str) -> dict[str, Any]:
    """``defaults`` updated with ``params``; an unknown key is an error naming the keys the pipeline takes."""
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(f"params: unknown key(s) {sorted(unknown)}; {pipeline} takes {sorted(defaults)}")
    return defaults | params


def required_date(value: Any, key: str, why: str) -> datetime:
    """``params.<key>`` as an aware datetime; missing is an error that says what the date is for."""
    if value is None:
        raise ValueError(f"params.{key} is required: {why}")
    return api.parse_as_of(str(value))


def check_hyper_parameters(estimator: type, values: dict[str, Any], key: str) -> None:
    """Build ``estimator(**values)`` so that a misspelt hyper-parameter fails before any fitting, naming the ones
    it takes."""
    try:
        estimator(**values)
    except TypeError as exc:
        raise ValueError(f"params.{key}: {exc}; {estimator.__name__} takes {sorted(estimator().get_params())}") from None
