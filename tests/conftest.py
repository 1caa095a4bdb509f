"""Shared fixtures: example inventories loaded through the real settings loader, rendered trees."""

from __future__ import annotations

import atexit
import dataclasses
import shutil
import socket
import subprocess
import sys
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


# --- site repositories (rsdeploy init) and their CI pipelines -----------------------------------

#: The pipeline tools .ci/setup installs from .ci/npm/package-lock.json.
CI_TOOLS = REPO_ROOT / ".ci" / "npm" / "node_modules"
GITLAB_CI_LOCAL = CI_TOOLS / ".bin" / "gitlab-ci-local"


def site_repository(path: Path, *init_args: str, layout: str = "docker",
                    domain: str = "staging.example.org", hosts: tuple[str, ...] = ("10.0.0.5",)
                    ) -> Path:
    """A site repository as a team makes it: ``rsdeploy init`` (this checkout's rsdeploy), then
    committed to git (the secrets stay out: its .gitignore).

    Example: ``site_repository(tmp_path / "ops", "--email", "ops@example.org")``
    """
    argv = ["init", str(path), "--layout", layout, "--domain", domain, *init_args]
    for host in hosts:
        argv += ["--host", host]
    proc = subprocess.run([sys.executable, "-m", "rsdeploy.cli", *argv], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    git = ["git", "-C", str(path), "-c", "user.email=ci@example.org", "-c", "user.name=ci"]
    for command in (["init", "-q", "-b", "main"], ["remote", "add", "origin",
                                                    "https://git.example.org/ops/residency.git"],
                    ["add", "-A"], ["commit", "-qm", "our site"]):
        subprocess.run(git + command, check=True, capture_output=True)
    return path
