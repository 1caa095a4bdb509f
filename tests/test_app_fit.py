"""Fit for the real backend's measured needs (APP_CONTRACT.md, "Measured on the real backend"):
memory limits sized from the worker count, a health gate that allows a 70 s start, a metrics
switch that the whole stack follows, and rollout failures explained (exit code, OOM, log)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import pytest
import yaml

from rsdeploy.roles import backend, grafana, prometheus
from rsdeploy.render import write_tree
from rsdeploy.secrets import MASK, masked
from rsdeploy.stack import load_inventory, render_host
from rsdeploy.stack import release as switch
from rsdeploy.stack.docker import diagnose, project
from rsdeploy.units import memory_bytes
from tests.conftest import EXAMPLE_SECRETS, load_example
from tests.test_settings import GOOD_STACK, run_check, with_key, write_inventory

MIB = 2**20


def docker_host(tmp_path, stack: dict, secrets_env: dict | None = None):
    """The one host of an inventory with ``stack`` (GOOD_STACK edited), loaded for real."""
    return load_inventory(str(write_inventory(tmp_path, stack)), EXAMPLE_SECRETS,
                          env=secrets_env or {})["rs1"]


# --- memory sized from the workers ----------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_backend_limit_is_sized_from_its_workers(tmp_path, workers):
    hs = docker_host(tmp_path, with_key(GOOD_STACK, "backend.workers", workers))
    expected = workers * 700 + 300  # the defaults: 700m a worker, 300m headroom
    assert backend.resources(hs).memory == f"{expected}m"
    root = tmp_path / "tree"
    write_tree(render_host(hs), root)
    base = root / hs.stack.paths.base_dir.lstrip("/")
    config = json.loads(project.compose_config(base, project.compose_files(hs),
                                               hs.stack.compose.project, "json").stdout)
    for service in ("backend", "migrate"):
        limit = config["services"][service]["deploy"]["resources"]["limits"]["memory"]
        assert int(limit) == expected * MIB, service


def test_an_undersized_backend_limit_is_refused_naming_both_values(tmp_path, capsys):
    stack = with_key(GOOD_STACK, "backend.resources", {"memory": "1g", "cpus": 1.0})
    code, err = run_check(capsys, write_inventory(tmp_path, stack))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert ("host rs1: backend.resources.memory: 1g is below what backend.workers 2 need: "
            "2 x 700m + 300m headroom = 1700m") in err


def test_a_limit_that_fits_the_workers_is_accepted(tmp_path):
    stack = with_key(GOOD_STACK, "backend", {"workers": 3, "memory_per_worker": "400m",
                                             "resources": {"memory": "1500m", "cpus": 2.0}})
    assert backend.resources(docker_host(tmp_path, stack)).memory == "1500m"


def test_worker_and_beat_defaults_leave_room_above_the_measured_figures(tmp_path):
    b = docker_host(tmp_path, GOOD_STACK).stack.backend
    # Measured: the app's imports take about 700 MB; beat sits at about 233 MiB.
    assert memory_bytes(b.worker_resources.memory) >= 1400 * MIB
    assert memory_bytes(b.beat_resources.memory) >= 2 * 233 * MIB


# --- the health gate ------------------------------------------------------------------------------


def test_each_units_start_period_reaches_its_health_check_and_its_release_unit(tmp_path):
    gate = {"start_period": "150s", "worker_start_period": "100s", "beat_start_period": "45s",
            "interval": "20s", "timeout": "7s", "retries": 4, "wait_timeout": "400s"}
    stack = with_key(with_key(GOOD_STACK, "backend.health", gate), "frontend.start_period", "40s")
    hs = docker_host(tmp_path, stack)
    root = tmp_path / "tree"
    write_tree(render_host(hs), root)
    base = root / hs.stack.paths.base_dir.lstrip("/")
    services = yaml.safe_load(project.compose_config(
        base, project.compose_files(hs), hs.stack.compose.project).stdout)["services"]
    check = services["backend"]["healthcheck"]
    assert (check["interval"], check["timeout"], check["retries"]) == ("20s", "7s", 4)
    periods = {"backend": 150, "celery-worker": 100, "celery-beat": 45, "frontend": 40}
    composed = {"backend": "2m30s", "celery-worker": "1m40s", "celery-beat": "45s", "frontend": "40s"}
    for service, period in composed.items():
        assert services[service]["healthcheck"]["start_period"] == period, service
    assert {u.service: u.start_period for u in switch.units(hs)} == periods


#: Measured on the real backend, 2 cores (APP_CONTRACT.md): seconds to a healthy /health, and
#: until Celery beat wrote its schedule file.
MEASURED_START = {"backend": 70, "celery-beat": 27}


def test_default_start_periods_fit_the_measured_starts_with_margin(tmp_path):
    periods = {u.service: u.start_period for u in switch.units(docker_host(tmp_path, GOOD_STACK))}
    for service, measured in MEASURED_START.items():
        assert periods[service] >= 1.5 * measured, (service, periods[service])
    # The worker imports the same app as the API, beside it: nothing measured, as long.
    assert periods["celery-worker"] >= periods["backend"]
    assert periods["frontend"] >= 30  # Next.js starts in seconds; a busy host slows it


def test_a_wait_timeout_shorter_than_the_gate_is_refused(tmp_path, capsys):
    stack = with_key(GOOD_STACK, "backend.health", {"start_period": "120s", "wait_timeout": "150s"})
    code, err = run_check(capsys, write_inventory(tmp_path, stack))
    assert code == 2 and "backend.health.wait_timeout: 150s ends before a slow start can be " \
        "judged: start_period 120s + retries 3 x interval 30s = 210s" in err, err


@pytest.mark.parametrize("key", ["backend.health.worker_start_period",
                                 "backend.health.beat_start_period", "frontend.start_period"])
def test_a_start_period_that_is_no_duration_is_refused_in_one_line(tmp_path, capsys, key):
    code, err = run_check(capsys, write_inventory(tmp_path, with_key(GOOD_STACK, key, "soon")))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{key}: " in err and "a duration such as 30s" in err, err


# --- a writable HOME and cache under the read-only root ---------------------------------------------


def test_every_app_container_has_a_home_of_its_own_and_the_hosts_cache(tmp_path):
    hs = docker_host(tmp_path, GOOD_STACK)
    root = tmp_path / "tree"
    write_tree(render_host(hs), root)
    base = root / hs.stack.paths.base_dir.lstrip("/")
    services = json.loads(project.compose_config(base, project.compose_files(hs),
                                                 hs.stack.compose.project, "json").stdout)["services"]
    for name in ("migrate", "backend", "celery-worker", "celery-beat"):
        service = services[name]
        assert service["read_only"] is True, name
        env = service["environment"]
        assert (env["HOME"], env["XDG_CACHE_HOME"]) == (backend.APP_HOME, backend.APP_CACHE_DIR)
        assert f"{backend.APP_HOME}:uid=1001,mode=0700" in service["tmpfs"], name
        assert {(v["source"], v["target"]) for v in service["volumes"]} >= \
            {(backend.APP_CACHE_DIR, backend.APP_CACHE_DIR)}, name


# --- the metrics switch ---------------------------------------------------------------------------


def test_metrics_switch_reaches_env_scrape_rules_and_dashboards():
    hs = next(iter(load_example("example_docker").values()))
    on = {f.path: f.content for f in render_host(hs)}
    assert 'ENABLE_METRICS="true"' in on[backend.app_env_path(hs)]
    assert "backend" in [job.name for job in prometheus.scrape_jobs(hs)]
    assert "backend.yml" in prometheus.rule_files(hs)
    assert "http_requests_total" in json.dumps(grafana.dashboards(hs))


def test_metrics_off_leaves_no_backend_scrape_and_no_alert_that_cannot_fire(tmp_path):
    hs = docker_host(tmp_path, with_key(GOOD_STACK, "backend.metrics", False))
    files = {f.path: f.content for f in render_host(hs)}
    assert 'ENABLE_METRICS="false"' in files[backend.app_env_path(hs)]
    assert "backend" not in [job.name for job in prometheus.scrape_jobs(hs)]
    assert "backend.yml" not in prometheus.rule_files(hs)
    rules = "".join(content for path, content in files.items() if "/rules/" in path)
    for metric in ('job="backend"', "http_request", "resilience_"):
        assert metric not in rules, metric
    dashboards = json.dumps(grafana.dashboards(hs))
    assert "http_request" not in dashboards and "resilience_utilization" not in dashboards
    # Prometheus itself loads what is left (the config and every rule file it names).
    root = tmp_path / "tree"
    write_tree(render_host(hs), root)
    config = root / prometheus.config_dir(hs).lstrip("/") / "prometheus.yml"
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# --- a failed rollout says why --------------------------------------------------------------------


def inspected(service: str, status: str = "running", exit_code: int = 0, oom: bool = False,
              health: str | None = None, restarts: int = 0, output: str = "") -> dict:
    """One container as ``docker inspect`` describes it (the fields diagnose reads)."""
    state = {"Status": status, "ExitCode": exit_code, "OOMKilled": oom}
    if health:
        state["Health"] = {"Status": health, "Log": [{"Output": output}]}
    return {"Name": f"/residency-scheduler-{service}-1", "State": state, "RestartCount": restarts,
            "Config": {"Labels": {"com.docker.compose.service": service}},
            "HostConfig": {"Memory": 512 * MIB}}


def test_findings_name_oom_kills_exit_codes_and_unhealthy_services():
    found = {f.service: f.reason() for f in diagnose.findings([
        inspected("db", health="healthy"),
        inspected("migrate", status="exited", exit_code=0),
        inspected("backend", status="restarting", exit_code=137, oom=True, restarts=3,
                  health="starting"),
        inspected("celery-beat", status="exited", exit_code=1),
        inspected("frontend", health="unhealthy", output="connect ECONNREFUSED 127.0.0.1:3000\n"),
    ])}
    assert found == {
        "backend": "OOM-killed (memory limit 512 MiB); restarting, exit code 137; restarted 3 "
                   "times; health check starting",
        "celery-beat": "exited, exit code 1",
        "frontend": "health check unhealthy: connect ECONNREFUSED 127.0.0.1:3000",
    }


def test_oom_kills_are_read_from_the_memory_cgroup():
    """Docker 20.10 on cgroup v1 leaves State.OOMKilled false; the cgroup counts the kills."""
    v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n"
    v2 = "low 0\nhigh 0\nmax 12\noom 4\noom_kill 4\noom_group_kill 0\n"
    assert diagnose.oom_kills(v1) == diagnose.oom_kills(v2) == 4
    assert diagnose.oom_kills("") == 0
    (finding,) = diagnose.findings([inspected("backend", health="unhealthy")])
    assert replace(finding, oom_kills=4).reason() == \
        "OOM-killed 4 times (memory limit 512 MiB); health check unhealthy"


def test_a_failed_one_shot_is_a_finding():
    (finding,) = diagnose.findings([inspected("migrate", status="exited", exit_code=255)])
    assert finding.reason() == "exited, exit code 255"


def test_logs_are_shown_with_every_secret_masked():
    hs = next(iter(load_example("example_docker").values()))
    log = (f"connecting to {backend.database_url(hs)}\n"
           f"SECRET_KEY={hs.secrets.secret_key} redis {hs.secrets.redis_password}\n")
    shown = masked(log, hs)
    for secret in (hs.secrets.db_password, hs.secrets.secret_key, hs.secrets.redis_password):
        assert secret not in shown
    assert shown.count(MASK) == 3 and "connecting to postgresql://scheduler:" in shown
