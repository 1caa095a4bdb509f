"""The README's walkthrough, "Use it on your own hosts", run as written by an operator with a
home of their own: the wheel of this commit installed in a clean virtualenv (step 1), a site
repository of theirs (2), filled in and checked (3), a bare sandbox host that accepts only
root's key bootstrapped (4: host key pinned, deploy user made, root and password logins off),
deployed (5) and verified (6); then CI (7): the runner image built from the site's
ci/runner with that wheel, the site's GitLab pipeline (check, and deploy-staging of a tag) run
by gitlab-ci-local's docker executor in it, and the GitHub workflow's rollback steps run in the
same image. What the README's step 7 pushes (the image, the tag) goes nowhere here: no registry
or Git server is reachable, so the pipeline runs where the push would have started it.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import time

import pytest
import yaml

from rsdeploy.apply import changed_operations
from rsdeploy_dev import images, registry
from rsdeploy_dev import sandbox as sandbox_module
from rsdeploy_dev.distribution import VERSION, build_distributions
from rsdeploy_dev.images import CA_BUNDLE, buildkit_cli
from rsdeploy_dev.walkthrough import Operator, as_here, fill_in, readme_steps
from tests.conftest import GITLAB_CI_LOCAL
from tests.e2e.conftest import FIRST_VERSION, SANDBOX_INVENTORY, VERIFY_PASSED, Run, ready_site

pytestmark = pytest.mark.sandbox

NEXT = "v1.1.0"
STEPS = readme_steps()
#: The runner image the site's pipelines name (rsdeploy init's default).
RUNNER = f"registry.example.org/ops/rsdeploy-runner:{VERSION}"


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    """A bare sandbox host (root's key only), the registry with v1.0.0 and v1.1.0, the wheel
    of this commit, and an operator who has that wheel and the key root's login accepts."""
    for site in ready_site("rs-e2e-walk", "pull"):
        sandbox_module.push_images(site.sandbox.prefix, ["backend", "frontend"], [NEXT])
        root = tmp_path_factory.mktemp("walkthrough")
        wheel, _ = build_distributions(root / "dist")
        operator = Operator.at(root / "ana", site.sandbox.paths.key, wheel)
        yield site, operator, {"started": time.monotonic()}


def step(walk, number: int, line: int = 0) -> subprocess.CompletedProcess:
    """Run the README's step ``number`` (its ``line``-th command) as the operator."""
    site, operator, _ = walk
    return operator.run(as_here(STEPS[number - 1][line], site.host.address, site.domain))


def ok(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    return run.stdout


def sandbox_settings(site) -> dict:
    """What step 3 fills in on a sandbox: the sandbox inventory's image sources and components
    (its registry, the images mirrored there, none of those without an offline image)."""
    saved = dict(os.environ)
    os.environ.update(site.env)
    try:
        stack = runpy.run_path(str(SANDBOX_INVENTORY))["stack"]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    keep = ("app", "docker", "tls", "postgres", "redis", "nginx", "prometheus", "alertmanager",
            "exporters", "flower", "grafana", "loki", "log_shipper")
    return {**{key: stack[key] for key in keep}, "trusted_ca_certs": ["../certs/registry-ca.pem"]}


def test_the_readme_has_seven_steps_of_commands():
    assert len(STEPS) == 7 and all(STEPS), STEPS


def test_step1_installs_the_wheel_into_a_virtualenv_of_its_own(walk):
    ok(step(walk, 1))
    _, operator, _ = walk
    assert ok(operator.run("rsdeploy --version")).strip() == f"rsdeploy {VERSION}"
    where = ok(operator.run("command -v rsdeploy")).strip()
    assert where == f"{operator.home}/rsdeploy/bin/rsdeploy"


def test_step2_makes_the_site_repository(walk):
    ok(step(walk, 2))
    site, operator, _ = walk
    assert (operator.site / "rsdeploy.yml").is_file()
    assert f'host("{site.host.address}", "{site.host.address}"' in \
        (operator.site / "inventories/staging.py").read_text()


def test_step3_fills_in_and_checks_with_the_real_validators(walk):
    site, operator, _ = walk
    fill_in(operator.site, sandbox_settings(site),
            {"registry_password": sandbox_module.registry_password(site.sandbox.prefix)},
            {"registry-ca.pem": registry.ca_cert()})
    out = ok(step(walk, 3))
    assert out.rstrip().endswith("all files pass") and "FAIL" not in out


def test_a_first_contact_pins_the_host_key_and_refuses_a_user_who_cannot_sudo(walk):
    """The first bootstrap pins the host's key (shown as ssh-keygen shows it on the host), then
    finds that the initial user cannot act as root: one line naming the host and the fix,
    nothing made on the host."""
    site, operator, _ = walk
    key = (operator.home / ".ssh/id_ed25519.pub").read_text().strip()
    site.on_host("useradd -m -s /bin/bash nosudo && install -d -m 700 -o nosudo /home/nosudo/.ssh"
                 f" && echo '{key}' > /home/nosudo/.ssh/authorized_keys"
                 " && chown nosudo /home/nosudo/.ssh/authorized_keys")
    run = operator.run("rsdeploy bootstrap --initial-user nosudo")
    assert run.returncode == 1, run.stdout + run.stderr
    pinned = re.search(rf"rsdeploy: {re.escape(site.host.address)}: pinned (ED25519 SHA256:\S+)",
                       run.stdout)
    fingerprint = site.on_host("ssh-keygen -l -f /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
    assert pinned and pinned.group(1) == f"ED25519 {fingerprint}", run.stdout
    known = (operator.site / "known_hosts").read_text()
    assert known.startswith(f"{site.host.address} ssh-ed25519 ")
    errors = [line for line in run.stderr.splitlines() if "rsdeploy" in line]
    assert errors == [f"rsdeploy: error: {site.host.address}: the initial user nosudo cannot sudo "
                      "without a password: add 'nosudo ALL=(ALL) NOPASSWD: ALL' to "
                      "/etc/sudoers.d/nosudo on the host, or bootstrap as root (--initial-user "
                      "root)"], run.stderr
    assert site.on_host("id -u deploy >/dev/null 2>&1 && echo made || echo none").strip() == "none"


def test_step4_bootstraps_the_bare_host_and_closes_root_login(walk):
    site, operator, _ = walk
    known = (operator.site / "known_hosts").read_text()
    run = step(walk, 4)
    out = ok(run)
    assert f"first contact with {site.host.address} as root" in out
    assert "pinned" not in out and (operator.site / "known_hosts").read_text() == known
    effective = on_console(site, "sshd -T")
    assert "permitrootlogin no" in effective and "passwordauthentication no" in effective
    login = ["ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={operator.site}/known_hosts",
             "-i", str(operator.home / ".ssh/id_ed25519")]
    as_root = subprocess.run([*login, f"root@{site.host.address}", "true"], capture_output=True,
                             text=True, timeout=60)
    assert as_root.returncode == 255 and "Permission denied" in as_root.stderr
    as_deploy = subprocess.run([*login, f"deploy@{site.host.address}", "sudo -n id -u"],
                               capture_output=True, text=True, timeout=60)
    assert as_deploy.stdout.strip() == "0", as_deploy.stderr


def on_console(site, command: str) -> str:
    """A command on the host as root through its console (docker exec): root's SSH login is
    off once bootstrap is done."""
    return subprocess.run(["docker", "exec", site.host.name, "sh", "-c", command],
                          capture_output=True, text=True, check=True, timeout=120).stdout


def test_a_second_bootstrap_changes_nothing(walk):
    _, operator, _ = walk
    run = operator.run("rsdeploy bootstrap")
    ok(run)
    assert "first contact" not in run.stdout and "pinned" not in run.stdout + run.stderr
    assert changed_operations(run.stdout + run.stderr) == 0, run.stderr[-3000:]


def test_step5_deploys_and_step6_verifies_within_ten_minutes(walk):
    site, operator, times = walk
    ok(step(walk, 5))
    out = ok(step(walk, 6))
    assert re.search(r"rsdeploy: verify on .*: ok in", out), out[-2000:]
    # Every check of a one-host docker site ran and passed: none skipped where it should run.
    found = Run(0, out, out).passed_per_host([site.host.address])[site.host.address]
    assert found == VERIFY_PASSED[("docker", "single")], out[-3000:]
    times["verified"] = time.monotonic()
    health = _curl(site, "/health")
    assert health["status"] == "healthy"
    history = json.loads(ok(operator.run("rsdeploy releases --json")))[site.host.address]
    assert history[-1]["result"] == "ok" and history[-1]["rsdeploy_version"] == VERSION
    summary = _curl(site, "/api/v1/version")
    assert summary["version"] == FIRST_VERSION
    print(f"walkthrough: pip install to a verified site in "
          f"{times['verified'] - times['started']:.0f} s (images present)")


def _curl(site, path: str) -> dict:
    """HTTPS to the host's own address, by the site's name."""
    proc = subprocess.run(["curl", "-sk", "--max-time", "10", "--resolve",
                           f"{site.domain}:443:{site.host.address}", f"https://{site.domain}{path}"],
                          capture_output=True, text=True)
    return json.loads(proc.stdout)


def ci_secrets(operator) -> dict[str, str]:
    """What the CI's secret store holds for staging."""
    return {"RS_SSH_PRIVATE_KEY": (operator.home / ".ssh/id_ed25519").read_text().strip(),
            "RS_SECRETS_YAML": (operator.site / "secrets/staging.yml").read_text()}


def assert_no_secret_in(output: str, operator) -> None:
    values = [str(v) for v in yaml.safe_load(ci_secrets(operator)["RS_SECRETS_YAML"]).values()]
    values += [line for line in ci_secrets(operator)["RS_SSH_PRIVATE_KEY"].splitlines()
               if "-----" not in line]
    leaked = [value for value in values if len(value) >= 12 and value in output]
    assert not leaked, f"{len(leaked)} secret value(s) in the output"


def test_step7_commits_and_builds_the_runner_image_with_the_wheel(walk):
    site, operator, _ = walk
    ok(step(walk, 7, 0))
    tracked = ok(operator.run("git ls-files")).split()
    assert "known_hosts" in tracked and not [p for p in tracked if p.startswith("secrets")]
    # Offline here: the base is the debootstrap image, and pip gets this machine's CA bundle.
    build = as_here(STEPS[6][1], site.host.address, site.domain).replace(
        "docker build", f"DOCKER_BUILDKIT=1 {buildkit_cli()} build --build-arg "
        f"BASE_IMAGE={images.BASE_IMAGE} --secret id=ca-certificates,src={CA_BUNDLE}")
    images.ensure_base(images.docker_client())
    ok(operator.run(build, timeout=1800))
    tools = "promtool amtool nginx systemd-analyze nft visudo redis-server docker-compose ssh node"
    inside = subprocess.run(["docker", "run", "--rm", RUNNER, "sh", "-c",
                             f"rsdeploy --version && for t in {tools}; do command -v $t "
                             ">/dev/null || echo missing $t; done"],
                            capture_output=True, text=True, timeout=120)
    assert inside.stdout.splitlines() == [f"rsdeploy {VERSION}"], inside.stdout + inside.stderr
    size = images.docker_client().images.get(RUNNER).attrs["Size"]
    print(f"runner image {RUNNER}: {size / 2**20:.0f} MiB")


def test_the_gitlab_pipeline_checks_and_deploys_a_tag_in_the_runner_image(walk):
    """The tag pipeline's check and deploy-staging jobs, in the runner image on the sandbox's
    network, with the secret store's variables (a 0600 file gitlab-ci-local reads)."""
    site, operator, _ = walk
    ok(operator.run(f"git tag {NEXT}"))
    variables = operator.site / ".gitlab-ci-local-variables.yml"
    variables.touch(mode=0o600)
    variables.write_text(yaml.safe_dump({**ci_secrets(operator), "CI_COMMIT_TAG": NEXT,
                                         "RS_LOCK_WAIT": "60"}))
    try:
        proc = subprocess.run(
            [str(GITLAB_CI_LOCAL), "--network", site.sandbox.network, "--pull-policy",
             "if-not-present", "--helper-image", images.BASE_IMAGE, "check", "deploy-staging"],
            cwd=operator.site, capture_output=True, text=True, timeout=2400)
    finally:
        variables.unlink()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-8000:]
    assert f"starting {RUNNER}" in output  # each job in the runner image
    # No CAP_NET_ADMIN in a job's container: nft may not check the firewall, and says so.
    assert re.search(r"check .*all files pass; skipped here: nft -c on ", output), output[-3000:]
    assert re.search(rf"rsdeploy: deploy {NEXT} on .*: ok in", output), output[-3000:]
    assert re.search(rf"rsdeploy: verify {NEXT} on .*: ok in", output), output[-3000:]
    assert _curl(site, "/api/v1/version")["version"] == NEXT
    assert_no_secret_in(output, operator)


def test_the_github_rollback_steps_run_in_the_runner_image(walk):
    """The workflow's rollback job: its container, its run steps in order with the secrets and
    inputs of a manual run in their environment (passed to docker by name, never as values)."""
    site, operator, _ = walk
    workflow = yaml.safe_load((operator.site / ".github/workflows/deploy.yml").read_text())
    job = workflow["jobs"]["rollback"]
    assert job["container"]["image"] == RUNNER
    values = {**{f"secrets.{k}": v for k, v in ci_secrets(operator).items()},
              "inputs.environment": "staging", "inputs.rollback_to": FIRST_VERSION}
    env = {key: re.sub(r"\$\{\{ (\S+) \}\}", lambda m: values[m.group(1)], str(value))
           for key, value in {**workflow["env"], **job["env"]}.items()}
    for run in [step["run"] for step in job["steps"] if "run" in step]:
        proc = subprocess.run(
            ["docker", "run", "--rm", "--network", site.sandbox.network, "-v",
             f"{operator.site}:/work", "-w", "/work", *[arg for key in env for arg in ("-e", key)],
             job["container"]["image"], "bash", "-e", "-c", run],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        assert_no_secret_in(proc.stdout + proc.stderr, operator)
    assert _curl(site, "/api/v1/version")["version"] == FIRST_VERSION
    summary = json.loads((operator.site / "rsdeploy-summary.json").read_text())
    assert summary["result"] == "ok" and summary["rsdeploy_version"] == VERSION
