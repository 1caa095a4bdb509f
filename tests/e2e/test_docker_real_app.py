"""The docker layout against a backend that behaves like the real one where it matters (the
reference app's REFAPP_LIKE_REAL switch: memory each uvicorn worker really holds, a 70 s start,
beat writing its schedule 30 s late, libraries writing under HOME, /metrics only with
ENABLE_METRICS=true, workers failing at start-up under a live master, a migration that can fail
midway), on a fresh sandbox host: a first release whose workers crash at start-up is refused
within 90 s naming the repeated error, says nothing serves and leaves the database empty; a
slow start and a slow beat deploy with the default start periods, and no library complains of
a read-only file system; metrics off deploys and verifies with no backend target; a limit that
passes `check` but is too small at run time is reported as OOM-killed with the service named;
a failing migration's own error reaches the deploy output.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from rsdeploy_dev import images
from rsdeploy_dev import sandbox as sandbox_module
from tests.e2e.conftest import (
    FIRST_VERSION,
    assert_no_read_only_home,
    assert_refused_first_release,
    assert_verified,
    changed_inventory,
    ready_after,
    ready_site,
)

pytestmark = pytest.mark.sandbox

NEXT_VERSION = "v1.1.0"  # adds migration 0002
#: The real backend's start on 2 cores (APP_CONTRACT.md): 65-70 s before /health answers.
REAL_START = 70
#: The real beat's schedule file 27 s after its start: the like-real figure.
BEAT_DELAY = 30
LIKE_REAL = {"REFAPP_LIKE_REAL": "1", "REFAPP_STARTUP_DELAY": str(REAL_START)}
QUICK_START = {**LIKE_REAL, "REFAPP_STARTUP_DELAY": "5"}
#: Metrics on (the default) with a version that crashes with them: each uvicorn worker fails
#: about 5 s after it starts, as measured; the memory figure is left out (the machine is shared).
CRASHING = {**LIKE_REAL, "REFAPP_STARTUP_DELAY": "4", "REFAPP_METRICS_CRASH": "1",
            "REFAPP_WORKER_MEMORY_MB": "0"}
REPEATED_ERROR = "RuntimeError: Cannot add middleware after an application has started"


@pytest.fixture(scope="module")
def site():
    yield from ready_site("rs-e2e-real", "pull")


def in_service(site, service: str, command: str) -> str:
    """``command`` inside the project's container of ``service`` on the host; its output."""
    return site.on_host(f"docker exec $(docker ps -q --filter label=com.docker.compose.service="
                        f"{service}) {command}")


def schema_revision(site) -> str:
    """The database's Alembic revision, "" when it has none (no table, or empty)."""
    return in_service(site, "db", "psql -U postgres -d residency_scheduler -tAc \"SELECT "
                      "version_num FROM alembic_version\" 2>/dev/null || true").strip()


def test_a_first_release_in_a_crash_loop_is_refused_fast_and_nothing_serves(site, tmp_path):
    site.heavy("bootstrap").check()
    inventory = changed_inventory(tmp_path, "backend", {"extra_env": CRASHING})
    run = site.heavy("deploy", "--version", FIRST_VERSION, inventory=inventory)
    assert run.code == 3, run.output[-5000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert_refused_first_release(site, summary, f"backend: crash loop: {REPEATED_ERROR} (")
    assert schema_revision(site) == "", "the refused first release left its migration"


def test_a_slow_start_and_a_slow_beat_deploy_with_the_default_start_periods(site, tmp_path):
    inventory = changed_inventory(tmp_path, "backend", {"extra_env": LIKE_REAL})
    started = time.monotonic()
    run = site.rsdeploy("deploy", "--version", FIRST_VERSION, inventory=inventory).check()
    assert time.monotonic() - started > REAL_START, "the deploy did not wait for the slow start"
    assert ready_after(run, "celery-beat") >= BEAT_DELAY, "beat was ready before its schedule"
    assert site.wait_healthy() == {"status": "healthy", "database": "connected"}
    # Metrics on (the default): the verify suite finds the backend's scrape target up.
    assert_verified(site, inventory=inventory)
    assert_no_read_only_home(site, ["backend", "celery-worker", "celery-beat"])


def test_metrics_off_deploys_and_verifies_with_no_backend_target(site, tmp_path):
    inventory = changed_inventory(tmp_path, "backend", {"extra_env": QUICK_START, "metrics": False})
    site.rsdeploy("deploy", inventory=inventory).check()
    assert_verified(site, inventory=inventory)
    targets = json.loads(site.on_host("curl -fsS http://127.0.0.1:9090/api/v1/targets"))
    jobs = {t["labels"]["job"] for t in targets["data"]["activeTargets"]}
    assert "backend" not in jobs and "node" in jobs, jobs
    rules = json.loads(site.on_host("curl -fsS http://127.0.0.1:9090/api/v1/rules"))
    groups = {group["name"] for group in rules["data"]["groups"]}
    assert "backend" not in groups, groups
    status = in_service(site, "backend", "python -c \"import urllib.request, urllib.error\n"
                        "try: urllib.request.urlopen('http://127.0.0.1:8000/metrics')\n"
                        "except urllib.error.HTTPError as e: print(e.code)\"")
    assert status.strip() == "404", "the backend still serves /metrics without ENABLE_METRICS"


def test_a_limit_too_small_at_run_time_is_reported_as_oom_killed(site, tmp_path):
    # check passes (2 x 100m + 100m = 300m) but each worker really holds 600 MB.
    backend = {"extra_env": {**QUICK_START, "REFAPP_WORKER_MEMORY_MB": "600"},
               "memory_per_worker": "100m", "memory_headroom": "100m",
               "resources": {"memory": "300m", "cpus": 1.0},
               "health": {"start_period": "20s", "interval": "10s", "retries": 2,
                          "wait_timeout": "90s"}}
    inventory = changed_inventory(tmp_path, "backend", backend)
    run = site.rsdeploy("deploy", inventory=inventory)
    assert run.code != 0, run.output[-3000:]
    assert re.search(r"service backend: OOM-killed( \d+ times)? \(memory limit 300 MiB\)",
                     run.output), run.output[-5000:]
    assert "Traceback" not in run.output


def test_a_failing_migration_shows_its_own_error_and_keeps_the_schema(site, tmp_path):
    images.build(["backend", "frontend"], [NEXT_VERSION])
    sandbox_module.push_images(site.sandbox.prefix, ["backend", "frontend"], [NEXT_VERSION])
    before = schema_revision(site)
    inventory = changed_inventory(tmp_path, "backend", {"extra_env": {"REFAPP_FAIL_MIGRATION": "1"}})
    run = site.rsdeploy("deploy", "--version", NEXT_VERSION, inventory=inventory)
    assert run.code == 3, run.output[-3000:]  # refused, the previous release serving
    assert "its migration to 0002 failed" in run.stdout, run.output[-5000:]
    # The migration's own words (Alembic/PostgreSQL), from its log, not just "exit 1".
    assert "violates" in run.output or "psycopg2.errors" in run.output, run.output[-5000:]
    secrets = yaml.safe_load(site.sandbox.paths.secrets.read_text())
    assert secrets["db_password"] not in run.output
    assert schema_revision(site) == before, "the failed migration changed the schema revision"
