"""The FastAPI backend and its Celery worker and beat (role ``app``).

One image serves all three. Docker layout: Compose services ``backend``, ``celery-worker``,
``celery-beat`` (and the one-shot ``migrate``), all reading ``<base_dir>/app.env``. Systemd
layout: unit templates residency-backend@, residency-celery-worker@ and residency-celery-beat@,
one instance of each per release slot (``residency-backend@blue.service``), running from the
slot's release and its virtualenv, all reading ``<config_dir>/app.env``.
"""

from __future__ import annotations

import json
import re
from io import StringIO
from urllib.parse import quote
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server

from rsdeploy.roles import base, internal_tls, redis
from rsdeploy import apply
from rsdeploy.errors import SettingsError
from rsdeploy.escape import Expanded, url_part
from rsdeploy.layout import Recreate
from rsdeploy.release import OVERLAP, SERVE, SINGLE, CommandProbe, HttpProbe, ReleaseUnit
from rsdeploy.render import RenderedFile, template
from rsdeploy.secrets import WEAK_VALUES
from rsdeploy.types import (
    Duration,
    Line,
    LogLevel,
    Port,
    Repository,
    Resources,
    Section,
    Size,
    duration_seconds,
    matching,
)
from rsdeploy.units import UNIT_DIR, AppUnit, memory_bytes, unit_safe_path, verify_units

if TYPE_CHECKING:
    from pathlib import Path

    from rsdeploy.settings import HostSettings, SecretRules
    from rsdeploy.validate import Verdict

CELERY_QUEUES = ["default", "resilience", "notifications", "metrics", "exports", "security"]

#: Where prometheus_client keeps per-process metric files when uvicorn runs several workers.
#: Every process that reads app.env must find it as an empty directory it can write: Compose
#: mounts a tmpfs there (uid 1001), systemd units a ``TemporaryFileSystem=``.
PROMETHEUS_MULTIPROC_DIR = "/run/prometheus-multiproc"

#: HOME of the app's processes: an empty tmpfs of their own (a container's, a unit's) at every
#: start. The libraries the app imports write their settings under HOME (matplotlib's
#: ~/.config/matplotlib), which the read-only root (the image's, the release's) refuses.
APP_HOME = "/run/residency-home"
#: XDG_CACHE_HOME of the app's processes: a directory of the host, owned by the app's uid and
#: kept across releases (models of sentence-transformers, matplotlib's font cache: fetched
#: and built once, on disk, not in the processes' memory).
APP_CACHE_DIR = "/var/cache/residency-scheduler/app"

#: Variables app.env sets itself; ``backend.extra_env`` must not redefine them.
MANAGED_ENV = frozenset({
    "DATABASE_URL", "REDIS_PASSWORD", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
    "SECRET_KEY", "WEBHOOK_SECRET", "DEBUG", "CORS_ORIGINS", "RATE_LIMIT_ENABLED", "LOG_LEVEL",
    "CELERY_LOG_LEVEL", "PROMETHEUS_MULTIPROC_DIR", "APP_VERSION", "ENABLE_METRICS", "HOME",
    "XDG_CACHE_HOME",
})

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: A Celery queue name (``-Q`` takes them comma-separated).
CeleryQueue = Annotated[str, matching(re.compile(r"[A-Za-z0-9_.-]+"), "a Celery queue name "
                                      "(letters, digits, '_', '.', '-')")]

#: The user the app runs as: uid 1001 in the image, the same uid on systemd-layout hosts.
APP_UID = 1001
APP_USER = "residency"
#: The Celery app of the backend (``celery --app``).
CELERY_APP = "app.core.celery_app"


class HealthGate(Section):
    """How long the app may take to become healthy, wherever a rollout waits for it: Compose's
    health checks and ``up --wait``, and the release switch, which probes each new instance
    until it is ready (a failure counts only after that unit's start period)."""

    # The API's start period: the real backend needs 65-70 s on 2 cores (imports, model code)
    # before /health answers.
    start_period: Duration = "120s"
    # The Celery worker's: until it answers a ping (it imports the app too, beside the new API).
    worker_start_period: Duration = "120s"
    # Celery beat's: until it writes its schedule file (the real one: 27 s, importing the app).
    beat_start_period: Duration = "90s"
    interval: Duration = "30s"  # between Compose's health checks (the guide's 30 s)
    timeout: Duration = "10s"  # one check's time limit
    retries: int = Field(default=3, ge=1, le=20)  # failed checks in a row that mean unhealthy
    wait_timeout: Duration = "300s"  # how long a rollout waits for every service to be healthy


class Settings(Section):
    image: Repository = "residency-scheduler-backend"  # docker layout: image repository; the tag is the version
    port: Port = 8000  # port uvicorn listens on
    workers: int = Field(default=2, ge=1, le=32)  # uvicorn worker processes
    # Resident memory of one uvicorn worker: the real backend holds 560-670 MB each (torch and
    # sentence-transformers load at import). The backend's limit is sized from it.
    memory_per_worker: Size = "700m"
    memory_headroom: Size = "300m"  # on top of the workers: uvicorn's master, allocation peaks
    metrics: bool = True  # ENABLE_METRICS: /metrics served and scraped, backend alerts and panels
    health: HealthGate = HealthGate()  # how long the app may take to become healthy
    log_level: LogLevel = "INFO"  # LOG_LEVEL of the API
    celery_log_level: LogLevel = "INFO"  # CELERY_LOG_LEVEL of worker and beat
    celery_queues: list[CeleryQueue] = Field(default_factory=lambda: list(CELERY_QUEUES), min_length=1)  # -Q
    celery_concurrency: int = Field(default=2, ge=1, le=64)  # worker processes
    cors_origins: list[Line] = []  # CORS_ORIGINS; empty means https://<each domain>
    rate_limit_enabled: bool = True  # RATE_LIMIT_ENABLED
    extra_env: dict[str, str] = {}  # further environment for backend, worker and beat
    # Limits for the backend service (and its one-shot migrations); unset: 1 CPU and memory
    # sized from the workers, see memory_needed().
    resources: Resources | None = None
    # The worker imports the app like the backend (about 700 MB, shared by its forked pool)
    # and needs room for the tasks' own data.
    worker_resources: Resources = Resources(memory="2g", cpus=1.0)  # limits for celery-worker
    # Beat imports the app too: the real one sits at about 233 MiB.
    beat_resources: Resources = Resources(memory="512m", cpus=0.25)  # limits for celery-beat

    @field_validator("extra_env")
    @classmethod
    def _extra_env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not _ENV_NAME.fullmatch(key):
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


def runtime_applies(hs: HostSettings) -> bool:
    """Whether this host runs the app's code natively (needs Python and Node.js of its own)."""
    return applies(hs) and not hs.layout.runs_in_containers


def ports(hs: HostSettings) -> dict[str, int]:
    """The ports the backend (uvicorn) takes on this host (one per release slot), by settings
    key. Example: ``{"backend.port": 8000}``"""
    return slot_port_keys(hs, "backend.port", hs.stack.backend.port)


def slot_port_keys(hs: HostSettings, key: str, port: int) -> dict[str, int]:
    """A service's ports by settings key: ``port`` itself, and the next ones for the layout's
    further release slots. Example: ``{"backend.port": 8000, "backend.port (+10, release slot green)": 8010}``
    """
    step = hs.layout.release_port_step
    return {key if i == 0 else f"{key} (+{i * step}, release slot {slot})": value
            for i, (slot, value) in enumerate(slot_ports(hs, port).items())}


def check(hs: HostSettings, rules: SecretRules) -> None:
    """The backend's own production rules: the secrets it refuses to start without (lengths,
    known weak values) and CORS origins it refuses. Example: ``check(hs, rules)``
    """
    rules.require("db_password", "the database", 12)
    rules.require("redis_password", "Redis", 16)
    key = rules.require("secret_key", "the backend", 32)
    if key.lower() in WEAK_VALUES or len(set(key)) < 8:
        raise rules.fail("secret_key", "is a known weak value; generate one with: "
                         "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'")
    if hs.secrets.webhook_secret:
        rules.length("webhook_secret", hs.secrets.webhook_secret, 32)
    for i, origin in enumerate(hs.stack.backend.cors_origins):
        if "*" in origin:
            raise SettingsError(hs.source, hs.name, f"backend.cors_origins[{i}]",
                                "must not contain '*' (the backend refuses it)")
    _check_memory(hs)
    _check_health_gate(hs)


def serves_metrics(hs: HostSettings) -> bool:
    """Whether the stack's backend serves /metrics (``backend.metrics``: ENABLE_METRICS), which
    the scrape job, the backend's alert rules and its dashboard panels follow."""
    return hs.peer("app").stack.backend.metrics


def memory_needed(b: Settings) -> int:
    """Bytes the backend needs: ``workers`` x ``memory_per_worker`` + ``memory_headroom``.

    Example: ``memory_needed(Settings())`` -> ``1782579200`` (2 x 700m + 300m)
    """
    return b.workers * memory_bytes(b.memory_per_worker) + memory_bytes(b.memory_headroom)


def resources(hs: HostSettings) -> Resources:
    """The backend's limits: ``backend.resources`` when set, else 1 CPU and the memory its
    workers need (in MiB). Example: ``resources(hs).memory`` -> ``"1700m"``"""
    b = hs.stack.backend
    return b.resources or Resources(memory=f"{memory_needed(b) // 2**20}m", cpus=1.0)


def _check_memory(hs: HostSettings) -> None:
    b = hs.stack.backend
    if b.resources is not None and memory_bytes(b.resources.memory) < memory_needed(b):
        need = memory_needed(b) // 2**20
        raise SettingsError(
            hs.source, hs.name, "backend.resources.memory",
            f"{b.resources.memory} is below what backend.workers {b.workers} need: {b.workers} x "
            f"{b.memory_per_worker} + {b.memory_headroom} headroom = {need}m (raise the limit, "
            "lower backend.workers, or unset backend.resources to size it from the workers)")


def _check_health_gate(hs: HostSettings) -> None:
    gate = hs.stack.backend.health
    slowest = duration_seconds(gate.start_period) + gate.retries * duration_seconds(gate.interval)
    if duration_seconds(gate.wait_timeout) <= slowest:
        raise SettingsError(
            hs.source, hs.name, "backend.health.wait_timeout",
            f"{gate.wait_timeout} ends before a slow start can be judged: start_period "
            f"{gate.start_period} + retries {gate.retries} x interval {gate.interval} = {slowest}s")


def database_url(hs: HostSettings) -> str:
    """``postgresql://user:pw@host:port/db`` as this host's processes reach the database
    (the db host's port and names are the ones to dial); from another host over TLS, the
    server's certificate verified against the stack CA (``sslmode=verify-full``)."""
    pg = hs.peer("db").stack.postgres
    url = (f"postgresql://{url_part(pg.user)}:{url_part(hs.secrets.db_password)}"
           f"@{hs.endpoint('db', 'db')}:{pg.port}/{pg.database}")
    if internal_tls.reaches(hs, "db"):
        url += f"?sslmode=verify-full&sslrootcert={quote(stack_ca_read_path(hs))}"
    return url


def redis_url(hs: HostSettings, ca_path: str | None = None) -> str:
    """``redis://:pw@host:port/0`` as this host's processes reach Redis; from another host
    ``rediss://`` to its TLS port, the certificate verified against the stack CA (the app's
    bundle, or a reader's own copy at ``ca_path``)."""
    carrier = hs.peer("redis")
    auth = f":{url_part(hs.secrets.redis_password)}@{hs.endpoint('redis', 'redis')}"
    if not internal_tls.reaches(hs, "redis"):
        return f"redis://{auth}:{carrier.stack.redis.port}/0"
    return (f"rediss://{auth}:{redis.client_port(carrier)}/0"
            f"?ssl_cert_reqs=required&ssl_ca_certs={quote(ca_path or stack_ca_read_path(hs))}")


#: The stack CA (roles.internal_tls) as the app's containers read it.
CONTAINER_STACK_CA = "/etc/rsdeploy/stack-ca.pem"


def stack_ca_path(hs: HostSettings) -> str:
    """The host file of the CA bundle the app verifies a db or Redis elsewhere with."""
    return hs.layout.config_path(hs, "app", "stack-ca.pem",
                                 f"{hs.stack.paths.config_dir}/stack-ca.pem")


def stack_ca_read_path(hs: HostSettings) -> str:
    """That bundle as the app's processes open it (mounted into its containers)."""
    return hs.layout.data_dir(CONTAINER_STACK_CA, stack_ca_path(hs))


def reaches_over_tls(hs: HostSettings) -> bool:
    """Whether this app host reaches a data store on another host (so reads the stack CA)."""
    return any(internal_tls.reaches(hs, role) for role in internal_tls.SERVICES)


def stack_ca_file(hs: HostSettings) -> RenderedFile:
    """The stack CA bundle (public certificates); its readers restart when it changes."""
    return RenderedFile(stack_ca_path(hs), internal_tls.trusted_cas(hs), "backend",
                        reactions=app_env_reactions(hs))


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
        "ENABLE_METRICS": str(b.metrics).lower(),
        "HOME": APP_HOME,
        "XDG_CACHE_HOME": APP_CACHE_DIR,
    }
    if secrets.webhook_secret:
        env["WEBHOOK_SECRET"] = secrets.webhook_secret
    if b.workers > 1:
        env["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR
    env.update(b.extra_env)
    return dict(sorted(env.items()))


def app_env_path(hs: HostSettings) -> str:
    """Where app.env lives: beside the Compose files (``<base_dir>/app.env``) when the app runs
    from images, else with the host's config (``<config_dir>/app.env``)."""
    paths = hs.stack.paths
    # Not a Layout.config_path: the Compose project reads it from its own directory.
    return f"{paths.base_dir}/app.env" if hs.layout.runs_in_containers else f"{paths.config_dir}/app.env"


#: Who reads app.env at start: (Compose service, systemd service). The one-shot migrations read
#: it too: Compose recreates its ``migrate`` with the others; natively the release procedure
#: runs them in a transient unit of the new release, so no unit is named (never restarted).
APP_ENV_READERS = (
    ("backend", "residency-backend"),
    ("celery-worker", "residency-celery-worker"),
    ("celery-beat", "residency-celery-beat"),
    ("migrate", ""),
)


def app_env_reactions(hs: HostSettings) -> tuple[Recreate, ...]:
    """Every reader of app.env on this host is recreated when it changes (beat only where it
    runs). Example: ``app_env_reactions(hs)``"""
    return tuple(Recreate(name) for container, unit in APP_ENV_READERS
                 if (name := hs.layout.service(container, unit))
                 and (container != "celery-beat" or runs_beat(hs)))


def app_env_file(hs: HostSettings) -> RenderedFile:
    """The 0600 env file in the syntax of its reader (Compose ``env_file`` or ``EnvironmentFile``).

    Root owns it in both layouts: Compose (docker CLI) and PID 1 read it, never the app itself.
    """
    content = template(f"app/app.env.{hs.layout.name}.j2", hs, env=app_environment(hs))
    return RenderedFile(app_env_path(hs), content, "backend", mode="600", secret=True,
                        reactions=app_env_reactions(hs))


# --- releases ------------------------------------------------------------------------------------

#: Seconds each service gets to finish its work when a release stops it: the API its in-flight
#: requests, the worker its running tasks (warm shutdown, the guide's grace), beat its tick.
STOP_GRACE = {"backend": 30, "celery-worker": 120, "celery-beat": 10}
#: The Alembic command the one-shot migration runs.
MIGRATE_ARGV = ("alembic", "upgrade", "head")
#: Beat's schedule file: on a tmpfs of its container, or in its unit's StateDirectory= (kept
#: across restarts and releases: one beat at a time reads it).
BEAT_SCHEDULE = {"container": "/run/celerybeat/schedule",
                 "native": "/var/lib/residency-celery-beat/celerybeat-schedule"}


def migration_service(hs: HostSettings) -> str:
    """The one-shot service whose definition runs the release's migrations."""
    return hs.layout.service("migrate", "residency-migrate")


def beat_schedule(hs: HostSettings) -> str:
    """Where Celery beat keeps its schedule file, as beat sees it."""
    return hs.layout.data_dir(BEAT_SCHEDULE["container"], BEAT_SCHEDULE["native"])


def app_hosts(hs: HostSettings) -> list[str]:
    """Every app host, in inventory order: releases switch them one at a time in this order; the
    first migrates the database forward and runs Celery beat (one per stack: two would send
    every scheduled task twice), the last takes it back on a rollback (once no newer code runs).

    Example: ``app_hosts(hs)`` -> ``["app1.example.org", "app2.example.org"]``
    """
    return [ref.name for ref in hs.topology.carrying("app")]


def runs_beat(hs: HostSettings) -> bool:
    """Whether this host runs Celery beat: the first app host (see :func:`app_hosts`)."""
    return app_hosts(hs)[:1] == [hs.name]


#: ``celery inspect ping``'s exit code when no node replied (EX_UNAVAILABLE): not yet.
NO_NODE_REPLIED = 69
#: The beat probe's exit code while no process holds the schedule file open: not yet.
SCHEDULE_NOT_OPEN = 2


def release_units(hs: HostSettings) -> list[ReleaseUnit]:
    """How a release replaces the API (health-checked, then given the traffic), the worker
    (answers a Celery ping before the old one gets its warm shutdown) and beat (one at a time,
    ready once it has written its schedule), each with its start period (``backend.health``).

    Example: ``[u.service for u in release_units(hs)]`` -> ``["backend", "celery-worker", "celery-beat"]``
    """
    app, gate = f"--app={CELERY_APP}", hs.stack.backend.health
    # $HOSTNAME: the worker's node name (a container's id; natively host and release slot).
    ping = CommandProbe(("sh", "-c", f"celery {app} inspect ping --timeout=10 -d celery@$HOSTNAME"),
                        "celery inspect ping", not_yet=(NO_NODE_REPLIED,))
    # Open, not only there: natively the file outlives each beat (StateDirectory=), and beat
    # writes it only when it stops; it opens it once it has imported the app and schedules.
    beat = CommandProbe(("sh", "-c", f"find /proc/[0-9]*/fd -lname '{beat_schedule(hs)}*' "
                         "2>/dev/null | grep -q . || { echo 'no process holds its schedule file "
                         f"open yet'; exit {SCHEDULE_NOT_OPEN}; }}"),
                        "its schedule file open", not_yet=(SCHEDULE_NOT_OPEN,))
    names = {name: hs.layout.service(name, f"residency-{name}") for name in STOP_GRACE}
    return [
        ReleaseUnit(names["backend"], SERVE, HttpProbe(hs.stack.backend.port, "/health"),
                    STOP_GRACE["backend"], duration_seconds(gate.start_period), traffic="backend"),
        ReleaseUnit(names["celery-worker"], OVERLAP, ping, STOP_GRACE["celery-worker"],
                    duration_seconds(gate.worker_start_period)),
    ] + ([ReleaseUnit(names["celery-beat"], SINGLE, beat, STOP_GRACE["celery-beat"],
                      duration_seconds(gate.beat_start_period))] if runs_beat(hs) else [])


# --- systemd layout ----------------------------------------------------------------------------

#: The Celery beat schedule lives in /var/lib/<this> (systemd StateDirectory=).
BEAT_STATE_DIR = "residency-celery-beat"
#: Seconds a warm Celery shutdown may take before the pool children are killed.
WORKER_STOP_TIMEOUT = 300
#: Same-host services the app units start after (Debian unit names), by role.
LOCAL_DEPENDENCIES = {"db": "postgresql.service", "redis": "redis-server.service"}
#: Debian packages a native app host needs to build and run a release's virtualenv: wheels
#: without a binary for this platform compile (gcc, headers, libpq for psycopg2).
RUNTIME_PACKAGES = ["python3", "python3-venv", "python3-dev", "build-essential", "libpq-dev"]
#: Where pip keeps downloaded wheels between releases (the app user's).
PIP_CACHE_DIR = "/var/cache/residency-scheduler/pip"


def pip_environment(hs: HostSettings) -> dict[str, str]:
    """What pip needs on an app host: the shared download cache, no version nagging, and the
    CA bundle when the machine trusts extra CAs (a TLS-intercepting proxy)."""
    env = {"PIP_CACHE_DIR": PIP_CACHE_DIR, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "HOME": hs.stack.paths.base_dir}
    if (bundle := base.ca_bundle(hs)) is not None:
        env["PIP_CERT"] = bundle
    return env


def slot_dir(hs: HostSettings, slot: str = "%i") -> str:
    """The release a slot runs: ``<base_dir>/slots/<slot>`` -> ``<base_dir>/releases/<id>``
    (``%i``: the unit instance's own slot). Each release carries its virtualenv (``venv/``)
    beside ``backend/`` and ``frontend/``, so a slot switches code and dependencies together.
    """
    return f"{hs.stack.paths.base_dir}/slots/{slot}"


def slot_env_path(hs: HostSettings, slot: str = "%i") -> str:
    """The slot's own variables (its ports), read by its units beside app.env."""
    return f"{hs.stack.paths.config_dir}/slots/{slot}.env"


def run_properties(hs: HostSettings, release: str, slot: str | None = None) -> list[str]:
    """The systemd properties a one-off command (``systemd-run -p ...``) needs to run like the
    app's units: the app user, the app's environment (secrets through the env file only, never
    on a command line), ``release``'s code and virtualenv, and ``slot``'s own variables.

    Example: ``run_properties(hs, "/opt/rs/slots/blue", "blue")`` -> ``["User=residency", ...]``
    """
    props = [f"User={APP_USER}", f"Group={APP_USER}", f"EnvironmentFile={app_env_path(hs)}",
             f"WorkingDirectory={release}/backend",
             f"Environment=PATH={release}/venv/bin:/usr/local/bin:/usr/bin:/bin",
             f"TemporaryFileSystem={APP_HOME}:mode=0700,uid={APP_UID},gid={APP_UID}"]
    if slot is not None:  # the instance's own variables (its Celery node name)
        props.append(f"EnvironmentFile={slot_env_path(hs, slot)}")
    return props


def listen_address(hs: HostSettings, *consumer_roles: str) -> str:
    """Loopback when every host that connects (``consumer_roles``) is this one, else the
    host's stack address. Example: ``listen_address(hs, "web", "monitoring")``
    """
    remote = [r for r in consumer_roles
              if (carrier := hs.peer(r)) is not None and carrier.name != hs.name]
    return hs.address if remote else "127.0.0.1"


def app_units(hs: HostSettings) -> list[AppUnit]:
    """The three app unit templates of the systemd layout (one instance per release slot:
    ``residency-backend@blue.service``), sharing env file, release and sandbox."""
    b, release = hs.stack.backend, unit_safe_path(slot_dir(hs, "SLOT")).replace("SLOT", "%i")
    venv = f"{release}/venv/bin"
    celery = [Expanded(f"{venv}/celery"), "-A", CELERY_APP]
    shared = dict(
        user=APP_USER,
        uid=APP_UID,
        env_file=unit_safe_path(app_env_path(hs)),
        slot_env_file=unit_safe_path(slot_env_path(hs, "SLOT")).replace("SLOT", "%i"),
        workdir=f"{release}/backend",
        log_dir=unit_safe_path(hs.stack.paths.log_dir),
        multiproc_dir=app_environment(hs).get("PROMETHEUS_MULTIPROC_DIR"),
        home_dir=APP_HOME,
        cache_dir=APP_CACHE_DIR,
        after=tuple(unit for role, unit in LOCAL_DEPENDENCIES.items() if hs.has_role(role)),
    )
    uvicorn = [Expanded(f"{venv}/uvicorn"), "app.main:app", "--host",
               listen_address(hs, "web", "monitoring"), "--port", Expanded("${RS_BACKEND_PORT}"), "--workers", str(b.workers), "--proxy-headers",
               "--forwarded-allow-ips", hs.endpoint("web", "nginx")]
    worker = [*celery, "worker", "-Q", ",".join(b.celery_queues), "--concurrency",
              str(b.celery_concurrency), "--loglevel", b.celery_log_level,
              "--hostname", Expanded("celery@${HOSTNAME}")]
    beat = [*celery, "beat", "--schedule", BEAT_SCHEDULE["native"], "--loglevel",
            b.celery_log_level]
    return [
        AppUnit("residency-backend@.service", "Residency Scheduler API (uvicorn), release slot %i",
                uvicorn, resources(hs), "backend.resources", **shared),
        AppUnit("residency-celery-worker@.service",
                "Residency Scheduler Celery worker, release slot %i", worker,
                b.worker_resources, "backend.worker_resources",
                stop_timeout=WORKER_STOP_TIMEOUT, **shared),
    ] + ([AppUnit("residency-celery-beat@.service", "Residency Scheduler Celery beat, release slot %i",
                  beat, b.beat_resources, "backend.beat_resources", state_dir=BEAT_STATE_DIR,
                  **shared)] if runs_beat(hs) else [])  # one beat per stack


def unit_file(hs: HostSettings, unit: AppUnit) -> RenderedFile:
    """One app unit template; a change moves the app to a new slot (the release procedure)."""
    content = template(f"systemd/{unit.name.replace('@', '')}.j2", hs, unit=unit)
    service = unit.name.split("@")[0]
    return RenderedFile(f"{UNIT_DIR}/{unit.name}", content, "backend",
                        reactions=(Recreate(service),))


#: Between the ports of two release slots (clear of neighbours such as Grafana's 3001).
SLOT_PORT_STEP = 10


def slot_ports(hs: HostSettings, port: int) -> dict[str, int]:
    """The port each release slot of this layout gives a service whose port is ``port``
    (one slot, ``port`` itself, where instances share a name instead).

    Example (systemd): ``slot_ports(hs, 8000)`` -> ``{"blue": 8000, "green": 8010}``; docker,
    reached from another host: ``{"a": 8000, "b": 8001}`` (a range of published ports)
    """
    slots = hs.layout.release_slots_on(hs)
    return {slot: port + i * hs.layout.release_port_step for i, slot in enumerate(slots)} or {"": port}


def slot_env_files(hs: HostSettings) -> list[RenderedFile]:
    """``<config_dir>/slots/<slot>.env``: the port the slot's API listens on."""
    files = []
    for slot, port in slot_ports(hs, hs.stack.backend.port).items():
        content = (f"# Release slot {slot} of the Residency Scheduler API (rendered by rsdeploy).\n"
                   f"RS_BACKEND_PORT={port}\n")
        files.append(RenderedFile(slot_env_path(hs, slot), content, "backend",
                                  reactions=(Recreate(hs.layout.service("backend", "residency-backend")),)))
    return files


def sysusers_file(hs: HostSettings) -> RenderedFile:
    """``/etc/sysusers.d/residency.conf``: the app user, created by ``systemd-sysusers``."""
    content = template("systemd/residency.sysusers.conf.j2", hs, user=APP_USER, uid=APP_UID,
                       home=unit_safe_path(hs.stack.paths.base_dir))
    return RenderedFile("/etc/sysusers.d/residency.conf", content, "backend")


def render(hs: HostSettings) -> list[RenderedFile]:
    files = [app_env_file(hs)]
    if reaches_over_tls(hs):
        files.append(stack_ca_file(hs))
    if not hs.layout.runs_in_containers:  # from images, Compose runs the app: no units
        files += [sysusers_file(hs), *slot_env_files(hs),
                  *(unit_file(hs, unit) for unit in app_units(hs))]
    return files


@deploy("Install the backend's runtime")
def install_runtime(hs: HostSettings) -> None:
    """Natively: Python with venv and what building wheels needs, the app user, and pip's cache.

    Example: ``backend.install_runtime(hs)`` (bootstrap, systemd layout)
    """
    apt.packages(name="Install Python 3 with venv and build tools (for the release's virtualenv)",
                 packages=RUNTIME_PACKAGES, no_recommends=True, update=True, cache_time=3600)
    sysusers = sysusers_file(hs)
    upload = files.put(name=f"Declare the app user {APP_USER} (uid {APP_UID})",
                       src=StringIO(sysusers.content), dest=sysusers.path, mode="644")
    server.shell(name=f"Create the app user {APP_USER}", commands=["systemd-sysusers"],
                 _if=upload.did_change)
    for path in (PIP_CACHE_DIR, hs.stack.paths.log_dir):  # the app writes its logs (PM2's)
        files.directory(name=f"Create {path} (the app user's)", path=path, user=APP_USER,
                        group=APP_USER, mode="750")


def create_cache_dir(hs: HostSettings) -> None:
    """The app's cache directory on an app host (:data:`APP_CACHE_DIR`, XDG_CACHE_HOME), owned
    by the app's uid in both layouts.

    Example: ``backend.create_cache_dir(hs)`` (deploy, before the release switch)
    """
    apply.owned_directory(name=f"Create the app's cache directory {APP_CACHE_DIR} (uid {APP_UID})",
                          path=APP_CACHE_DIR, uid=APP_UID)


# --- validation --------------------------------------------------------------------------------


def validate(tree: Path, hs: HostSettings) -> list[Verdict]:
    """Native units: verify them (the env file is checked by the test suite's parsers)."""
    if hs.layout.runs_in_containers:
        return []
    units = [f"{UNIT_DIR}/{unit.name}" for unit in app_units(hs)]
    return verify_units(tree, units, (f"{hs.stack.paths.base_dir}/slots/",))
