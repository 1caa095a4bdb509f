"""``GET /metrics``: request metrics from prometheus-fastapi-instrumentator plus our gauges.

With several uvicorn workers set PROMETHEUS_MULTIPROC_DIR to an empty directory (the
entrypoint empties it): every worker writes its samples there and /metrics adds them up.

``instrument(app, only_when_enabled=True)`` behaves like upstream (``should_respect_env_var``):
no instrumentation and no /metrics route (404) unless ``ENABLE_METRICS`` is ``true``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from fastapi import FastAPI
from prometheus_fastapi_instrumentator import Instrumentator

#: The variable upstream's instrumentator reads (it accepts "true" or "1", any case).
ENABLE_VAR = "ENABLE_METRICS"


def metrics_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """Whether ENABLE_METRICS turns metrics on, as the instrumentator reads it ("true" or "1")."""
    return env.get(ENABLE_VAR, "").strip().lower() in ("true", "1")


def instrument(app: FastAPI, only_when_enabled: bool = False) -> None:
    """Count and time every request (status grouped 2xx/4xx/5xx) and serve /metrics;
    ``only_when_enabled``: only when ENABLE_METRICS says so, as upstream."""
    Instrumentator(should_group_status_codes=True, excluded_handlers=["/metrics"],
                   should_respect_env_var=only_when_enabled, env_var_name=ENABLE_VAR) \
        .instrument(app).expose(app, include_in_schema=False)
