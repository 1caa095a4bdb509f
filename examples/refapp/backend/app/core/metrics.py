"""``GET /metrics``: request metrics from prometheus-fastapi-instrumentator plus our gauges.

With several uvicorn workers set PROMETHEUS_MULTIPROC_DIR to an empty directory (the
entrypoint empties it): every worker writes its samples there and /metrics adds them up.
"""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_fastapi_instrumentator import Instrumentator


def instrument(app: FastAPI) -> None:
    """Count and time every request (status grouped 2xx/4xx/5xx) and serve /metrics."""
    Instrumentator(should_group_status_codes=True, excluded_handlers=["/metrics"]) \
        .instrument(app).expose(app, include_in_schema=False)
