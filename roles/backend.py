"""The FastAPI backend and its Celery worker and beat (role ``app``).

One image serves all three. Docker layout: Compose services ``backend``, ``celery-worker``,
``celery-beat``. Systemd layout: units residency-backend, residency-celery-worker,
residency-celery-beat running from a virtualenv of the tagged source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from rsdeploy.types import LogLevel, Port, Resources, Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings

CELERY_QUEUES = ["default", "resilience", "notifications", "metrics", "exports", "security"]


class Settings(Section):
    image: str = "residency-scheduler-backend"  # docker layout: image repository; the tag is the version
    port: Port = 8000  # port uvicorn listens on
    workers: int = Field(default=2, ge=1, le=32)  # uvicorn worker processes
    log_level: LogLevel = "INFO"  # LOG_LEVEL of the API
    celery_log_level: LogLevel = "INFO"  # CELERY_LOG_LEVEL of worker and beat
    celery_queues: list[str] = Field(default_factory=lambda: list(CELERY_QUEUES), min_length=1)  # -Q
    celery_concurrency: int = Field(default=2, ge=1, le=64)  # worker processes
    cors_origins: list[str] = []  # CORS_ORIGINS; empty means https://<each domain>
    rate_limit_enabled: bool = True  # RATE_LIMIT_ENABLED
    extra_env: dict[str, str] = {}  # further environment for backend, worker and beat
    resources: Resources = Resources(memory="1g", cpus=1.0)  # limits for the backend service
    worker_resources: Resources = Resources(memory="1g", cpus=1.0)  # limits for celery-worker
    beat_resources: Resources = Resources(memory="256m", cpus=0.25)  # limits for celery-beat


def applies(hs: HostSettings) -> bool:
    return hs.has_role("app")


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
