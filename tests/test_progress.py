"""Progress of a pyinfra run (rsdeploy.progress): a real pyinfra run on @local with a deploy file
that calls ``progress.show_steps()``, as the deploy files do, shows each operation's step number
of all and the time since the run began, once however many hosts; a host that took a while over
an operation gets a line saying how long."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from types import SimpleNamespace

from rsdeploy import progress
from rsdeploy_dev import REPO_ROOT

DEPLOY = """
from pyinfra.operations import server
from rsdeploy import progress
progress.show_steps()
progress.show_steps()  # a second call (another host loading the file) adds nothing
server.shell(name="First step", commands=["true"])
server.shell(name="Second step", commands=["sleep 2"])
server.shell(name="Third step", commands=["true"])
"""


def test_each_operation_line_says_its_step_of_all_and_the_time_so_far(tmp_path):
    (tmp_path / "deploy.py").write_text(DEPLOY)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    run = subprocess.run([sys.executable, "-m", "pyinfra", "-y", "@local", "deploy.py"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = [line.strip() for line in (run.stdout + run.stderr).splitlines()
             if "Starting operation" in line]
    assert lines[:2] == ["--> Starting operation 1 of 3 (0 s in): First step",
                         "--> Starting operation 2 of 3 (0 s in): Second step"], lines
    assert lines[2] in ("--> Starting operation 3 of 3 (2 s in): Third step",
                        "--> Starting operation 3 of 3 (3 s in): Third step"), lines
    assert len(lines) == 3


def test_a_host_that_took_a_while_gets_a_line_with_how_long(monkeypatch):
    out = io.StringIO()
    reporter = progress.StepProgress(out)
    host = SimpleNamespace(name="app1")
    clock = iter([100.0, 100.5, 200.0, 325.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    reporter.operation_host_start(None, host, "quick")
    reporter.operation_host_success(None, host, "quick")  # half a second: nothing to say
    reporter.operation_host_start(None, host, "slow")
    reporter.operation_host_error(None, host, "slow")
    assert out.getvalue() == "    [app1] took 2 min 5 s\n"
