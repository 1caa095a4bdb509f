"""The verify suite's fixtures: every expectation comes from the same settings that rendered the
hosts' files (one source of truth), for the host testinfra is connected to.

Run it with ``rsdeploy verify -i INVENTORY`` (which writes the SSH config), or directly:
``pytest -c rsdeploy/verify/pytest.ini rsdeploy/verify --rs-inventory=INV --hosts=ssh://NAME
--ssh-config=FILE``.
"""

from __future__ import annotations

import json
import shlex

import pytest

from rsdeploy.stack.docker import project as compose
from rsdeploy.stack import load_inventory


def pytest_addoption(parser):
    group = parser.getgroup("rsdeploy verify")
    group.addoption("--rs-inventory", required=True,
                    help="inventory whose hosts the suite checks (rsdeploy verify -i INVENTORY)")
    group.addoption("--rs-version", help="release tag the hosts must run (default: the inventory's)")


@pytest.fixture(scope="session")
def stack(request):
    """Every host's settings, validated exactly as the deploy validated them."""
    version = request.config.getoption("rs_version")
    return load_inventory(request.config.getoption("rs_inventory"),
                          override_data={"version": version} if version else None)


@pytest.fixture(scope="module")
def hs(host, stack):
    """The settings of the inventory host testinfra is connected to."""
    name = host.backend.get_hostname()
    if name not in stack:
        pytest.fail(f"testinfra host {name} is not in the inventory (hosts: {', '.join(stack)})")
    return stack[name]


class Stack:
    """Commands against one host's Compose project, with messages naming host and service."""

    def __init__(self, host, hs):
        self.host, self.hs = host, hs

    def compose(self, *args: str):
        """Run ``docker compose ARGS`` for the project in its directory (not checked)."""
        command = f"cd {shlex.quote(self.hs.stack.paths.base_dir)} && " + compose.compose_command(
            self.hs, *args)
        return self.host.run(command)

    def exec(self, service: str, script: str):
        """Run a shell script inside a running service's container."""
        return self.compose("exec", "-T", service, "sh", "-c", script)

    def containers(self) -> dict[str, dict]:
        """The project's containers by service: state and health."""
        out = self.host.check_output(
            "docker ps -a --filter label=com.docker.compose.project=%s --format '{{json .}}'",
            self.hs.stack.compose.project)
        found = {}
        for line in filter(None, out.splitlines()):
            row = json.loads(line)
            labels = dict(kv.split("=", 1) for kv in row["Labels"].split(",") if "=" in kv)
            found[labels.get("com.docker.compose.service")] = row
        return found

    def where(self, service: str) -> str:
        return f"{self.hs.name}: {service}"


@pytest.fixture(scope="module")
def systemd_host(hs):
    if hs.stack.layout != "systemd":
        pytest.skip(f"{hs.name} uses the {hs.stack.layout} layout")
    return hs


@pytest.fixture(scope="module")
def docker_stack(host, hs):
    if hs.stack.layout != "docker":
        pytest.skip(f"{hs.name} uses the {hs.stack.layout} layout")
    return Stack(host, hs)


