"""``twins serve``: an HTTP scoring service (FastAPI) over bundles given by path or ``models:/NAME@ALIAS``.

A task gets endpoints when a bundle of that task is configured: the runtime loads it (``twins.runtime.TASKS``)
and ``twins.serve.tasks.ROUTES`` says how the service asks it questions. Another task plugs in by adding its
bundle class to ``TASKS`` and a ``TaskRoute`` to ``ROUTES``.
"""

from twins.serve.app import create_app
from twins.serve.models import ModelSlot
from twins.serve.tasks import ROUTES, TaskRoute

__all__ = ["ROUTES", "ModelSlot", "TaskRoute", "create_app"]
