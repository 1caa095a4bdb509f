"""The systemd/PM2 layout on a fresh sandbox host, driven through the rsdeploy CLI: bootstrap -> a
first v1.0.0 whose uvicorn workers crash at start-up (the reference app like the real backend
with metrics on) refused within 90 s, naming the repeated error, nothing serving -> v1.0.0 ->
verify -> status (and a stopped unit it catches) -> logs, stop/start, Celery, Flower behind its
login, diagnose -> a no-op re-run -> a setting change restarts only its reader -> v1.1.0 (a
migration, the dump before it seen by the live Prometheus) under load -> rollback under load ->
v1.2.0-broken refused while v1.0.0 serves -> ``db restore`` brings back the exact rows -> a host
restart brings everything back (PM2 included) and verify passes -> a backend like the real one
(beat writing its schedule 30 s late, libraries writing under HOME) deploys with the default
start periods, without a read-only file system warning. Rows written through the API before each
step are all there after it.

The steps run in file order on one host, as an operator would run them.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import (
    FIRST_VERSION,
    assert_no_read_only_home,
    assert_refused_first_release,
    assert_celery_answers_and_runs_a_task,
    assert_diagnose_finds_a_full_disk,
    assert_flower_shows_the_worker_behind_its_login,
    assert_logs_show_a_request,
    assert_restore_gives_back_the_dumped_rows,
    assert_rows_kept,
    assert_status_catches_a_stopped_service,
    assert_stop_and_start_keep_every_row,
    assert_verified,
    changed_inventory,
    history,
    prometheus_query,
    ready_after,
    ready_site,
    serving,
    site_certificate,
    under_load,
    wait_for,
    write_note,
)

pytestmark = pytest.mark.sandbox

NEXT, BROKEN = "v1.1.0", "v1.2.0-broken"
#: The reference app like the real backend (examples/refapp, REFAPP_LIKE_REAL) without its
#: memory figures (the machine is shared) and with a short start: its beat writes its schedule
#: 30 s late and its libraries write under HOME.
LIKE_REAL = {"REFAPP_LIKE_REAL": "1", "REFAPP_STARTUP_DELAY": "5", "REFAPP_WORKER_MEMORY_MB": "0",
             "REFAPP_BEAT_MEMORY_MB": "0"}
BEAT_DELAY = 30
#: Metrics on (the default) with a version that crashes with them: each uvicorn worker fails
#: about 5 s after it starts, its master starting new ones, as measured.
CRASHING = {**LIKE_REAL, "REFAPP_STARTUP_DELAY": "4", "REFAPP_METRICS_CRASH": "1"}
REPEATED_ERROR = "RuntimeError: Cannot add middleware after an application has started"
#: Alembic head of each release (examples/refapp).
HEADS = {FIRST_VERSION: "0001", NEXT: "0002"}
#: The host's long-running services, whose start times tell what a run restarted.
WATCHED = ("postgresql@15-main", "redis-server", "nginx", "pm2-residency",
           "prometheus", "residency-backend@blue", "residency-celery-worker@blue")


@pytest.fixture(scope="module")
def site():
    yield from ready_site("rs-e2e-sysd", "build", layout="systemd")


@pytest.fixture(scope="module")
def ca_file(site, tmp_path_factory):
    return site_certificate(site, tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def written():
    return []


def started(site) -> dict[str, str]:
    """When each watched service last started (systemd's monotonic clock)."""
    out = site.on_host("systemctl show -p Id,ActiveEnterTimestampMonotonic "
                       + " ".join(f"{name}.service" for name in WATCHED))
    found, unit = {}, None
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key == "Id":
            unit = value.removesuffix(".service")
        elif key == "ActiveEnterTimestampMonotonic":
            found[unit] = value
    return found


def test_a_first_release_in_a_crash_loop_is_refused_fast_and_nothing_serves(site, tmp_path):
    site.heavy("bootstrap").check()
    inventory = changed_inventory(tmp_path, "backend", {"extra_env": CRASHING})
    run = site.heavy("deploy", "--version", FIRST_VERSION, inventory=inventory)
    assert run.code == 3, run.output[-5000:]
    assert_refused_first_release(site, run.stdout.strip().splitlines()[-1],
                                 f"residency-backend: crash loop: {REPEATED_ERROR} (")


def test_first_release_serves_and_verifies(site, written):
    site.rsdeploy("deploy", "--version", FIRST_VERSION).check()
    now = serving(site)
    assert (now["version"], now["schema_revision"]) == (FIRST_VERSION, HEADS[FIRST_VERSION])
    assert_verified(site)
    write_note(site, written, "the no-op re-run")
    attempt = history(site)[-1]
    assert (attempt["version"], attempt["result"]) == (FIRST_VERSION, "ok")
    # PM2 as the guide shows it: the app user's own `pm2 status`.
    status = site.on_host("sudo -u residency pm2 status")
    assert "residency-frontend-blue" in status and "online" in status, status


def test_status_shows_every_unit_and_exits_1_while_one_is_stopped(site):
    assert_status_catches_a_stopped_service(site, "prometheus-alertmanager.service",
                                            "systemctl stop prometheus-alertmanager.service")


def test_logs_show_a_request_from_the_journal_and_debians_files_and_follow_new_ones(site):
    assert_logs_show_a_request(site)  # nginx: its file; backend: the journal; db: its file


def test_stop_and_start_take_the_site_down_and_back_with_every_row(site):
    assert_stop_and_start_keep_every_row(site)  # units, the serving slot's and PM2's app


def test_celery_inspect_reaches_the_worker_and_a_triggered_task_runs(site):
    assert_celery_answers_and_runs_a_task(site)


def test_flower_shows_the_worker_only_behind_its_login(site, tmp_path):
    assert_flower_shows_the_worker_behind_its_login(site, tmp_path)


def test_diagnose_finds_a_full_disk_and_says_what_to_do(site):
    assert_diagnose_finds_a_full_disk(site)


def test_a_second_run_changes_nothing_and_restarts_nothing(site):
    before = started(site)
    for step in (["bootstrap"], ["deploy", "--version", FIRST_VERSION]):
        run = site.rsdeploy(*step).check()
        assert run.changed == 0, run.changed_names
    assert started(site) == before


def test_a_setting_change_restarts_only_its_reader(site, tmp_path, written):
    before = started(site)
    inventory = changed_inventory(tmp_path, "redis", {"maxmemory": "200mb"})
    site.rsdeploy("deploy", "--version", FIRST_VERSION, inventory=inventory).check()
    after = started(site)
    assert after["redis-server"] != before["redis-server"]
    assert {k: v for k, v in after.items() if k != "redis-server"} == \
        {k: v for k, v in before.items() if k != "redis-server"}
    assert "maxmemory 209715200" in site.on_host(
        "REDISCLI_AUTH=$(sed -n 's/^REDIS_PASSWORD=\"\\(.*\\)\"$/\\1/p' "
        "/etc/residency-scheduler/app.env) redis-cli config get maxmemory | tr '\\n' ' '")
    assert_rows_kept(site, written)
    site.rsdeploy("deploy", "--version", FIRST_VERSION).check()  # back to the inventory's


def test_an_upgrade_with_a_migration_drops_no_request(site, written, ca_file):
    write_note(site, written, NEXT)
    run, report = under_load(site, ca_file, "deploy", "--version", NEXT)
    run.check()
    assert report.failed == 0, report.summary()
    assert report.total > 100, report.summary()
    now = serving(site)
    assert (now["version"], now["schema_revision"]) == (NEXT, HEADS[NEXT])
    assert_rows_kept(site, written)
    # The new release runs in the other slot; the old slot's units are stopped and disabled.
    assert site.on_host("systemctl is-active residency-backend@green residency-backend@blue "
                        "|| true").split() == ["active", "inactive"]
    # The dump taken before the migration reached the live Prometheus (node-exporter's
    # textfile collector read what rs-backup published).
    wait_for("a good backup", lambda: [
        r["metric"]["instance"]
        for r in prometheus_query(site, "rsdeploy_backup_last_attempt_success == 1")],
        [site.host.name])


def test_rollback_downgrades_and_drops_no_request(site, written, ca_file):
    write_note(site, written, "rollback")
    run, report = under_load(site, ca_file, "rollback")
    run.check()
    assert report.failed == 0, report.summary()
    now = serving(site)
    assert (now["version"], now["schema_revision"]) == (FIRST_VERSION, HEADS[FIRST_VERSION])
    assert_rows_kept(site, written)
    assert history(site)[-1]["kind"] == "rollback"


def test_a_release_failing_its_health_check_never_gets_traffic(site, written, ca_file):
    write_note(site, written, BROKEN)
    run, report = under_load(site, ca_file, "deploy", "--version", BROKEN)
    assert run.code == 3, run.output[-3000:]
    assert (f"{BROKEN} failed its health check on {site.host.name}: residency-backend: /health "
            "answered 503") in run.stdout, run.stdout
    assert report.failed == 0, report.summary()
    now = serving(site)
    assert (now["version"], now["schema_revision"]) == (FIRST_VERSION, HEADS[FIRST_VERSION])
    assert_rows_kept(site, written)
    # `current` and the units on disk still name the serving release.
    current = site.on_host("readlink -f /opt/residency-scheduler/current")
    assert f"/releases/{FIRST_VERSION}-" in current and BROKEN not in current
    assert "residency-frontend-" in site.on_host("sudo -u residency pm2 jlist")
    assert BROKEN not in site.on_host("sudo -u residency pm2 jlist")


def test_db_restore_brings_back_the_exact_rows(site):
    assert_restore_gives_back_the_dumped_rows(site)
    # the serving slot's units were stopped for it and are back
    assert site.on_host("systemctl is-active residency-backend@blue residency-celery-worker@blue "
                        "residency-celery-beat@blue").split() == ["active"] * 3


def test_a_host_restart_brings_every_service_back(site, written):
    site.reboot()
    site.wait_healthy()
    assert serving(site)["version"] == FIRST_VERSION
    assert_verified(site)
    assert_rows_kept(site, written)


def test_a_backend_like_the_real_one_deploys_with_the_default_start_periods(site, tmp_path,
                                                                            written):
    inventory = changed_inventory(tmp_path, "backend", {"extra_env": LIKE_REAL})
    run = site.rsdeploy("deploy", "--version", FIRST_VERSION, inventory=inventory).check()
    assert ready_after(run, "celery-beat") >= BEAT_DELAY, "beat was ready before its schedule"
    site.wait_healthy()
    assert_no_read_only_home(site, ["backend", "celery-worker", "celery-beat"])
    assert_rows_kept(site, written)
