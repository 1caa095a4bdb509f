"""The docker layout spread over four sandbox hosts (RS_SANDBOX_TOPOLOGY=split): db+redis, two
app hosts behind nginx, web+monitoring; a fifth host outside the stack. Driven through the
rsdeploy CLI: bootstrap -> v1.0.0 -> verify every host -> only the app hosts reach the data
stores, over verified TLS only -> Prometheus sees every host -> a rolling v1.1.0 under load ->
v1.2.0-broken stops at the first app host while the site keeps serving -> rollback of both app
hosts at once under load -> the example GitLab pipeline deploys and verifies a tag
(gitlab-ci-local) -> the example GitHub workflow's rollback steps roll it back. Rows written
through the API before each step are all there after it.

The steps run in file order, as an operator would run them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from rsdeploy_dev import images
from rsdeploy_dev import sandbox as sandbox_module
from tests.conftest import GITLAB_CI_LOCAL, ops_repository
from tests.e2e.conftest import (
    FIRST_VERSION,
    SANDBOX_INVENTORY,
    app_host_names,
    assert_a_failing_app_host_stops_the_rollout,
    assert_only_app_hosts_reach_the_data_stores_over_tls,
    assert_prometheus_sees_every_host,
    assert_rollback_in_one_wave,
    assert_rolling_release_drops_no_request,
    assert_rows_kept,
    assert_serves_everywhere,
    assert_verified,
    on,
    ready_site,
    site_certificate,
    split_hosts,
    through_nginx,
    write_note,
)

pytestmark = pytest.mark.sandbox

NEXT, BROKEN = "v1.1.0", "v1.2.0-broken"
#: Alembic head of each release (examples/refapp).
HEADS = {FIRST_VERSION: "0001", NEXT: "0002"}


@pytest.fixture(scope="module")
def site():
    for found in ready_site("rs-e2e-split", "pull", topology="split"):
        images.build(["backend", "frontend"], [NEXT, BROKEN])
        sandbox_module.push_images(found.sandbox.prefix, ["backend", "frontend"], [NEXT, BROKEN])
        yield found


@pytest.fixture(scope="module")
def hosts(site):
    return split_hosts(site)


@pytest.fixture(scope="module")
def ca_file(site, tmp_path_factory):
    return site_certificate(site, tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def written():
    return []


def services_on(site, host) -> set[str]:
    """The Compose services running on a host."""
    out = on(site, host, "docker ps --filter label=com.docker.compose.project=residency-scheduler "
                         "--format '{{.Label \"com.docker.compose.service\"}}'")
    return set(out.split())


def test_first_deploy_spreads_the_stack_over_its_hosts(site, hosts, written):
    site.rsdeploy("bootstrap").check()
    run = site.rsdeploy("deploy").check()
    assert site.wait_healthy()["database"] == "connected"
    assert services_on(site, hosts["db"]) >= {"db", "redis"}
    assert not services_on(site, hosts["db"]) & {"backend", "nginx"}
    # Celery beat on the first app host only: two would send every scheduled task twice.
    assert services_on(site, hosts["app1"]) >= {"backend", "celery-worker", "celery-beat", "frontend"}
    assert services_on(site, hosts["app2"]) >= {"backend", "celery-worker", "frontend"}
    assert "celery-beat" not in services_on(site, hosts["app2"])
    assert services_on(site, hosts["web"]) >= {"nginx", "prometheus"}
    # The first app host migrated; the second found the database at its head.
    assert run.output.index(f"{hosts['app1'].name}: {FIRST_VERSION} serves") \
        < run.output.index(f"{hosts['app2'].name}: {FIRST_VERSION} serves")
    assert_serves_everywhere(site, FIRST_VERSION, HEADS)
    write_note(site, written, "verify")


def test_verify_passes_on_every_host(site, written):
    assert_verified(site)
    assert_rows_kept(site, written)


def test_nginx_balances_both_app_hosts(site):
    """Requests through nginx reach both app hosts, each a fair share: every request carries a
    mark of its own, and the backend log that has it names the host that answered (each
    backend's own health checks request /health too, unmarked)."""
    answers = through_nginx(site, "/health", 12)
    assert all(code == 200 for _, code, _ in answers), answers
    shares = Counter(host for host, _, _ in answers)
    assert set(shares) == app_host_names(site) and min(shares.values()) >= 3, \
        f"requests answered per host: {dict(shares)}"


def test_only_app_hosts_reach_the_data_stores_and_only_over_tls(site, hosts):
    assert_only_app_hosts_reach_the_data_stores_over_tls(
        site, hosts, "docker exec $(docker ps -q --filter label=com.docker.compose.service=db) "
                     "psql -U postgres")


def test_prometheus_on_the_monitoring_host_sees_every_host(site, hosts):
    assert_prometheus_sees_every_host(site, hosts)


def test_rolling_release_under_load_drops_no_request(site, hosts, ca_file, written):
    assert_rolling_release_drops_no_request(site, hosts, ca_file, written, NEXT, HEADS)
    write_note(site, written, "the broken release")


def test_a_failing_app_host_stops_the_rollout(site, hosts, ca_file, written):
    assert_a_failing_app_host_stops_the_rollout(site, hosts, ca_file, written, BROKEN, NEXT,
                                                HEADS)


def test_rollback_in_one_wave_under_load(site, hosts, ca_file, written):
    assert_rollback_in_one_wave(site, hosts, ca_file, written, FIRST_VERSION, HEADS)



# --- the example CI pipelines, against these hosts --------------------------------------------


def staging_inventory() -> str:
    """The sandbox inventory as a user's inventories/staging.py: no SSH key or known_hosts file
    of its own, so the pipeline's (from its secret store, under its job's home) are used."""
    return (
        "import runpy\n"
        f"base = runpy.run_path({str(SANDBOX_INVENTORY)!r})\n"
        "hosts, stack = base['sandbox_hosts']\n"
        "sandbox_hosts = ([(name, {k: v for k, v in data.items()\n"
        "                          if k not in ('ssh_key', 'ssh_known_hosts_file')})\n"
        "                  for name, data in hosts], stack)\n")


def store(site) -> dict[str, str]:
    """What the CI's secret store holds for the environment."""
    paths = site.sandbox.paths
    return {"RS_SSH_PRIVATE_KEY": paths.key.read_text().strip(),
            "RS_SSH_KNOWN_HOSTS": paths.known_hosts.read_text().strip(),
            "RS_SECRETS_YAML": paths.secrets.read_text()}


@pytest.fixture(scope="module")
def ops_repo(tmp_path_factory):
    return ops_repository(tmp_path_factory.mktemp("ops") / "residency-ops",
                          {"staging.py": staging_inventory()})


def assert_no_secret_in(output: str, site) -> None:
    """Neither a secret of the secrets file nor a line of the private key is in ``output``."""
    secrets = [str(v) for v in yaml.safe_load(store(site)["RS_SECRETS_YAML"]).values()]
    key = [line for line in store(site)["RS_SSH_PRIVATE_KEY"].splitlines() if "-----" not in line]
    leaked = [value for value in secrets + key if len(value) >= 12 and value in output]
    assert not leaked, f"{len(leaked)} secret value(s) in the job's output"


def test_the_gitlab_pipeline_deploys_and_verifies_a_tag(site, ops_repo, written):
    """gitlab-ci-local runs the tag pipeline's staging job as GitLab would (shell executor:
    this machine's rsdeploy instead of the job's image)."""
    variables = {**store(site), "CI_COMMIT_TAG": NEXT, "RS_LOCK_WAIT": "60"}
    (ops_repo / ".gitlab-ci-local-variables.yml").write_text(yaml.safe_dump(variables))
    proc = subprocess.run([str(GITLAB_CI_LOCAL), "--force-shell-executor", "deploy-staging"],
                          cwd=ops_repo, env={**site.env, "PATH": f"{Path(sys.executable).parent}:"
                                                              f"{os.environ['PATH']}"},
                          capture_output=True, text=True, timeout=1800)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert re.search(rf"rsdeploy: deploy {NEXT} on .*: ok in", output), output[-3000:]
    assert re.search(rf"rsdeploy: verify {NEXT} on .*: ok in", output), output[-3000:]
    assert_serves_everywhere(site, NEXT, HEADS)
    assert_rows_kept(site, written)
    assert_no_secret_in(output, site)


def test_the_github_rollback_steps_run_as_written(site, ops_repo, written):
    """The workflow's rollback job, its run steps in order as the runner would run them (bash
    -e), its env with the secrets and inputs of a manual run filled in."""
    job = yaml.safe_load((ops_repo / ".github/workflows/deploy.yml").read_text())["jobs"]["rollback"]
    inputs = {"environment": "staging", "rollback_to": FIRST_VERSION}
    values = {**{f"secrets.{k}": v for k, v in store(site).items()},
              **{f"inputs.{k}": v for k, v in inputs.items()}}
    env = {key: re.sub(r"\$\{\{ (\S+) \}\}", lambda m: values[m.group(1)], str(value))
           for key, value in job["env"].items()}
    steps = [step["run"] for step in job["steps"] if "run" in step]
    assert len(steps) == 2
    for step in steps:
        proc = subprocess.run(["bash", "-e", "-c", step], cwd=ops_repo,
                              env={**site.env, **env, "PATH": f"{Path(sys.executable).parent}:"
                                                             f"{os.environ['PATH']}"},
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        assert_no_secret_in(proc.stdout + proc.stderr, site)
    assert_serves_everywhere(site, FIRST_VERSION, HEADS)
    assert json.loads((ops_repo / "rsdeploy-summary.json").read_text())["result"] == "ok"
    assert_rows_kept(site, written)
