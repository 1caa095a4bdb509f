"""Releases on a fresh sandbox host, docker layout, under steady load through nginx: v1.0.0 ->
v1.1.0 (a migration) -> rollback to v1.0.0 (a downgrade) -> v1.2.0-broken (refused, never
served) -> v1.3.0-badmigration (refused, revision unchanged) -> a deploy interrupted by Ctrl-C
-> v1.1.0 again -> v1.4.0-irreversible with a Prometheus setting changed, cut off by an
unreachable registry after the config went up and carried out in full by the next run -> its
rollback, refused until --restore-backup puts back the dump taken before it. Rows written before
each step are all there after it; a concurrent deploy is refused by the lock; ``rsdeploy
releases`` shows every attempt with its result, and the live Prometheus sees the release the
host exports, and each backup: a failed one fires BackupFailed until the next good one.

The steps run in file order on one host, as an operator (or CI) would run them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from rsdeploy_dev import REPO_ROOT
from rsdeploy.lock import HostLock
from rsdeploy.stack import load_inventory
from rsdeploy_dev import images, registry
from rsdeploy_dev import sandbox as sandbox_module
from rsdeploy_dev.engine import ensure_engine
from tests.e2e.conftest import (
    FIRST_VERSION,
    SANDBOX_INVENTORY,
    assert_restore_gives_back_the_dumped_rows,
    assert_rows_kept,
    changed_inventory,
    full_disk,
    history,
    prometheus_query,
    ready_site,
    serving,
    site_certificate,
    under_load,
    wait_for,
    write_note,
)

pytestmark = pytest.mark.sandbox

NEXT, BROKEN, BAD_MIGRATION = "v1.1.0", "v1.2.0-broken", "v1.3.0-badmigration"
IRREVERSIBLE = "v1.4.0-irreversible"  # its migration 0003 has no working downgrade
#: Alembic head of each release (examples/refapp).
HEADS = {FIRST_VERSION: "0001", NEXT: "0002"}


@pytest.fixture(scope="module")
def site():
    for found in ready_site("rs-e2e-rel", "pull"):
        images.build(["backend", "frontend"], [NEXT, BROKEN, BAD_MIGRATION, IRREVERSIBLE])
        sandbox_module.push_images(found.sandbox.prefix, ["backend", "frontend"],
                                   [NEXT, BROKEN, BAD_MIGRATION, IRREVERSIBLE])
        yield found


@pytest.fixture(scope="module")
def ca_file(site, tmp_path_factory):
    """The site's self-signed certificate, which the load trusts (and nothing else)."""
    return site_certificate(site, tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def written():
    """Every note the steps wrote (its body), to find after each later step."""
    return []


def app_containers(site) -> list[str]:
    return site.on_host("docker ps -a --format '{{.Names}}' | grep -E "
                        "'backend|frontend|celery' | sort").split()


def test_first_release_serves_and_is_recorded(site, written):
    site.heavy("bootstrap").check()
    site.heavy("deploy", "--version", FIRST_VERSION).check()
    assert serving(site)["version"] == FIRST_VERSION
    write_note(site, written, NEXT)
    (attempt,) = history(site)
    assert (attempt["version"], attempt["result"], attempt["revision_after"]) == (
        FIRST_VERSION, "ok", "0001")


def test_an_upgrade_with_a_migration_drops_no_request(site, written, ca_file):
    run, report = under_load(site, ca_file, "deploy", "--version", NEXT)
    run.check()
    assert report.failed == 0, report.summary()
    assert report.total > 100, report.summary()
    now = serving(site)
    assert (now["version"], now["schema_revision"]) == (NEXT, HEADS[NEXT])
    assert_rows_kept(site, written)
    last = history(site)[-1]
    assert (last["result"], last["revision_before"], last["revision_after"]) == ("ok", "0001", "0002")
    # The dump taken before migrating: private, named after the release it was taken under.
    assert last["backup"].endswith(f"-{FIRST_VERSION}.dump"), last
    assert site.on_host(f"stat -c %a {last['backup']}").strip() == "600"
    # The old containers are gone: one of each app service serves.
    assert len(app_containers(site)) == 4, app_containers(site)


#: Seconds the waiting deploy may wait for the lock (``--lock-wait``).
LOCK_WAIT = 300


def wait_until_it_waits_for_the_lock(site, run: Future, seconds: float = 120) -> None:
    """Until ``run`` (an rsdeploy command under way) waits for the host's deploy lock there:
    its ``flock -w`` runs on the host."""
    deadline = time.monotonic() + seconds
    while site.on_host(f"pgrep -fc '[f]lock -w {LOCK_WAIT} ' || true").strip() in ("", "0"):
        assert not run.done(), f"it ended instead of waiting: {run.result().output[-2000:]}"
        assert time.monotonic() < deadline, f"no run waits for the lock after {seconds} s"
        time.sleep(1)


def test_a_second_deploy_waits_for_the_lock_or_is_refused_at_once(site, monkeypatch):
    """While another run holds the host's deploy lock: a deploy is refused at once naming the
    holder (exit 4); one with ``--lock-wait`` waits on the host until the holder lets go, then
    deploys."""
    for name, value in site.env.items():  # the sandbox inventory reads its prefix from there
        monkeypatch.setenv(name, value)
    hs = load_inventory(str(SANDBOX_INVENTORY), str(site.sandbox.paths.secrets))[site.host.name]
    holder = {"who": "ana@ops-laptop", "action": "deploying", "version": NEXT,
              "message": "hotfix in progress"}
    with ThreadPoolExecutor(max_workers=1) as pool, HostLock(hs, holder):
        started = time.monotonic()
        run = site.rsdeploy("deploy", "--version", NEXT)
        assert time.monotonic() - started < 30
        waiting = pool.submit(site.rsdeploy, "deploy", "--version", NEXT,
                              "--lock-wait", str(LOCK_WAIT))
        wait_until_it_waits_for_the_lock(site, waiting)
        # Released with the holder's connection (first, on leaving): the waiting run takes it.
    assert run.code == 4, run.output[-2000:]
    assert "another run holds the deploy lock: ana@ops-laptop since" in run.output
    assert "'hotfix in progress'" in run.output and "Traceback" not in run.output
    waited = waiting.result(timeout=1800).check()
    assert re.search(rf"rsdeploy: deploy {NEXT} on {site.host.name}: ok in", waited.stdout), \
        waited.output[-2000:]


def test_rollback_downgrades_with_the_newer_scripts_and_drops_no_request(site, written, ca_file):
    write_note(site, written, "rollback")
    run, report = under_load(site, ca_file, "rollback")  # default: the previous good release
    run.check()
    assert report.failed == 0, report.summary()
    assert run.stdout.startswith(f"rsdeploy: rollback {FIRST_VERSION} on "), run.stdout
    assert serving(site)["version"] == FIRST_VERSION
    assert serving(site)["schema_revision"] == HEADS[FIRST_VERSION]
    assert_rows_kept(site, written)
    last = history(site)[-1]
    assert (last["kind"], last["result"], last["revision_after"]) == ("rollback", "ok", "0001")


def test_a_release_failing_its_health_check_never_gets_traffic(site, written, ca_file):
    write_note(site, written, BROKEN)
    run, report = under_load(site, ca_file, "deploy", "--version", BROKEN)
    assert run.code == 3, run.output[-3000:]
    assert (f"{BROKEN} failed its health check on {site.host.name}: backend: /health answered "
            "503") in run.stdout, run.stdout
    assert report.failed == 0, report.summary()
    # Its migration was undone with its own scripts: the old release's schema.
    now = serving(site)
    assert (now["version"], now["schema_revision"]) == (FIRST_VERSION, HEADS[FIRST_VERSION])
    assert len(app_containers(site)) == 4, app_containers(site)  # its instances removed
    assert_rows_kept(site, written)
    last = history(site)[-1]
    assert (last["version"], last["result"]) == (BROKEN, "failed") and "503" in last["reason"]
    # The project on disk names the release that serves, not the refused one.
    compose = site.on_host("cat /opt/residency-scheduler/compose.yml")
    assert f":{FIRST_VERSION}" in compose and BROKEN not in compose


def test_a_failing_migration_is_refused_with_its_own_error(site, written, ca_file):
    run, report = under_load(site, ca_file, "deploy", "--version", BAD_MIGRATION)
    assert run.code == 3, run.output[-3000:]
    assert "NotNullViolation" in run.output and "its migration to 0003 failed" in run.stdout
    assert report.failed == 0, report.summary()
    now = serving(site)
    assert (now["version"], now["schema_revision"]) == (FIRST_VERSION, HEADS[FIRST_VERSION])
    tables = site.on_host("docker exec $(docker ps -q --filter label=com.docker.compose.service=db)"
                          " psql -U postgres -d residency_scheduler -tAc '\\dt'")
    assert "wards" not in tables
    assert_rows_kept(site, written)


def test_ctrl_c_in_the_middle_leaves_the_old_release_and_no_lock(site, written):
    command = [sys.executable, "-m", "rsdeploy.cli", "deploy", "--version", NEXT,
               "-i", str(SANDBOX_INVENTORY), "--secrets", str(site.sandbox.paths.secrets)]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=site.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "starting the new" in line:  # new instances beside the old, no traffic yet
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
            break
    rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + rest
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted" in output.splitlines()[-1], output[-2000:]
    assert serving(site)["version"] == FIRST_VERSION
    assert_rows_kept(site, written)
    assert history(site)[-1]["result"] is None  # recorded as unfinished
    # No lock left behind, and a re-run completes (tidying the half-started instances).
    site.rsdeploy("deploy", "--version", NEXT).check()
    assert serving(site)["version"] == NEXT and serving(site)["schema_revision"] == HEADS[NEXT]
    assert len(app_containers(site)) == 4, app_containers(site)
    assert_rows_kept(site, written)
    # Images of refused releases go; those of the last good ones stay for rollbacks.
    tags = set(site.on_host("docker image ls --format '{{.Tag}}'").split())
    assert {FIRST_VERSION, NEXT} <= tags and not {BROKEN, BAD_MIGRATION} & tags, tags


def test_releases_lists_every_attempt_with_its_result(site):
    run = site.rsdeploy("releases").check()
    lines = run.stdout.splitlines()
    assert lines[0].split()[:5] == ["HOST", "STARTED", "KIND", "VERSION", "RESULT"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[2], r[3], r[4]) for r in rows] == [
        ("deploy", NEXT, "ok"), ("deploy", NEXT, "unfinished"), ("deploy", BAD_MIGRATION, "failed"),
        ("deploy", BROKEN, "failed"), ("rollback", FIRST_VERSION, "ok"), ("deploy", NEXT, "ok"),
        ("deploy", FIRST_VERSION, "ok")]
    attempts = history(site)
    assert all(a["who"] and a["started"] for a in attempts)


def test_the_live_prometheus_sees_the_release_and_the_last_attempt(site):
    wait_for("the last attempt", lambda: {
        (r["metric"]["version"], r["metric"]["result"])
        for r in prometheus_query(site, "rsdeploy_release_last_attempt_info")}, {(NEXT, "ok")})
    info = prometheus_query(site, "rsdeploy_release_info")
    assert [r["metric"]["version"] for r in info] == [NEXT]


def backup_alerts(site) -> dict[str, str]:
    """The backup alerts the live Prometheus evaluates, by name: their state."""
    rules = json.loads(site.on_host("curl -fsS http://127.0.0.1:9090/api/v1/rules"))
    return {rule["name"]: rule["state"] for group in rules["data"]["groups"]
            if group["name"] == "backup" for rule in group["rules"]}


def test_the_live_prometheus_sees_each_backup_and_alerts_on_a_failed_one(site):
    """The dump taken before the last migration reached Prometheus (node-exporter read what
    rs-backup published); a backup failing for want of disk fires BackupFailed, and the next
    good one resolves it; BackupStale stays silent throughout."""
    directory = site.settings().stack.backup.directory
    newest = int(site.on_host(f"stat -c %Y $(ls -t {directory}/*.dump | head -1)"))
    (good,) = prometheus_query(site, "rsdeploy_backup_last_success_timestamp_seconds")
    assert (good["metric"]["instance"], good["metric"]["kind"]) == (site.host.name, "dump")
    assert abs(float(good["value"][1]) - newest) <= 5, (good, newest)
    assert backup_alerts(site) == {"BackupFailed": "inactive", "BackupStale": "inactive"}
    with full_disk(site, directory):
        assert site.rsdeploy("db", "backup").code != 0
    wait_for("after a failed backup", lambda: backup_alerts(site)["BackupFailed"], "firing")
    (kept,) = prometheus_query(site, "rsdeploy_backup_last_success_timestamp_seconds")
    assert kept["value"][1] == good["value"][1]  # the newest good backup is still that one
    site.rsdeploy("db", "backup").check()
    wait_for("after a good backup", lambda: backup_alerts(site),
             {"BackupFailed": "inactive", "BackupStale": "inactive"})


def test_a_second_run_changes_nothing(site):
    run = site.rsdeploy("deploy", "--version", NEXT).check()
    assert run.changed == 0, run.output[-3000:]


def live_scrape_interval(site) -> str:
    config = json.loads(site.on_host("curl -fsS http://127.0.0.1:9090/api/v1/status/config"))
    return re.search(r"scrape_interval: (\S+)", config["data"]["yaml"]).group(1)


def test_a_deploy_cut_off_after_its_files_changed_leaves_their_reactions_to_the_next(
        site, written, tmp_path):
    changed = changed_inventory(tmp_path, "prometheus", {"scrape_interval": "25s"})
    # The registry off this sandbox's network (it serves the machine's other sandboxes on): the
    # new release's images cannot be pulled, and the run stops there.
    registry.leave(ensure_engine(), site.sandbox.network)
    try:
        run = site.rsdeploy("deploy", "--version", IRREVERSIBLE, inventory=changed)
    finally:
        registry.join(ensure_engine(), site.sandbox.network)
    assert run.code == 1 and "Pull 2 image(s)" in run.output, run.output[-3000:]
    assert serving(site)["version"] == NEXT
    # Prometheus' new config was uploaded before the pull; its reload was never carried out,
    # and verify says so.
    assert live_scrape_interval(site) != "25s"
    check = site.rsdeploy("verify", inventory=changed)
    owed = re.search(r"a deploy stopped before carrying out (.*): run the deploy again",
                     check.output)
    assert check.code == 1 and owed and "Reload-prometheus-" in owed.group(1), check.output[-3000:]
    site.rsdeploy("deploy", "--version", IRREVERSIBLE, inventory=changed).check()
    assert live_scrape_interval(site) == "25s", "the reload the cut-off run owed was lost"
    assert serving(site)["version"] == IRREVERSIBLE
    assert_rows_kept(site, written)
    run = site.rsdeploy("deploy", "--version", IRREVERSIBLE, inventory=changed).check()
    assert run.changed == 0, run.output[-3000:]  # nothing owed any more


def test_a_migration_without_downgrade_rolls_back_only_by_restoring_its_dump(site, written):
    site.rsdeploy("deploy", "--version", IRREVERSIBLE).check()  # served already; settings back
    lost = "written while the irreversible release served"
    write_note(site, [], lost)
    run = site.rsdeploy("rollback")  # to v1.1.0, the previous good release
    assert run.code == 3, run.output[-3000:]
    assert "cannot be downgraded from 0003 to 0002" in run.stdout and \
        "rollback --restore-backup" in run.stdout, run.stdout
    assert serving(site)["version"] == IRREVERSIBLE
    site.rsdeploy("rollback", "--restore-backup").check()
    now = serving(site)
    assert (now["version"], now["schema_revision"]) == (NEXT, HEADS[NEXT])
    assert_rows_kept(site, written)
    code, body = site.curl("/api/v1/notes")
    assert f"written before {lost}" not in body, "rows written after the dump came back"


def test_db_restore_brings_back_the_exact_rows_and_fetch_copies_a_dump(site, tmp_path):
    assert_restore_gives_back_the_dumped_rows(site)
    site.rsdeploy("db", "fetch", "--to", str(tmp_path)).check()
    (dump,) = tmp_path.glob("*.dump")
    assert dump.stat().st_mode & 0o777 == 0o600 and dump.read_bytes()[:5] == b"PGDMP"
