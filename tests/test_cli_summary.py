"""Fit for CI: commands that act on hosts end with one summary line and can write it as JSON;
their exit codes say what happened (0 ok, 1 failed, 2 refused before any host, 130 interrupted)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys

from rsdeploy.cli import main, summary, summary_line
from rsdeploy_dev import REPO_ROOT
from tests.conftest import EXAMPLE_SECRETS
from tests.test_settings import GOOD_STACK, with_key, write_inventory


def deploy_args(**values) -> argparse.Namespace:
    base = {"command": "deploy", "inventory": "inventories/prod.py", "version": "v1.1.0",
            "host": None, "selected_hosts": ["rs1", "rs2"]}
    return argparse.Namespace(**{**base, **values})


def test_summary_line_names_version_hosts_result_and_duration():
    assert summary_line(summary(deploy_args(), 0, 84.4)) == \
        "rsdeploy: deploy v1.1.0 on rs1, rs2: ok in 84 s"
    assert summary_line(summary(deploy_args(), 1, 19.0)) == \
        "rsdeploy: deploy v1.1.0 on rs1, rs2: failed (exit 1) in 19 s"
    assert summary_line(summary(deploy_args(command="bootstrap", version=None), 130, 3)) == \
        "rsdeploy: bootstrap on rs1, rs2: interrupted in 3 s"
    assert summary_line(summary(deploy_args(command="maintenance", state="off", version=None),
                                0, 2)) == "rsdeploy: maintenance off on rs1, rs2: ok in 2 s"


def test_a_refused_deploy_is_one_error_line_and_a_json_summary(tmp_path, capsys):
    inventory = write_inventory(tmp_path, with_key(GOOD_STACK, "redis.port", 5432))
    report = tmp_path / "summary.json"
    code = main(["deploy", "-i", str(inventory), "--secrets", EXAMPLE_SECRETS, "--version",
                 "v1.0.0", "--summary-json", str(report)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    written = json.loads(report.read_text())
    assert written["result"] == "refused" and written["exit_code"] == 2
    assert written["version"] == "v1.0.0" and "redis.port: 5432 is already postgres.port" \
        in written["reason"]


def test_ctrl_c_interrupts_a_run_started_with_it_ignored(tmp_path):
    """A job a script starts in the background inherits SIGINT ignored; pyinfra (our child)
    still stops on it, with exit code 0: so rsdeploy stops too, and says so (130), instead of
    reporting the run it stopped as ok. Here rsdeploy waits on a host that accepts SSH's
    connection and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        stack = with_key(with_key(GOOD_STACK, "app.delivery", "pull"), "app.registry",
                         "registry.example.org")
        inventory = write_inventory(tmp_path, stack, {
            "ssh_hostname": "127.0.0.1", "ssh_port": silent.getsockname()[1],
            "ssh_strict_host_key_checking": "no"})
        proc = subprocess.Popen(
            [sys.executable, "-m", "rsdeploy.cli", "deploy", "-i", str(inventory), "--secrets",
             EXAMPLE_SECRETS, "--version", "v1.0.0"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        silent.settimeout(60)
        connection, _ = silent.accept()  # rsdeploy is talking to the host now
        with connection:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
            try:
                output, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError("Ctrl-C did not stop rsdeploy") from None
    assert proc.returncode == 130, output[-2000:]
    assert output.strip().splitlines()[-1].startswith("rsdeploy: deploy v1.0.0 on rs1: interrupted")
