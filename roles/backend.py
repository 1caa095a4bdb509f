"""The FastAPI backend and its Celery worker and beat (role ``app``).

One image serves all three. Docker layout: Compose services ``backend``, ``celery-worker``,
``celery-beat`` (and the one-shot ``migrate``), all reading ``<base_dir>/app.env``. Systemd layout:
units residency-backend, residency-celery-worker, residency-celery-beat (and the one-shot
residency-migrate) running from the release's virtualenv, all reading ``<config_dir>/app.env``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from rsdeploy.escape import url_part
from rsdeploy.render import RenderedFile, template
from rsdeploy.types import LogLevel, Port, Resources, Section, Size
from rsdeploy.validate import Verdict, run_tool

if TYPE_CHECKING:
    from pathlib import Path

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


# --- systemd layout ----------------------------------------------------------------------------

UNIT_DIR = "/etc/systemd/system"
#: The Celery beat schedule lives in /var/lib/<this> (systemd StateDirectory=).
BEAT_STATE_DIR = "residency-celery-beat"
#: Seconds a warm Celery shutdown may take before the pool children are killed.
WORKER_STOP_TIMEOUT = 300
#: Same-host services the app units start after (Debian unit names), by role.
LOCAL_DEPENDENCIES = {"db": "postgresql.service", "redis": "redis-server.service"}
_UNIT_SAFE_PATH = re.compile(r"^/[A-Za-z0-9/._+-]*$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3,
               "gb": 1024**3}


def release_dir(hs: HostSettings) -> str:
    """The running release: ``<base_dir>/current`` -> ``<base_dir>/releases/<tag>``.

    Each release carries its own virtualenv (``venv/``) beside ``backend/`` and ``frontend/``,
    so switching the symlink switches code and dependencies together (and rolls both back).
    """
    return f"{hs.stack.paths.base_dir}/current"


def memory_bytes(size: Size) -> int:
    """A Docker-style size (``512m``, ``1g``; binary units) in bytes. Example: ``memory_bytes("1g")``"""
    digits = size.rstrip("bBkKmMgG")
    return int(digits) * _SIZE_UNITS[size[len(digits):].lower()]


def cpu_quota(resources: Resources) -> str:
    """systemd ``CPUQuota=`` for a share in cores. Example: ``cpu_quota(Resources(cpus=0.5))`` -> ``"50%"``"""
    return f"{round(resources.cpus * 100)}%"


def listen_address(hs: HostSettings, *consumer_roles: str) -> str:
    """Loopback when every host that connects (``consumer_roles``) is this one, else the
    host's stack address. Example: ``listen_address(hs, "web", "monitoring")``
    """
    remote = [r for r in consumer_roles
              if (carrier := hs.topology.one(r)) is not None and carrier.name != hs.name]
    return hs.address if remote else "127.0.0.1"


def unit_safe_path(path: str) -> str:
    """Refuse a path that unit files cannot carry unquoted (spaces, ``%``, quotes, ``$``)."""
    if not _UNIT_SAFE_PATH.match(path):
        raise ValueError(f"{path!r}: systemd-layout paths may only hold letters, digits and /._+-")
    return path


@dataclass(frozen=True)
class AppUnit:
    """What one app unit template needs (see templates/systemd/_app_unit.j2)."""

    name: str
    description: str
    exec_start: list[str]
    resources: Resources
    resources_key: str
    type: str = "exec"
    stop_timeout: int = 30
    state_dir: str = BEAT_STATE_DIR
    user: str = APP_USER
    uid: int = APP_UID
    env_file: str = ""
    workdir: str = ""
    log_dir: str = ""
    multiproc_dir: str | None = None
    after: tuple[str, ...] = ()

    @property
    def memory_max(self) -> int:
        return memory_bytes(self.resources.memory)

    @property
    def cpu_quota(self) -> str:
        return cpu_quota(self.resources)


def app_units(hs: HostSettings) -> list[AppUnit]:
    """The four app units of the systemd layout, sharing env file, release and sandbox."""
    b, release = hs.stack.backend, release_dir(hs)
    venv = f"{release}/venv/bin"
    celery = [f"{venv}/celery", "-A", "app.core.celery_app"]
    shared = dict(
        env_file=unit_safe_path(app_env_path(hs)),
        workdir=unit_safe_path(f"{release}/backend"),
        log_dir=unit_safe_path(hs.stack.paths.log_dir),
        multiproc_dir=app_environment(hs).get("PROMETHEUS_MULTIPROC_DIR"),
        after=tuple(unit for role, unit in LOCAL_DEPENDENCIES.items() if hs.has_role(role)),
    )
    uvicorn = [f"{venv}/uvicorn", "app.main:app", "--host", listen_address(hs, "web", "monitoring"),
               "--port", str(b.port), "--workers", str(b.workers), "--proxy-headers",
               "--forwarded-allow-ips", hs.endpoint("nginx")]
    worker = [*celery, "worker", "-Q", ",".join(b.celery_queues), "--concurrency",
              str(b.celery_concurrency), "--loglevel", b.celery_log_level]
    beat = [*celery, "beat", "--schedule", f"/var/lib/{BEAT_STATE_DIR}/celerybeat-schedule",
            "--loglevel", b.celery_log_level]
    return [
        AppUnit("residency-backend.service", "Residency Scheduler API (uvicorn)", uvicorn,
                b.resources, "backend.resources", **shared),
        AppUnit("residency-celery-worker.service", "Residency Scheduler Celery worker", worker,
                b.worker_resources, "backend.worker_resources",
                stop_timeout=WORKER_STOP_TIMEOUT, **shared),
        AppUnit("residency-celery-beat.service", "Residency Scheduler Celery beat", beat,
                b.beat_resources, "backend.beat_resources", **shared),
        AppUnit("residency-migrate.service", "Residency Scheduler database migrations",
                [f"{venv}/alembic", "upgrade", "head"], b.resources, "backend.resources",
                type="oneshot", **shared),
    ]


def unit_file(hs: HostSettings, unit: AppUnit) -> RenderedFile:
    content = template(f"systemd/{unit.name}.j2", hs, unit=unit)
    restarts = () if unit.type == "oneshot" else (unit.name,)
    return RenderedFile(f"{UNIT_DIR}/{unit.name}", content, "backend", restarts=restarts)


def sysusers_file(hs: HostSettings) -> RenderedFile:
    """``/etc/sysusers.d/residency.conf``: the app user, created by ``systemd-sysusers``."""
    content = template("systemd/residency.sysusers.conf.j2", hs, user=APP_USER, uid=APP_UID,
                       home=unit_safe_path(hs.stack.paths.base_dir))
    return RenderedFile("/etc/sysusers.d/residency.conf", content, "backend")


def render(hs: HostSettings) -> list[RenderedFile]:
    files = [app_env_file(hs)]
    if hs.stack.layout == "systemd":
        files += [sysusers_file(hs), *(unit_file(hs, unit) for unit in app_units(hs))]
    return files


# --- validation --------------------------------------------------------------------------------

_NOT_INSTALLED_YET = re.compile(r"^(\S+): Command (/\S+) is not executable: No such file or directory$")


def verify_units(tree: Path, paths: list[str], installed_later: tuple[str, ...]) -> list[Verdict]:
    """``systemd-analyze verify`` on rendered units (host paths ``paths`` under ``tree``).

    Verify also checks that each ``ExecStart`` binary exists. Binaries the deploy installs
    later (paths starting with one of ``installed_later``: the release's venv, npm's pm2, our
    own scripts) cannot exist on the machine that renders: exactly that message is tolerated
    for exactly those paths; every other line verify prints fails the unit.
    Example: ``verify_units(tree, ["/etc/systemd/system/x.service"], ("/opt/x/current/",))``
    """
    verdicts = []
    for path in paths:
        verdict = run_tool(["systemd-analyze", "verify", str(tree / path.lstrip("/"))], path,
                           "systemd-analyze verify")
        problems = [line for line in verdict.detail.splitlines()
                    if not _installed_later(line, installed_later)]
        tolerated = "" if verdict.ok or problems else "binaries installed by the deploy: " + \
            ", ".join(sorted({m.group(2) for m in map(_NOT_INSTALLED_YET.match,
                                                       verdict.detail.splitlines()) if m}))
        verdicts.append(Verdict(path, verdict.tool, not problems, "\n".join(problems) or tolerated))
    return verdicts


def _installed_later(line: str, prefixes: tuple[str, ...]) -> bool:
    match = _NOT_INSTALLED_YET.match(line.strip())
    return bool(match) and match.group(2).startswith(prefixes)


def validate(tree: Path, hs: HostSettings) -> list[Verdict]:
    """Systemd layout: verify the app units (the env file is checked by the test suite's parsers)."""
    if hs.stack.layout != "systemd":
        return []
    units = [f"{UNIT_DIR}/{unit.name}" for unit in app_units(hs)]
    return verify_units(tree, units, (f"{release_dir(hs)}/",))
