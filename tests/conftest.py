"""Shared fixtures: example inventories loaded through the real settings loader, rendered trees."""

from __future__ import annotations

import atexit
import dataclasses
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from rsdeploy_dev import REPO_ROOT
from rsdeploy.render import write_tree
from rsdeploy.stack import render_host
from rsdeploy.stack import load_inventory

INVENTORIES = REPO_ROOT / "inventories"
#: The machine's PostgreSQL 15 server programs (the CI installs postgresql-15).
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _private_copy(path: Path) -> str:
    """A mode 0600 copy of ``path`` in a temporary directory removed at exit: git keeps the
    example secrets at 0644, and rsdeploy warns about any secrets file others can read."""
    directory = Path(tempfile.mkdtemp(prefix="rsdeploy-test-secrets-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    copy = directory / path.name
    copy.write_text(path.read_text())
    copy.chmod(0o600)
    return str(copy)


#: The dummy secrets of inventories/secrets.example.yml, as a private (0600) copy.
EXAMPLE_SECRETS = _private_copy(INVENTORIES / "secrets.example.yml")
EXAMPLES = ["example_docker", "example_systemd", "example_multi"]


def load_example(name: str, env: dict[str, str] | None = None):
    """Every host of ``inventories/<name>.py`` with the dummy secrets (and RS_* from ``env``)."""
    return load_inventory(str(INVENTORIES / f"{name}.py"), EXAMPLE_SECRETS, env=env or {})


def free_port() -> int:
    """A loopback TCP port nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``args`` run as the machine's postgres user, output captured as text."""
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True,
                          text=True, timeout=60, **kwargs)


def unreachable(hs):
    """``hs`` as if its SSH port were closed (a loopback port nothing listens on)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    return dataclasses.replace(hs, connection={"ssh_hostname": "127.0.0.1", "ssh_port": port,
                                               "ssh_strict_host_key_checking": "no"})


def render_example(name: str, root: Path, env: dict[str, str] | None = None):
    """Render every host of an example into ``root/<host>/``; returns {host: (hs, files)}."""
    out = {}
    for host, hs in load_example(name, env).items():
        files = render_host(hs)
        write_tree(files, root / host)
        out[host] = (hs, files)
    return out


@pytest.fixture(scope="session", params=EXAMPLES)
def example(request, tmp_path_factory):
    """Each example inventory rendered once per session: (name, root, {host: (hs, files)})."""
    root = tmp_path_factory.mktemp(request.param)
    return request.param, root, render_example(request.param, root)


# --- the example CI pipelines (examples/ci) ---------------------------------------------------

CI_EXAMPLES = REPO_ROOT / "examples" / "ci"
#: The pipeline tools .ci/setup installs from .ci/npm/package-lock.json.
CI_TOOLS = REPO_ROOT / ".ci" / "npm" / "node_modules"
GITLAB_CI_LOCAL = CI_TOOLS / ".bin" / "gitlab-ci-local"


def ops_repository(path: Path, inventories: dict[str, str] | None = None) -> Path:
    """A git repository laid out as the examples' README says a user's is: the GitLab pipeline as
    .gitlab-ci.yml, the GitHub workflow, ci/rsdeploy-ci.sh, ``inventories`` (name -> text)."""
    (path / "ci").mkdir(parents=True)
    (path / ".github" / "workflows").mkdir(parents=True)
    (path / "inventories").mkdir()
    shutil.copy(CI_EXAMPLES / "gitlab-ci.yml", path / ".gitlab-ci.yml")
    shutil.copy(CI_EXAMPLES / "github-deploy.yml", path / ".github" / "workflows" / "deploy.yml")
    shutil.copy(CI_EXAMPLES / "rsdeploy-ci.sh", path / "ci" / "rsdeploy-ci.sh")
    for name, text in (inventories or {}).items():
        (path / "inventories" / name).write_text(text)
    git = ["git", "-C", str(path), "-c", "user.email=ci@example.org", "-c", "user.name=ci"]
    for command in (["init", "-q", "-b", "main"], ["remote", "add", "origin",
                                                    "https://git.example.org/ops/residency.git"],
                    ["add", "-A"], ["commit", "-qm", "inventories and pipelines"]):
        subprocess.run(git + command, check=True, capture_output=True)
    return path
