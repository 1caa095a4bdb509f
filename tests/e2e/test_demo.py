"""The README's quick start, as typed: ``bash .ci/demo`` (the set-up it starts with is done on
this machine, so it goes straight on): a fresh sandbox host, bootstrap, deploy and verify, and
the site it prints answers healthy at the address it prints. Its own sandbox, removed after.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from rsdeploy_dev import REPO_ROOT
from rsdeploy_dev import sandbox

pytestmark = pytest.mark.sandbox

PREFIX = "rs-e2e-demo"


def test_the_quick_starts_demo_deploys_and_the_site_it_prints_answers():
    try:
        run = subprocess.run(["bash", ".ci/demo", "--name", PREFIX], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=2400)
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-5000:]
        for step in ("bootstrap", "deploy --version v1.0.0", "verify"):
            assert f"==> rsdeploy {step} -i inventories/sandbox.py" in run.stdout, run.stdout
        printed = re.search(r"curl -k --resolve (\S+:\d+:127\.0\.0\.1) (https://\S+/)health\)",
                            run.stdout)
        assert printed, run.stdout[-2000:]
        assert re.search(r"/health -> .*\"status\": ?\"healthy\"", run.stdout), run.stdout[-2000:]
        resolve, url = printed.groups()
        answer = subprocess.run(["curl", "-sk", "--max-time", "10", "-o", "/dev/null", "-w",
                                 "%{http_code}", "--resolve", resolve, url],
                                capture_output=True, text=True)
        assert answer.stdout == "200", answer
    finally:
        sandbox.down(PREFIX)
