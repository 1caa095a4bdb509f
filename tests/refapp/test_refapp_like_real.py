"""The reference app's REFAPP_* switches (``app.core.like_real``): behaving like the real backend.

With them on, the stand-in is as heavy and slow as the measured real backend where a deploy
feels it (APP_CONTRACT.md, "Measured on the real backend"): /health stays down during a slow
start, each uvicorn worker really holds its memory, /metrics needs ENABLE_METRICS=true, a
migration can fail with PostgreSQL's own error while the database keeps its revision, beat
writes its schedule late, a library writes under HOME (and warns on a read-only root), and with
metrics on every uvicorn worker can fail at start-up under a live master. Short figures (5 s,
300 MiB) keep the tests quick; the defaults themselves are checked without Docker in
test_refapp_source.py.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from http.client import HTTPException

import pytest
from refapp_support import Published, app_env, http, published_port, wait_http

from rsdeploy.release import crash_loop
from rsdeploy_dev import refapp

pytestmark = pytest.mark.sandbox

DELAY = 5          # REFAPP_STARTUP_DELAY in these tests (65 by default with REFAPP_LIKE_REAL)
MEMORY_MB = 300    # REFAPP_WORKER_MEMORY_MB in these tests (600 by default)
WORKERS = 2
UPGRADE = ["alembic", "upgrade", "head"]
# What Alembic prints when the data step breaks (psycopg2's exception, wrapped by SQLAlchemy).
POSTGRES_ERROR = re.compile(r'psycopg2\.errors\.NotNullViolation\)? null value in column "body"')

# /proc of every process in the container: pid, parent, command line, VmRSS in MiB.
PROCESSES = r"""
import json, os
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        continue
    rss = int(status.get("VmRSS", "0 kB").split()[0]) / 1024
    found.append({"pid": int(pid), "ppid": int(status["PPid"]), "cmd": cmd, "rss_mib": rss})
print(json.dumps(found))
"""


def fresh_name() -> str:
    return f"rs_{uuid.uuid4().hex[:10]}"


def backend_image(tag: str = "v1.0.0") -> str:
    return refapp.image_name(tag, "backend")


def probe(url: str) -> int | None:
    """The status of a GET, or None when nothing answers in time (as a health check sees it)."""
    try:
        return http(url, timeout=1)[0]
    except (OSError, HTTPException):
        return None


def run_once(containers, tag: str, env: dict[str, str], command: list[str] | None = None,
             timeout: float = 90) -> tuple[int, str]:
    """Run the backend image to completion: (exit code, logs)."""
    container = containers(backend_image(tag), command=command, environment=env)
    result = container.wait(timeout=timeout)
    return result["StatusCode"], container.logs().decode()


@pytest.fixture(scope="module")
def slow_heavy(postgres, containers):
    """A REFAPP_LIKE_REAL backend with two workers, a 5 s start and 300 MiB per worker, probed on
    /health from the moment it starts: (published backend, [(seconds since start, status)])."""
    env = app_env(postgres.create_database(fresh_name()), REFAPP_LIKE_REAL="1",
                  REFAPP_STARTUP_DELAY=str(DELAY), REFAPP_WORKER_MEMORY_MB=str(MEMORY_MB),
                  UVICORN_WORKERS=str(WORKERS))
    started = time.monotonic()
    container = containers(backend_image(), environment=env,
                           ports={"8000/tcp": ("127.0.0.1", None)})
    app = Published(container, published_port(container, "8000/tcp"))
    probes: list[tuple[float, int | None]] = []
    while time.monotonic() - started < 90:
        status = probe(app.url + "/health")
        probes.append((time.monotonic() - started, status))
        if status == 200:
            break
        container.reload()
        if container.status == "exited":
            pytest.fail(f"backend exited:\n{container.logs().decode()[-3000:]}")
        time.sleep(0.3)
    return app, probes


def test_health_fails_during_the_startup_delay_and_passes_after(slow_heavy):
    app, probes = slow_heavy
    early = [status for seconds, status in probes if seconds < DELAY]
    assert len(early) >= 3, f"too few probes during the delay: {probes}"
    assert 200 not in early, f"/health was healthy before {DELAY} s: {probes}"
    assert probes[-1][1] == 200, (f"/health never became healthy: {probes[-5:]}\n"
                                  f"{app.container.logs().decode()[-3000:]}")
    assert probes[-1][0] >= DELAY
    assert http(app.url + "/api/v1/notes", {"body": "after a slow start"})[0] == 201
    assert "starting slowly like the real backend" in app.container.logs().decode()


def test_each_uvicorn_worker_holds_the_configured_memory(slow_heavy):
    app, _ = slow_heavy
    result = app.container.exec_run(["python", "-c", PROCESSES])
    assert result.exit_code == 0, result.output.decode()
    processes = json.loads(result.output.decode().strip().splitlines()[-1])
    workers = [p for p in processes if p["ppid"] == 1 and "spawn_main" in p["cmd"]]
    assert len(workers) == WORKERS, processes
    for worker in workers:
        assert worker["rss_mib"] >= MEMORY_MB, f"worker holds only {worker['rss_mib']:.0f} MiB"
    supervisor = next(p for p in processes if p["pid"] == 1)
    assert supervisor["rss_mib"] < MEMORY_MB / 2, "the uvicorn supervisor should stay light"


def test_like_real_has_no_metrics_without_enable_metrics(slow_heavy):
    app, _ = slow_heavy
    assert http(app.url + "/metrics")[0] == 404


@pytest.fixture(scope="module")
def metrics_database(postgres) -> str:
    return postgres.create_database(fresh_name())


@pytest.mark.parametrize("env, expected", [
    ({"REFAPP_METRICS_NEED_ENABLE": "1"}, 404),
    ({"REFAPP_METRICS_NEED_ENABLE": "1", "ENABLE_METRICS": "false"}, 404),
    ({"REFAPP_LIKE_REAL": "1", "REFAPP_STARTUP_DELAY": "0", "REFAPP_WORKER_MEMORY_MB": "0",
      "ENABLE_METRICS": "true"}, 200),
    ({"ENABLE_METRICS": "false"}, 200),  # without the switch: today's behaviour, always on
], ids=["need-enable-unset", "need-enable-false", "like-real-true", "no-switch-false"])
def test_metrics_follow_enable_metrics_only_with_the_switch(metrics_database, backend, env,
                                                            expected):
    app = backend("v1.0.0", metrics_database, **env)
    assert http(app.url + "/health")[0] == 200
    status, text = http(app.url + "/metrics")
    assert status == expected, text[:300]
    if expected == 200:
        assert re.search(r'^http_requests_total\{handler="/health",method="GET",status="2xx"\} ',
                         text, re.M), "requests are not instrumented"
    app.container.stop(timeout=5)


def test_fail_migration_shows_the_postgresql_error_and_keeps_the_revision(postgres, containers):
    database = fresh_name()
    env = app_env(postgres.create_database(database))
    failing = {**env, "REFAPP_FAIL_MIGRATION": "1"}

    def revision() -> str | None:
        if postgres.psql("SELECT to_regclass('alembic_version') IS NULL", database) == "t":
            return None
        return postgres.psql("SELECT version_num FROM alembic_version", database)

    # A fresh database: the container's own start (entrypoint) fails, and nothing is left.
    code, logs = run_once(containers, "v1.0.0", failing)
    assert code != 0 and POSTGRES_ERROR.search(logs), logs[-3000:]
    assert "REFAPP_FAIL_MIGRATION=1" in logs
    assert revision() is None
    assert postgres.psql("SELECT to_regclass('notes') IS NULL", database) == "t", \
        "0001's table outlived the failed upgrade"

    assert run_once(containers, "v1.0.0", env, UPGRADE)[0] == 0
    assert revision() == "0001"

    # An upgrade to v1.1.0 fails midway: 0002's column is rolled back with the revision.
    code, logs = run_once(containers, "v1.1.0", failing, UPGRADE)
    assert code != 0 and POSTGRES_ERROR.search(logs), logs[-3000:]
    assert "Running upgrade 0001 -> 0002" in logs
    assert revision() == "0001"
    columns = postgres.psql("SELECT column_name FROM information_schema.columns "
                            "WHERE table_name = 'notes'", database).split()
    assert "author" not in columns

    # With nothing to upgrade the same environment succeeds: the previous release still starts.
    code, logs = run_once(containers, "v1.0.0", failing, UPGRADE)
    assert code == 0, logs[-3000:]
    assert revision() == "0001"


@pytest.mark.parametrize("command, variable", [
    (["beat"], "REFAPP_BEAT_MEMORY_MB"),
    (["worker", "--concurrency", "1"], "REFAPP_CELERY_MEMORY_MB"),
], ids=["beat", "worker"])
def test_celery_processes_hold_their_configured_memory(postgres, redis, containers, command,
                                                       variable):
    env = app_env(postgres.create_database(fresh_name()), **{variable: "120"})
    celery = containers(backend_image(), environment=env,
                        command=["celery", "-A", "app.core.celery_app", *command])
    marker = f"celery {command[0]} holds".encode()
    deadline = time.monotonic() + 30
    while marker not in (logs := celery.logs()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert marker in logs, logs.decode()[-3000:]
    result = celery.exec_run(["python", "-c", PROCESSES])
    processes = json.loads(result.output.decode().strip().splitlines()[-1])
    main = next(p for p in processes if p["pid"] == 1)
    assert command[0] in main["cmd"] and main["rss_mib"] >= 120, processes
    celery.stop(timeout=5)


def test_a_switch_that_is_no_number_stops_the_preflight(postgres, containers):
    database = fresh_name()
    env = app_env(postgres.create_database(database), REFAPP_STARTUP_DELAY="65s")
    code, logs = run_once(containers, "v1.0.0", env)
    assert code != 0
    assert re.search(r"CRITICAL .*REFAPP_STARTUP_DELAY must be a number, got '65s'", logs), logs
    assert postgres.psql("SELECT to_regclass('alembic_version') IS NULL", database) == "t"


# --- beat's slow start, a library writing under HOME, a crash loop under a live master ----------

BEAT_DELAY = 6  # REFAPP_BEAT_DELAY in these tests (30 with REFAPP_LIKE_REAL)
SCHEDULE = "/tmp/celerybeat-schedule"


def test_beat_writes_its_schedule_only_after_its_delay(postgres, redis, containers):
    env = app_env(postgres.create_database(fresh_name()), REFAPP_BEAT_DELAY=str(BEAT_DELAY))
    started = time.monotonic()
    beat = containers(backend_image(), environment=env,
                      command=["celery", "-A", "app.core.celery_app", "beat", "-s", SCHEDULE])
    seen = None
    while seen is None and time.monotonic() - started < 60:
        if beat.exec_run(["sh", "-c", f"ls {SCHEDULE}*"]).exit_code == 0:
            seen = time.monotonic() - started
        time.sleep(0.5)
    logs = beat.logs().decode()
    assert seen is not None, logs[-3000:]
    assert seen >= BEAT_DELAY, f"the schedule file was there after {seen:.1f} s"
    assert "celery beat: starting slowly like the real backend" in logs and "REFAPP_BEAT_DELAY" in logs
    beat.stop(timeout=5)


#: matplotlib's warning when HOME is not writable (APP_CONTRACT.md), as the stand-in logs it.
READ_ONLY_HOME = re.compile(r"mkdir -p failed for path /app/\.config/matplotlib: \[Errno 30\] "
                            r"Read-only file system")


def test_a_library_writing_under_home_warns_on_a_read_only_root_and_not_with_a_home(
        postgres, containers):
    """The image's HOME (/app) on a read-only root: matplotlib's warning, as the real backend
    prints it; with HOME and XDG_CACHE_HOME on writable mounts (as rsdeploy gives them): none,
    and the files are there."""
    env = app_env(postgres.create_database(fresh_name()), REFAPP_HOME_WRITES="1")
    plain = containers(backend_image(), environment=env, read_only=True,
                       tmpfs={"/tmp": ""}, ports={"8000/tcp": ("127.0.0.1", None)})
    wait_http(f"http://127.0.0.1:{published_port(plain, '8000/tcp')}/", plain)
    assert READ_ONLY_HOME.search(plain.logs().decode()), plain.logs().decode()[-3000:]

    homed = containers(backend_image(), read_only=True, ports={"8000/tcp": ("127.0.0.1", None)},
                       environment={**env, "HOME": "/run/home", "XDG_CACHE_HOME": "/run/cache"},
                       tmpfs={"/tmp": "", "/run/home": "uid=1001", "/run/cache": "uid=1001"})
    wait_http(f"http://127.0.0.1:{published_port(homed, '8000/tcp')}/", homed)
    logs = homed.logs().decode()
    assert "Read-only file system" not in logs and "mkdir -p failed" not in logs, logs[-3000:]
    written = homed.exec_run(["cat", "/run/home/.config/matplotlib/like-real.txt",
                              "/run/cache/matplotlib/like-real.txt"])
    assert written.exit_code == 0 and b"uvicorn worker" in written.output, written.output
    for container in (plain, homed):
        container.stop(timeout=5)


def test_metrics_crash_fails_every_worker_under_a_live_master(postgres, containers):
    """REFAPP_METRICS_CRASH with ENABLE_METRICS=true: each uvicorn worker fails at start-up
    with Starlette's own error, its master starts new ones, the container keeps running and
    the port never answers; rsdeploy's crash-loop reading of the log names the error."""
    env = app_env(postgres.create_database(fresh_name()), REFAPP_METRICS_CRASH="1",
                  ENABLE_METRICS="true", REFAPP_STARTUP_DELAY="1", UVICORN_WORKERS="2")
    app = containers(backend_image(), environment=env, ports={"8000/tcp": ("127.0.0.1", None)})
    url = f"http://127.0.0.1:{published_port(app, '8000/tcp')}/health"
    deadline = time.monotonic() + 60
    while (logs := app.logs().decode()).count("Child process") < 4 and time.monotonic() < deadline:
        assert probe(url) is None, "a worker served although each one fails at start-up"
        time.sleep(1)
    app.reload()
    assert app.status == "running", logs[-3000:]  # the master lives on
    error = "RuntimeError: Cannot add middleware after an application has started"
    assert logs.count(error) >= 4 and re.search(r"Child process \[\d+\] died", logs), logs[-3000:]
    assert crash_loop(0, logs, 20) == (f"crash loop: {error} ({logs.count(error)} times in the 20 s "
                                       "since it started)")
    # Without ENABLE_METRICS the same switches start and serve.
    calm = containers(backend_image(), environment={**env, "ENABLE_METRICS": "false"},
                      ports={"8000/tcp": ("127.0.0.1", None)})
    wait_http(f"http://127.0.0.1:{published_port(calm, '8000/tcp')}/", calm)
    for container in (app, calm):
        container.stop(timeout=5)
