"""The docker layout end to end on a fresh sandbox host, images pulled from the sandbox's private
registry (TLS + login). It starts with the README's quick start as typed, ``bash .ci/demo`` (the
set-up it begins with is done on this machine, so it goes straight on): bootstrap of the bare
host, first deploy and verify, and the site answers healthy at the address it prints, asked by
the test itself. Then, on the site the demo made: deploy's summary line and JSON, verify, status
(and a stopped service it catches), logs, stop and start, celery, diagnose, maintenance mode on
and off, a no-op re-run, a setting change that restarts only its readers, a host reboot, a
crashed backend; the data written first survives all.

The steps run in file order on one host, as an operator would run them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from rsdeploy_dev import REPO_ROOT
from rsdeploy_dev.engine import heavy_work
from tests.e2e.conftest import (
    FIRST_VERSION,
    VERIFY_PASSED,
    assert_celery_answers_and_runs_a_task,
    assert_diagnose_finds_a_full_disk,
    assert_logs_show_a_request,
    assert_status_catches_a_stopped_service,
    assert_stop_and_start_keep_every_row,
    assert_verified,
    changed_inventory,
    ready_site,
)

pytestmark = pytest.mark.sandbox

#: Services that read app.env (LOG_LEVEL): a change restarts these and nothing else.
APP_ENV_READERS = {"backend", "celery-worker", "celery-beat"}
NOTE = {"body": "night shift swap, kept across every step: $HOME 'quotes' #1"}


@pytest.fixture(scope="module")
def site():
    yield from ready_site("rs-e2e", "pull")


def notes(site) -> list[dict]:
    code, body = site.curl("/api/v1/notes")
    assert code == 200, f"GET /api/v1/notes: {code} {body}"
    return json.loads(body)


def assert_note_survived(site) -> None:
    assert any(n["body"] == NOTE["body"] for n in notes(site)), \
        "the note written after the first deploy is gone"


def assert_answers_healthy(resolve: str, url: str) -> None:
    """The site at ``url`` (curl's ``--resolve`` value ``resolve``, as the demo prints them)
    serves its front page, and its own /health, asked here, says healthy with the database
    connected (what the demo printed may be stale or wrong)."""
    def get(path: str) -> tuple[str, str]:
        answer = subprocess.run(["curl", "-sk", "--max-time", "10", "-w", "\n%{http_code}",
                                 "--resolve", resolve, url + path], capture_output=True, text=True)
        body, _, code = answer.stdout.rpartition("\n")
        return code, body
    assert get("")[0] == "200", get("")
    code, body = get("health")
    assert code == "200" and json.loads(body) == {"status": "healthy", "database": "connected"}, \
        (code, body)


def test_the_quick_starts_demo_deploys_and_the_site_it_prints_answers_healthy(site):
    with heavy_work():  # the bare host's first install: no site is measured meanwhile
        run = subprocess.run(["bash", ".ci/demo", "--name", site.sandbox.prefix], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=2400)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    for step in ("bootstrap", f"deploy --version {FIRST_VERSION}", "verify"):
        assert f"==> rsdeploy {step} -i inventories/sandbox.py" in run.stdout, run.stdout
    verified = run.stdout.split("==> rsdeploy verify")[1]
    assert re.search(rf"^{VERIFY_PASSED[('docker', 'single')]} passed\b", verified,
                     re.MULTILINE), verified[-3000:]
    printed = re.search(r"curl -k --resolve (\S+:\d+:127\.0\.0\.1) (https://\S+/)health\)",
                        run.stdout)
    assert printed, run.stdout[-2000:]
    assert printed.group(1).startswith(f"{site.domain}:{site.host.port(443)}:"), printed.group(1)
    assert re.search(r"/health -> .*\"status\": ?\"healthy\"", run.stdout), run.stdout[-2000:]
    assert_answers_healthy(*printed.groups())


def test_a_deploy_ends_in_one_summary_line_and_its_json_and_the_demos_site_needs_no_change(
        site, tmp_path):
    report = tmp_path / "summary.json"
    run = site.rsdeploy("deploy", "--version", FIRST_VERSION, "--summary-json", str(report)).check()
    # The demo deployed what this chain's inventory describes: nothing left to change.
    assert run.changed == 0, run.changed_names or run.output[-4000:]
    # For CI: the run ends with one summary line, and the same as JSON.
    last = run.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"rsdeploy: deploy {FIRST_VERSION} on {site.host.name}: ok in \d+ s",
                        last), last
    summary = json.loads(report.read_text())
    assert (summary["result"], summary["hosts"], summary["version"]) == \
        ("ok", [site.host.name], FIRST_VERSION)
    assert site.wait_healthy() == {"status": "healthy", "database": "connected"}
    code, body = site.curl("/api/v1/notes", "-X", "POST", "-H", "Content-Type: application/json",
                           "--data", json.dumps(NOTE))
    assert code in (200, 201), f"POST /api/v1/notes: {code} {body}"
    assert_note_survived(site)


def test_verify_suite_passes_after_the_rollout(site):
    assert_verified(site)


def test_status_shows_every_service_and_exits_1_while_one_is_stopped(site):
    assert_status_catches_a_stopped_service(
        site, "alertmanager",
        "docker stop $(docker ps -q --filter label=com.docker.compose.service=alertmanager)")


def test_logs_show_a_request_in_nginx_and_the_backend_and_follow_new_ones(site):
    assert_logs_show_a_request(site)


def test_stop_and_start_take_the_site_down_and_back_with_every_row(site):
    assert_stop_and_start_keep_every_row(site)


def test_celery_inspect_reaches_the_worker_and_a_triggered_task_runs(site):
    assert_celery_answers_and_runs_a_task(site)


def test_diagnose_finds_a_full_disk_and_says_what_to_do(site):
    assert_diagnose_finds_a_full_disk(site)


def test_maintenance_mode_answers_503_with_the_page_until_switched_off(site):
    before = site.containers()
    site.rsdeploy("maintenance", "on", "--message", "Back at 03:00 <b>").check()
    code, response = site.curl("/", "-i")  # -i: the headers, then the body
    headers, _, body = re.split(r"(\r?\n\r?\n)", response, maxsplit=1)
    assert code == 503, response
    assert re.search(r"(?im)^retry-after: 300\r?$", headers), headers
    assert "<p>Back at 03:00 &lt;b&gt;</p>" in body, body
    assert site.curl("/api/v1/notes")[0] == 503
    assert site.curl("/api/v1/notes", "-X", "POST", "-H", "Content-Type: application/json",
                     "--data", json.dumps(NOTE))[0] == 503  # every method, not only GET
    again = site.rsdeploy("maintenance", "on", "--message", "Back at 03:00 <b>").check()
    assert again.changed == 0, again.output[-4000:]
    site.rsdeploy("maintenance", "off").check()
    assert site.curl("/health")[0] == 200
    assert site.containers() == before  # nginx looks for the page per request: no restart
    assert_note_survived(site)


def test_second_run_changes_and_restarts_nothing(site):
    before = site.containers()
    run = site.rsdeploy("deploy").check()
    assert run.changed == 0, run.changed_names or run.output[-4000:]
    assert site.containers() == before


def test_dry_run_shows_a_change_but_changes_nothing(site, tmp_path):
    before = site.containers()
    env_before = site.on_host("sha256sum /opt/residency-scheduler/app.env")
    inventory = changed_inventory(tmp_path, "backend", {"log_level": "DEBUG"})
    run = site.rsdeploy("deploy", "--dry", inventory=inventory).check()
    # pyinfra's table of detected changes: the env file would change on one host.
    assert re.search(r"Install secret /opt/residency-scheduler/app.env\s+1 ", run.output), \
        run.output[-4000:]
    assert site.on_host("sha256sum /opt/residency-scheduler/app.env") == env_before
    assert site.containers() == before


def test_log_level_change_restarts_only_its_readers(site, tmp_path):
    before = site.containers()
    inventory = changed_inventory(tmp_path, "backend", {"log_level": "DEBUG"})
    run = site.rsdeploy("deploy", inventory=inventory).check()
    assert run.changed > 0
    after = site.containers()
    restarted = {name for name in before if before[name]["started"] != after[name]["started"]
                 and before[name]["running"]}
    assert restarted == APP_ENV_READERS, f"restarted: {sorted(restarted)}"
    assert "LOG_LEVEL=DEBUG" in after["backend"]["env"]
    site.wait_healthy()
    assert_note_survived(site)
    # Back to the inventory's setting (the following steps verify against it).
    site.rsdeploy("deploy").check()


def test_prometheus_setting_reloads_prometheus_without_restarting_anything(site, tmp_path):
    before = site.containers()
    inventory = changed_inventory(tmp_path, "prometheus", {"scrape_interval": "20s"})
    site.rsdeploy("deploy", inventory=inventory).check()
    assert site.containers() == before  # reloaded by SIGHUP, not restarted
    config = site.on_host("curl -fsS http://127.0.0.1:9090/api/v1/status/config")
    assert "scrape_interval: 20s" in json.loads(config)["data"]["yaml"]
    site.rsdeploy("deploy").check()


def test_host_reboot_brings_everything_back(site):
    site.reboot()
    assert site.wait_healthy(300)["database"] == "connected"
    assert_verified(site)
    assert_note_survived(site)


def test_crashed_backend_is_restarted_and_healthy_again(site):
    before = site.containers()["backend"]
    # By service: a release switch numbers its containers on (backend-2, -3, ...).
    site.on_host("kill -9 $(docker inspect --format '{{.State.Pid}}' $(docker ps -q --filter "
                 "label=com.docker.compose.service=backend))")
    deadline = time.monotonic() + 120
    while site.containers()["backend"]["started"] == before["started"]:
        assert time.monotonic() < deadline, "the killed backend was not restarted"
        time.sleep(2)
    assert site.wait_healthy()["status"] == "healthy"
    assert_note_survived(site)

