"""The reference app's images against real PostgreSQL 15 + pgvector and Redis containers.

What a deploy relies on: migrations run at start, /health tells the truth about the database,
data survives an upgrade, the v1.1.0 migration downgrades, v1.2.0-broken fails its health check,
v1.3.0-badmigration's migration fails with PostgreSQL's error and leaves the previous revision,
unsafe production secrets are refused before anything touches the database, Celery answers
``inspect ping``, and the frontend shows its version and proxies /api to the backend.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
from docker.errors import APIError
from refapp_support import SECRET_KEY, app_env, http, published_port, wait_http

from rsdeploy_dev import refapp


pytestmark = pytest.mark.sandbox

QUEUES = "default,resilience,notifications,metrics,exports,security"
BAD_MIGRATION = "v1.3.0-badmigration"
# What Alembic prints when 0003's seed breaks (psycopg2's exception, wrapped by SQLAlchemy).
SEED_ERROR = re.compile(r'psycopg2\.errors\.NotNullViolation\)? null value in column "name" '
                        r'of relation "wards" violates not-null constraint')


def fresh_name() -> str:
    return f"rs_{uuid.uuid4().hex[:10]}"


def json_of(url: str, data: dict | None = None) -> tuple[int, dict]:
    status, body = http(url, data)
    return status, json.loads(body)


def wait_status(url: str, expected: int, timeout: float = 30) -> int:
    """Poll ``url`` until it answers ``expected``; returns the last status seen."""
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        status, _ = http(url)
        if status == expected:
            break
        time.sleep(0.5)
    return status


def run_once(containers, tag: str, env: dict[str, str], command: list[str] | None = None,
             timeout: float = 90) -> tuple[int, str]:
    """Run the backend image to completion: (exit code, logs)."""
    container = containers(refapp.image_name(tag, "backend"), command=command, environment=env)
    result = container.wait(timeout=timeout)
    return result["StatusCode"], settled_logs(container)


def settled_logs(container, tries: int = 20) -> str:
    """An exited container's whole log: Docker's log copier can trail the exit by a moment
    (CI once read ``alembic current`` without its last line), so read until two reads agree."""
    logs = container.logs()
    for _ in range(tries):
        time.sleep(0.25)
        again = container.logs()
        if again == logs:
            break
        logs = again
    return logs.decode()


@pytest.fixture(scope="module")
def v1(postgres, backend):
    """v1.0.0 on its own database, reachable as ``backend`` by the frontend."""
    return backend("v1.0.0", postgres.create_database(fresh_name()), aliases=("backend",))


def test_images_run_as_uid_1001(built, docker_client):
    for part in refapp.PARTS:
        image = docker_client.images.get(refapp.image_name("v1.0.0", part))
        assert image.attrs["Config"]["User"] == "1001", part
        assert not image.attrs["Config"].get("Healthcheck"), f"{part}: Compose owns health checks"


def test_backend_migrates_at_start_and_reports_its_version(v1):
    status, root = json_of(v1.url + "/")
    assert status == 200 and root["status"] == "healthy" and root["version"] == "v1.0.0"
    _, version = json_of(v1.url + "/api/v1/version")
    assert version["schema_revision"] == "0001"


def test_health_is_connected_only_while_the_database_answers(postgres, v1):
    assert json_of(v1.url + "/health") == (200, {"status": "healthy", "database": "connected"})
    postgres.container.stop(timeout=10)
    try:
        status, body = json_of(v1.url + "/health")
        assert (status, body["database"]) == (503, "unreachable")
        _, resilience = json_of(v1.url + "/health/resilience")
        assert resilience["status"] == "degraded"
    finally:
        postgres.container.start()
    assert wait_status(v1.url + "/health", 200, timeout=60) == 200, "backend did not recover"


def test_resilience_lists_the_contract_components(v1):
    status, body = json_of(v1.url + "/health/resilience")
    assert status == 200 and body["status"] == "operational"
    assert body["components"][:4] == ["utilization_monitor", "defense_in_depth",
                                      "contingency_analyzer", "fallback_scheduler"]


def test_notes_round_trip_through_postgres(v1):
    status, created = json_of(v1.url + "/api/v1/notes", {"body": "night float, ward 3"})
    assert status == 201
    _, notes = json_of(v1.url + "/api/v1/notes")
    assert {"id": created["id"], "body": "night float, ward 3"}.items() <= notes[-1].items()


def test_metrics_have_the_names_dashboards_and_alerts_use(v1):
    http(v1.url + "/health")
    http(v1.url + "/does-not-exist")
    _, text = http(v1.url + "/metrics")
    assert re.search(r'^http_requests_total\{handler="/health",method="GET",status="2xx"\} ', text, re.M)
    assert 'status="4xx"' in text
    for name in ("http_request_duration_seconds_bucket", "http_request_duration_highr_seconds_bucket",
                 "resilience_utilization_rate{", "resilience_utilization_level ",
                 "resilience_defense_level "):
        assert name in text, f"{name} missing from /metrics"


def test_metrics_add_up_across_uvicorn_workers(postgres, backend):
    app = backend("v1.0.0", postgres.create_database(fresh_name()), UVICORN_WORKERS="2",
                  PROMETHEUS_MULTIPROC_DIR="/tmp/metrics")
    for _ in range(12):
        assert http(app.url + "/health")[0] == 200
    # A worker counts a request once its answer is sent: the last count may land just after.
    deadline, counted = time.monotonic() + 5, 0.0
    while counted < 12 and time.monotonic() < deadline:
        _, text = http(app.url + "/metrics")
        found = re.search(r'^http_requests_total\{handler="/health",method="GET",status="2xx"\} (\S+)',
                          text, re.M)
        counted = float(found.group(1)) if found else 0.0
    assert counted == 12, f"{counted:g} of 12 requests counted: requests served by one worker were lost"
    assert re.search(r"^resilience_defense_level 1\.0$", text, re.M)


def test_upgrade_to_v1_1_0_keeps_data_and_downgrade_works(postgres, backend, containers):
    database_url = postgres.create_database(fresh_name())
    old = backend("v1.0.0", database_url)
    json_of(old.url + "/api/v1/notes", {"body": "written by v1.0.0"})
    old.container.stop(timeout=10)

    new = backend("v1.1.0", database_url)
    _, version = json_of(new.url + "/api/v1/version")
    assert (version["version"], version["schema_revision"]) == ("v1.1.0", "0002")
    assert json_of(new.url + "/api/v1/notes", {"body": "signed", "author": "chief"})[0] == 201
    _, notes = json_of(new.url + "/api/v1/notes")
    assert [(n["body"], n["author"]) for n in notes] == [("written by v1.0.0", None),
                                                        ("signed", "chief")]
    new.container.stop(timeout=10)

    code, logs = run_once(containers, "v1.1.0", app_env(database_url), ["alembic", "downgrade", "-1"])
    assert code == 0, logs
    database = database_url.rsplit("/", 1)[1]
    assert postgres.psql("SELECT version_num FROM alembic_version", database) == "0001"
    columns = postgres.psql("SELECT column_name FROM information_schema.columns "
                            "WHERE table_name = 'notes' ORDER BY column_name", database)
    assert "author" not in columns.split()
    rolled_back = backend("v1.0.0", database_url)
    _, notes = json_of(rolled_back.url + "/api/v1/notes")
    assert [n["body"] for n in notes] == ["written by v1.0.0", "signed"]


def test_v1_2_0_broken_starts_but_fails_its_health_check(postgres, backend):
    broken = backend("v1.2.0-broken", postgres.create_database(fresh_name()))
    _, root = json_of(broken.url + "/")
    assert root["version"] == "v1.2.0-broken"
    assert http(broken.url + "/health")[0] == 503


def schema(postgres, database: str) -> str:
    """Every table and column of the app's schema, one ``table.column`` a line."""
    return postgres.psql("SELECT table_name || '.' || column_name FROM information_schema.columns "
                         "WHERE table_schema = 'public' ORDER BY 1", database)


@pytest.mark.parametrize("previous, revision", [("v1.1.0", "0002"), ("v1.0.0", "0001")])
def test_v1_3_0_badmigration_fails_midway_and_keeps_the_previous_revision(
        postgres, backend, containers, previous, revision):
    """From v1.1.0 only 0003 is pending; from v1.0.0, 0002 too: one transaction undoes both."""
    database_url = postgres.create_database(fresh_name())
    database = database_url.rsplit("/", 1)[1]
    old = backend(previous, database_url)
    json_of(old.url + "/api/v1/notes", {"body": f"written by {previous}"})
    old.container.stop(timeout=10)
    before = schema(postgres, database)

    # Started as a deploy starts it: the entrypoint migrates, fails, and never starts uvicorn.
    code, logs = run_once(containers, BAD_MIGRATION, app_env(database_url))
    assert code != 0 and SEED_ERROR.search(logs), logs[-3000:]
    assert "Running upgrade 0002 -> 0003" in logs

    code, current = run_once(containers, BAD_MIGRATION, app_env(database_url),
                             ["alembic", "current"])
    # Its stdout (the revision) and stderr (alembic's INFO lines) reach the log in either order.
    printed = [line for line in current.splitlines() if line and not line.startswith("INFO ")]
    assert code == 0 and printed == [revision], current
    assert postgres.psql("SELECT to_regclass('wards') IS NULL", database) == "t"
    assert schema(postgres, database) == before, "the failed upgrade left schema changes"

    # The previous release still starts on that database: a deploy can roll back to it.
    rolled_back = backend(previous, database_url)
    assert http(rolled_back.url + "/health")[0] == 200
    _, notes = json_of(rolled_back.url + "/api/v1/notes")
    assert [n["body"] for n in notes] == [f"written by {previous}"]


def test_v1_3_0_badmigration_downgrade_drops_the_wards_table(postgres, containers):
    """The upgrade never succeeds, so its schema step is done by hand, as an operator fixing
    the seed would; ``alembic downgrade -1`` then undoes it."""
    database_url = postgres.create_database(fresh_name())
    database = database_url.rsplit("/", 1)[1]
    code, logs = run_once(containers, "v1.1.0", app_env(database_url), ["alembic", "upgrade", "head"])
    assert code == 0, logs[-3000:]
    # As the app role: the downgrade runs as it, and only a table's owner may drop it.
    postgres.psql("SET ROLE scheduler; CREATE TABLE wards (id serial PRIMARY KEY, "
                  "code varchar(20) NOT NULL UNIQUE, name varchar(200) NOT NULL); "
                  "UPDATE alembic_version SET version_num = '0003'", database)
    code, logs = run_once(containers, BAD_MIGRATION, app_env(database_url),
                          ["alembic", "downgrade", "-1"])
    assert code == 0 and "Running downgrade 0003 -> 0002" in logs, logs[-3000:]
    assert postgres.psql("SELECT version_num FROM alembic_version", database) == "0002"
    assert postgres.psql("SELECT to_regclass('wards') IS NULL", database) == "t"


@pytest.mark.parametrize("unsafe, reason", [
    ({"SECRET_KEY": "changeme"}, "SECRET_KEY"),
    ({"SECRET_KEY": "your-secret-key-change-in-production"}, "SECRET_KEY"),
    ({"WEBHOOK_SECRET": "short"}, "WEBHOOK_SECRET"),
    ({"REDIS_PASSWORD": "short-redis-pw"}, "REDIS_PASSWORD"),
    ({"DATABASE_URL": "postgresql://scheduler:short@db:5432/x"}, "DATABASE_URL"),
    ({"CORS_ORIGINS": '["*"]'}, "CORS_ORIGINS"),
])
def test_unsafe_production_settings_are_refused_before_migrating(postgres, containers, unsafe, reason):
    database = fresh_name()
    env = app_env(postgres.create_database(database), **unsafe)
    code, logs = run_once(containers, "v1.0.0", env)
    assert code != 0
    assert re.search(rf"CRITICAL .*refusing to start with DEBUG=false: .*{reason}", logs), logs
    assert postgres.psql("SELECT to_regclass('alembic_version') IS NULL", database) == "t"


def test_debug_mode_skips_the_production_rules(postgres, backend):
    app = backend("v1.0.0", postgres.create_database(fresh_name()), DEBUG="true", SECRET_KEY="dev")
    assert http(app.url + "/health")[0] == 200


def test_migration_needs_pgvector_created_by_a_superuser(postgres, containers):
    """A hardened app role may not CREATE EXTENSION vector: the deploy must do it first."""
    env = app_env(postgres.create_database(fresh_name(), vector=False))
    code, logs = run_once(containers, "v1.0.0", env)
    assert code != 0 and "permission denied" in logs, logs


def test_celery_worker_answers_inspect_ping_and_runs_a_task(postgres, redis, containers, v1):
    env = app_env(postgres.create_database(fresh_name()))
    worker = containers(refapp.image_name("v1.0.0", "backend"), environment=env,
                        command=["celery", "-A", "app.core.celery_app", "worker", "-Q", QUEUES])
    ping = ["sh", "-c", "celery -A app.core.celery_app inspect ping -d celery@$HOSTNAME"]
    deadline = time.monotonic() + 60
    while (result := worker.exec_run(ping)).exit_code != 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert result.exit_code == 0 and b"pong" in result.output, worker.logs().decode()[-3000:]
    call = worker.exec_run(["python", "-c", (
        "from app.tasks.resilience import periodic_health_check as t;"
        "print(t.delay().get(timeout=30)['status'])")])
    assert call.output.decode().strip().endswith("operational"), call.output.decode()


def test_beat_schedule_is_the_contract_schedule(built, docker_client):
    script = ("import json; from app.core.celery_app import celery_app as c;"
              "print(json.dumps({k: [v['task'].rsplit('.', 1)[1], str(v['schedule'])]"
              " for k, v in c.conf.beat_schedule.items()}))")
    output = docker_client.containers.run(
        refapp.image_name("v1.0.0", "backend"), ["python", "-c", script], remove=True,
        environment={"DEBUG": "true"})
    schedule = sorted(json.loads(output.decode().strip().splitlines()[-1]).values())
    assert schedule == [
        ["generate_utilization_forecast", "<crontab: 0 6 * * * (m/h/dM/MY/d)>"],
        ["periodic_health_check", "<crontab: */15 * * * * (m/h/dM/MY/d)>"],
        ["precompute_fallback_schedules", "<crontab: 0 3 * * sunday (m/h/dM/MY/d)>"],
        ["run_contingency_analysis", "<crontab: 0 2 * * * (m/h/dM/MY/d)>"],
    ]


def test_frontend_shows_versions_and_proxies_api_to_backend_url(containers, v1):
    frontend = containers(refapp.image_name("v1.0.0", "frontend"),
                          environment={"BACKEND_URL": "http://backend:8000"},
                          ports={"3000/tcp": ("127.0.0.1", None)})
    url = f"http://127.0.0.1:{published_port(frontend, '3000/tcp')}"
    wait_http(url + "/", frontend, timeout=60)
    status, page = http(url + "/")
    assert status == 200
    assert re.search(r'id="frontend-version">v1\.0\.0<', page)
    assert re.search(r'id="backend-version">v1\.0\.0<', page), "no backend version via BACKEND_URL"
    script = re.search(r'src="(/_next/static/[^"]+\.js)"', page)
    assert script and http(url + script.group(1))[0] == 200, "static assets are not served"
    status, version = json_of(url + "/api/v1/version")
    assert (status, version["service"]) == (200, "residency-scheduler-backend")
    status, note = json_of(url + "/api/v1/notes", {"body": "via the frontend proxy"})
    assert status == 201 and note["body"] == "via the frontend proxy"


def test_secret_key_is_not_echoed_anywhere(v1):
    for path in ("/", "/api/v1/version", "/health/resilience", "/metrics"):
        assert SECRET_KEY not in http(v1.url + path)[1], path


#: Where the reference app's beat keeps its schedule by default (a shelve: the file name may
#: get a suffix), outside the read-only /app (examples/refapp/backend/app/core/celery_app.py).
BEAT_SCHEDULE = "/tmp/celerybeat-schedule"


def schedule_written(container) -> bool:
    """Whether beat's schedule store is in the container (False once the container stopped:
    the caller's status check says so)."""
    try:
        return container.exec_run(["sh", "-c", f"ls {BEAT_SCHEDULE}*"]).exit_code == 0
    except APIError:  # stopped between the status check and this command
        return False


def test_celery_beat_starts_with_a_read_only_app_dir(postgres, redis, containers):
    """Beat keeps its schedule state outside /app, which uid 1001 cannot write: it has written
    its schedule store (a store it cannot write ends beat right after "Starting") and runs."""
    env = app_env(postgres.create_database(fresh_name()))
    beat = containers(refapp.image_name("v1.0.0", "backend"), environment=env,
                      command=["celery", "-A", "app.core.celery_app", "beat"])
    deadline = time.monotonic() + 60
    while True:
        beat.reload()
        assert beat.status == "running" and time.monotonic() < deadline, \
            f"beat {beat.status}, no {BEAT_SCHEDULE}: {beat.logs().decode()[-3000:]}"
        if schedule_written(beat):
            break
        time.sleep(0.5)
    beat.reload()
    assert beat.status == "running" and b"beat: Starting" in beat.logs(), \
        beat.logs().decode()[-3000:]
