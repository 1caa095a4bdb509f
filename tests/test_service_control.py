"""rs-service and ``rsdeploy stop|start|restart``: the rendered rs-service run against stub
docker, systemctl and PM2 commands, to show the order it acts in (the web server first when
stopping, the data stores first when starting), the grace it gives, that only the serving release
slot is touched natively, and that a service that does not come back is named with exit 1; bad
input refused before any host. The sandbox end-to-end chains stop and start real stacks."""

from __future__ import annotations

import os
import subprocess

import pytest

from rsdeploy.roles import status
from rsdeploy import cli, services
from rsdeploy.render import write_tree
from rsdeploy.stack import load_inventory
from tests.conftest import EXAMPLE_SECRETS, INVENTORIES, load_example

STUB_DOCKER = r"""#!/bin/bash
# `docker compose ... stop ... SERVICE` and `docker start id-SERVICE`: records "ACTION SERVICE";
# `compose ps --all --quiet SERVICE` names its container; `compose ps` answers $STUB_STATE.
args=("$@")
service=${args[-1]}
if [[ $1 == start ]]; then echo "start ${service#id-}" >> "$STUB_CALLS"; exit 0; fi
if [[ " $* " == *" stop "* ]]; then echo "stop $service ${*: -3:2}" >> "$STUB_CALLS"; exit 0; fi
if [[ $1 == ps ]]; then  # ps --all --quiet --filter ...service=SERVICE: newest first
    service=${service#label=com.docker.compose.service=}
    [[ $service == "${STUB_MISSING:-}" ]] || printf 'id-%s\nid-%s-older\n' "$service" "$service"
    exit 0
fi
if [[ " $* " == *" --quiet "* ]]; then exit 0; fi  # nothing running after a stop
echo "${STUB_STATE:-running|healthy}"
"""
STUB_SYSTEMCTL = r"""#!/bin/bash
# Remembers which units it stopped (a file each) until they are started again.
case $1 in
    is-enabled) [[ $3 == *@blue.service ]] ;;   # blue serves, green is the old slot
    is-active) [[ ! -e $STUB_CALLS.$3 ]] ;;
    stop) echo "systemctl $*" >> "$STUB_CALLS"; for unit in "${@:2}"; do touch "$STUB_CALLS.$unit"; done ;;
    start) echo "systemctl $*" >> "$STUB_CALLS"; for unit in "${@:2}"; do rm -f "$STUB_CALLS.$unit"; done ;;
esac
"""
STUB_RUNUSER = r"""#!/bin/bash
# runuser -u USER -- env ... pm2 ACTION APP: pid is 0 while the app is stopped.
action=${*: -2:1} app=${*: -1}
case $action in
    pid) if [[ -e $STUB_CALLS.$app ]]; then echo 0; else echo 4242; fi ;;
    stop) echo "pm2 stop $app" >> "$STUB_CALLS"; touch "$STUB_CALLS.$app" ;;
    start) echo "pm2 start $app" >> "$STUB_CALLS"; rm -f "$STUB_CALLS.$app" ;;
esac
"""


def rs_service(tmp_path, name: str, **override):
    hs = load_inventory(str(INVENTORIES / f"{name}.py"), EXAMPLE_SECRETS, env={},
                        override_data={"paths": {"base_dir": str(tmp_path)}, **override}
                        )["rs1.example.org"]
    write_tree(status.render(hs), tmp_path / "tree")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command, text in (("docker", STUB_DOCKER), ("systemctl", STUB_SYSTEMCTL),
                          ("runuser", STUB_RUNUSER)):
        (bin_dir / command).write_text(text)
        (bin_dir / command).chmod(0o755)
    calls = tmp_path / "calls"
    script = tmp_path / "tree" / status.SERVICE_PATH.lstrip("/")

    def run(*args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        calls.write_text("")
        result = subprocess.run(
            ["bash", str(script), *args], capture_output=True, text=True, timeout=60,
            env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
                     STUB_CALLS=str(calls), **env))
        return result, calls.read_text().splitlines()
    return hs, run


def test_stop_goes_web_first_data_last_with_the_grace_and_start_the_other_way(tmp_path):
    hs, run = rs_service(tmp_path, "example_docker")
    result, calls = run("stop")
    assert result.returncode == 0, result.stderr
    order = list(hs.layout.controls(hs))
    assert calls == [f"stop {name} --timeout 30" for name in reversed(order)]
    assert calls[0] == "stop nginx --timeout 30" and calls[-1] == "stop db --timeout 30"
    result, calls = run("start", "nginx", "db")
    assert result.returncode == 0, result.stderr
    assert [call.split()[:2] for call in calls] == [["start", "db"], ["start", "nginx"]]


def test_a_service_that_does_not_come_back_healthy_is_named_with_exit_1(tmp_path):
    _, run = rs_service(tmp_path, "example_docker", status={"start_timeout": 10})
    result, _ = run("start", "backend", STUB_STATE="running|unhealthy")
    assert result.returncode == 1
    assert "rs-service: backend not running (healthy) after 10 s" in result.stderr


def test_a_service_without_a_container_is_named_at_once_and_the_rest_still_start(tmp_path):
    _, run = rs_service(tmp_path, "example_docker")
    result, calls = run("start", "db", "backend", "nginx", STUB_MISSING="backend")
    assert result.returncode == 1 and "rs-service: backend did not start" in result.stderr
    assert calls == ["start db", "start nginx"]


def test_natively_only_the_serving_slots_units_and_pm2_app_are_touched(tmp_path):
    _, run = rs_service(tmp_path, "example_systemd")
    result, calls = run("restart", "backend", "frontend", "db")
    assert result.returncode == 0, result.stderr
    assert calls == ["pm2 stop residency-frontend-blue",
                     "systemctl stop residency-backend@blue.service",
                     "systemctl stop postgresql@15-main.service",
                     "systemctl start postgresql@15-main.service",
                     "systemctl start residency-backend@blue.service",
                     "pm2 start residency-frontend-blue"]


def test_rs_service_refuses_an_unknown_service_or_action(tmp_path):
    _, run = rs_service(tmp_path, "example_docker")
    for args in (("stop", "celery"), ("down",), ()):
        result, calls = run(*args)
        assert result.returncode == 2 and "usage: rs-service" in result.stderr and not calls


def test_hosts_start_data_stores_first_and_stop_the_other_way():
    hosts = load_example("example_multi")
    assert services.start_order(hosts) == ["db1.example.org", "app1.example.org",
                                           "app2.example.org", "mon1.example.org",
                                           "web1.example.org"]


@pytest.mark.parametrize("action", ["stop", "start", "restart"])
def test_rsdeploy_refuses_an_unknown_service_before_contacting_a_host(action, capsys):
    code = cli.main([action, "-i", str(INVENTORIES / "example_multi.py"), "--secrets",
                     str(EXAMPLE_SECRETS), "--role", "db", "backend"])
    err = capsys.readouterr().err
    assert code == 2 and "no selected host runs backend (services: alloy, cadvisor, db," in err, err


@pytest.mark.parametrize("example", ["example_multi", "example_systemd"])
def test_the_guides_container_and_unit_names_stand_for_their_services(example):
    hosts = load_example(example)
    offered = lambda hs: hs.layout.controls(hs)  # noqa: E731
    for typed, meant in (("rs-celery-prod", "celery-worker"), ("residency-scheduler-backend", "backend"),
                         ("postgresql", "db"), ("residency-frontend", "frontend")):
        assert services.by_host(hosts, [typed], offered) == services.by_host(hosts, [meant], offered)
