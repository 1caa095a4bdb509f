"""The README's quick start, as typed: ``bash .ci/demo`` (the set-up it starts with is done on
this machine, so it goes straight on): a fresh sandbox host, bootstrap, deploy and verify (every
check of the layout passed), and the site answers healthy at the address it prints, asked by
the test itself. Its own sandbox, removed after.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from rsdeploy_dev import REPO_ROOT
from rsdeploy_dev import sandbox
from tests.e2e.conftest import SUFFIX_ENV, VERIFY_PASSED

pytestmark = pytest.mark.sandbox

PREFIX = "rs-e2e-demo" + os.environ.get(SUFFIX_ENV, "")  # two checkouts' runs side by side


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


def test_the_quick_starts_demo_deploys_and_the_site_it_prints_answers_healthy():
    try:
        run = subprocess.run(["bash", ".ci/demo", "--name", PREFIX], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=2400)
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-5000:]
        for step in ("bootstrap", "deploy --version v1.0.0", "verify"):
            assert f"==> rsdeploy {step} -i inventories/sandbox.py" in run.stdout, run.stdout
        verified = run.stdout.split("==> rsdeploy verify")[1]
        assert re.search(rf"^{VERIFY_PASSED[('docker', 'single')]} passed\b", verified,
                         re.MULTILINE), verified[-3000:]
        printed = re.search(r"curl -k --resolve (\S+:\d+:127\.0\.0\.1) (https://\S+/)health\)",
                            run.stdout)
        assert printed, run.stdout[-2000:]
        assert re.search(r"/health -> .*\"status\": ?\"healthy\"", run.stdout), run.stdout[-2000:]
        assert_answers_healthy(*printed.groups())
    finally:
        sandbox.down(PREFIX)
