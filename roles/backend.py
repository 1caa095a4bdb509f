"""The FastAPI backend and its Celery worker and beat (role ``app``).

One image serves all three. Docker layout: Compose services ``backend``, ``celery-worker``,
``celery-beat`` (and the one-shot ``migrate``), all reading ``<base_dir>/app.env``. Systemd layout:
units residency-backend, residency-celery-worker, residency-celery-beat (and the one-shot
residency-migrate) running from the release's virtualenv, all reading ``<config_dir>/app.env``.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from rsdeploy.escape import url_part
from rsdeploy.render import RenderedFile, template
from rsdeploy.types import LogLevel, Port, Resources, Section

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

CELERY_QUEUES = ["default", "resilience", "notifications", "metrics", "exports", "security"]

#: Where prometheus_client keeps per-process metric files when uvicorn runs several workers.
#: Every process that reads app.env must find it as an empty directory it can write: Compose
#: mounts a tmpfs there (uid 1001), systemd units a ``TemporaryFileSystem=``.
PROMETHEUS_MULTIPROC_DIR = "/run/prometheus-multiproc"

#: Variables app.env sets itself; ``backend.extra_env`` must not redefine them.
MANAGED_ENV = frozenset({
    "DATABASE_URL", "REDIS_PASSWORD", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
    "SECRET_KEY", "WEBHOOK_SECRET", "DEBUG", "CORS_ORIGINS", "RATE_LIMIT_ENABLED", "LOG_LEVEL",
    "CELERY_LOG_LEVEL", "PROMETHEUS_MULTIPROC_DIR", "APP_VERSION",
})

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: The user the app runs as: uid 1001 in the image, the same uid on systemd-layout hosts.
APP_UID = 1001
APP_USER = "residency"


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

    @field_validator("extra_env")
    @classmethod
    def _extra_env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not an environment variable name")
            if key in MANAGED_ENV:
                raise ValueError(f"{key} is set by rsdeploy itself (from settings and secrets); "
                                 "remove it from backend.extra_env")
            check_env_value(key, text)
        return value


def check_env_value(key: str, value: str) -> None:
    """Refuse a value no env file can carry: NUL ends a C string in every reader.

    Example: ``check_env_value("FOO", "bar")``
    """
    if "\0" in value:
        raise ValueError(f"{key}: a NUL character cannot be passed in an environment variable")


def applies(hs: HostSettings) -> bool:
    return hs.has_role("app")


def _carrier(hs: HostSettings, role: str):
    """The settings of the host carrying ``role`` (its port and names are the ones to dial)."""
    return hs.stack_settings[hs.topology.one(role).name]


def database_url(hs: HostSettings) -> str:
    """``postgresql://user:pw@host:port/db`` as this host's processes reach the database."""
    pg = _carrier(hs, "db").postgres
    return (f"postgresql://{url_part(pg.user)}:{url_part(hs.secrets.db_password)}"
            f"@{hs.endpoint('db')}:{pg.port}/{pg.database}")


def redis_url(hs: HostSettings) -> str:
    """``redis://:pw@host:port/0`` as this host's processes reach Redis."""
    port = _carrier(hs, "redis").redis.port
    return f"redis://:{url_part(hs.secrets.redis_password)}@{hs.endpoint('redis')}:{port}/0"


def cors_origins(hs: HostSettings) -> list[str]:
    """The configured CORS origins, else ``https://<each domain>``."""
    return hs.stack.backend.cors_origins or [f"https://{d}" for d in hs.stack.domains]


def app_environment(hs: HostSettings) -> dict[str, str]:
    """Every variable the backend, worker and beat need (the app contract), sorted by name.

    Example: ``app_environment(hs)["DATABASE_URL"]`` -> ``"postgresql://scheduler:...@db:5432/..."``
    """
    b, secrets = hs.stack.backend, hs.secrets
    env = {
        "DATABASE_URL": database_url(hs),
        "REDIS_PASSWORD": secrets.redis_password,
        "REDIS_URL": redis_url(hs),
        "CELERY_BROKER_URL": redis_url(hs),
        "CELERY_RESULT_BACKEND": redis_url(hs),
        "SECRET_KEY": secrets.secret_key,
        "DEBUG": "false",
        "CORS_ORIGINS": json.dumps(cors_origins(hs)),
        "RATE_LIMIT_ENABLED": str(b.rate_limit_enabled).lower(),
        "LOG_LEVEL": b.log_level,
        "CELERY_LOG_LEVEL": b.celery_log_level,
        "APP_VERSION": hs.stack.version,
    }
    if secrets.webhook_secret:
        env["WEBHOOK_SECRET"] = secrets.webhook_secret
    if b.workers > 1:
        env["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR
    env.update(b.extra_env)
    return dict(sorted(env.items()))


def app_env_path(hs: HostSettings) -> str:
    """Where app.env lives: ``<base_dir>/app.env`` (docker) or ``<config_dir>/app.env`` (systemd)."""
    paths = hs.stack.paths
    return f"{paths.base_dir}/app.env" if hs.stack.layout == "docker" else f"{paths.config_dir}/app.env"


#: What must restart when app.env changes, per layout (Compose services / systemd units).
APP_ENV_READERS = {
    "docker": ("backend", "celery-worker", "celery-beat", "migrate"),
    "systemd": ("residency-backend.service", "residency-celery-worker.service",
                "residency-celery-beat.service"),
}


def app_env_file(hs: HostSettings) -> RenderedFile:
    """The 0600 env file in the syntax of its reader (Compose ``env_file`` or ``EnvironmentFile``).

    Root owns it in both layouts: Compose (docker CLI) and PID 1 read it, never the app itself.
    """
    layout = hs.stack.layout
    content = template(f"app/app.env.{layout}.j2", hs, env=app_environment(hs))
    return RenderedFile(app_env_path(hs), content, "backend", mode="600", secret=True,
                        restarts=APP_ENV_READERS[layout])


def render(hs: HostSettings) -> list[RenderedFile]:
    return [app_env_file(hs)]
