"""rs-celery and ``rsdeploy celery``: the rendered rs-celery run against a stub docker (the
worker's container) and a stub systemd-run (natively, the serving slot's unit context), to show
what reaches Celery: the inspect question, a task's full name found from its last part, its
arguments, a time limit enforced where celery runs; and that no secret is on a command line.
Bad input is refused before any host. The sandbox chains ask and call real workers."""

from __future__ import annotations

import os
import subprocess

import pytest

from rsdeploy.roles import status
from rsdeploy import cli
from rsdeploy.render import write_tree
from rsdeploy.stack import load_inventory
from tests.conftest import EXAMPLE_SECRETS, INVENTORIES, load_example

# Both stubs record the command after the runner ("CELERY ARGS...", one line) and answer as
# Celery does: registered tasks as JSON, a task id for call, a result.
ANSWER = r"""
printf '%s\n' "$*" >> "$STUB_CALLS"
case " $* " in
    *" inspect registered "*) echo '{"celery@a": ["app.tasks.resilience.periodic_health_check",
        "app.tasks.resilience.run_contingency_analysis", "app.tasks.x.check", "app.tasks.y.check"]}' ;;
    *" call "*) echo 0f1e2d3c-aaaa-bbbb-cccc-000000000001 ;;
    *" result "*) echo "{'status': 'operational'}" ;;
    *" inspect "*) echo '->  celery@a: OK' ;;
esac
"""
STUB_DOCKER = "#!/bin/bash\n# docker compose ... exec -T SERVICE CMD...: drop up to the service\n" \
    'args=("$@"); for i in "${!args[@]}"; do [[ ${args[$i]} == -T ]] && break; done\n' \
    'set -- "${args[@]:$((i + 1))}"\necho "service $1" >> "$STUB_CALLS"; shift\n' + ANSWER
STUB_SYSTEMD_RUN = "#!/bin/bash\n# systemd-run ... -p PROP ... /usr/bin/env CMD...: props recorded\n" \
    'while [[ $1 != /usr/bin/env ]]; do [[ $1 == -p ]] && echo "prop $2" >> "$STUB_CALLS"; shift; done\n' \
    "shift\n" + ANSWER
STUB_SYSTEMCTL = "#!/bin/bash\n[[ $1 == is-enabled && $3 == *@green.service ]]\n"  # green serves


@pytest.fixture(params=["example_docker", "example_systemd"])
def rs_celery(request, tmp_path):
    """``run(*args)`` -> (exit code, stdout, stderr, the recorded calls) of the rendered
    rs-celery of an example's app host, with the stubs first on PATH."""
    hs = load_inventory(str(INVENTORIES / f"{request.param}.py"), EXAMPLE_SECRETS, env={},
                        override_data={"paths": {"base_dir": str(tmp_path)}})["rs1.example.org"]
    write_tree(status.render(hs), tmp_path / "tree")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("docker", STUB_DOCKER), ("systemd-run", STUB_SYSTEMD_RUN),
                       ("systemctl", STUB_SYSTEMCTL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"

    def run(*args: str):
        calls.write_text("")
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_CALLS=str(calls))
        proc = subprocess.run(["bash", str(tmp_path / "tree" / status.CELERY_PATH.lstrip("/")), *args],
                              capture_output=True, text=True, env=env, timeout=30)
        return proc.returncode, proc.stdout, proc.stderr, calls.read_text().splitlines()
    return request.param, hs, run


def celery_lines(calls: list[str]) -> list[str]:
    return [line for line in calls if "celery --app app.core.celery_app" in line]


def test_inspect_asks_every_worker_in_the_workers_context(rs_celery):
    layout, hs, run = rs_celery
    code, out, _, calls = run("inspect", "active", "--json")
    assert code == 0 and "celery@a: OK" in out
    assert celery_lines(calls) == ["celery --app app.core.celery_app inspect active --timeout 10 --json"]
    if layout == "example_docker":
        assert "service celery-worker" in calls
    else:  # the serving slot's (green) release, the app user, the environment from its file
        props = [line.removeprefix("prop ") for line in calls if line.startswith("prop ")]
        assert "User=residency" in props and "EnvironmentFile=/etc/residency-scheduler/app.env" in props
        assert f"WorkingDirectory={hs.stack.paths.base_dir}/slots/green/backend" in props
        assert "EnvironmentFile=/etc/residency-scheduler/slots/green.env" in props
    assert hs.secrets.redis_password not in "\n".join(calls)


def test_call_finds_the_task_by_its_last_name_and_waits_for_its_result_where_celery_runs(rs_celery):
    _, _, run = rs_celery
    code, out, err, calls = run("call", "periodic_health_check", "--kwargs", '{"deep": true}',
                                "--wait", "45")
    assert code == 0, err
    assert "sent app.tasks.resilience.periodic_health_check: task id 0f1e2d3c-aaaa-bbbb-cccc-000000000001" in out
    assert "{'status': 'operational'}" in out
    sent = celery_lines(calls)
    assert sent[1] == ("celery --app app.core.celery_app call app.tasks.resilience.periodic_health_check"
                       " --args [] --kwargs {\"deep\": true}")
    assert sent[2].startswith("timeout 45 celery") and sent[2].endswith("result 0f1e2d3c-aaaa-bbbb-cccc-000000000001")


def test_call_refuses_a_name_that_is_not_one_registered_task(rs_celery):
    _, _, run = rs_celery
    code, _, err, calls = run("call", "check")
    assert code == 2 and "app.tasks.x.check, app.tasks.y.check" in err
    assert not any(" call " in line for line in calls)
    code, _, err, _ = run("call", "x;reboot")
    assert code == 2 and "usage" in err


@pytest.mark.parametrize(("args", "why"), [
    (["call", "a b"], "not a Celery task name"),
    (["call", "app.t", "--args", '{"a": 1}'], "expected a JSON list"),
    (["call", "app.t", "--kwargs", "[1]"], "expected a JSON object"),
    (["call", "app.t", "--args", "[1,"], "not JSON"),
])
def test_rsdeploy_celery_refuses_bad_input_before_any_host(args, why, capsys):
    code = cli.main(["celery", *args, "-i", str(INVENTORIES / "example_docker.py"),
                     "--secrets", EXAMPLE_SECRETS])
    assert code == 2 and why in capsys.readouterr().err


def test_the_celery_script_is_on_app_hosts_only():
    hosts = load_example("example_multi")
    with_script = {name for name, hs in hosts.items()
                   if status.CELERY_PATH in {f.path for f in status.render(hs)}}
    assert with_script == {name for name, hs in hosts.items() if hs.has_role("app")}
