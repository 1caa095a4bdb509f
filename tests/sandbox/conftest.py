"""Fixtures for the end-to-end tests: sandbox hosts and the offline images, made once a session.

The sandbox is brought up once per session (re-used when it is up already) and removed at the
end unless RS_KEEP_SANDBOX=1. Its prefix is $RS_SANDBOX_PREFIX, else ``rs-test`` (never the
developer's ``rs-sandbox``). Tests at other depths get the same fixture by defining::

    @pytest.fixture(scope="session")
    def sandbox():
        with rsdeploy_dev.sandbox.session(prefix, count) as sb:
            yield sb
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
import uuid

import pytest

from rsdeploy_dev import images
from rsdeploy_dev import sandbox as sandbox_module
from rsdeploy_dev.engine import ensure_engine

TEST_PREFIX = os.environ.get(sandbox_module.PREFIX_ENV) or "rs-test"
HOSTS = 2



@pytest.fixture(scope="session")
def docker_client():
    return ensure_engine()


@pytest.fixture(scope="session")
def sandbox():
    """The test sandbox (2 hosts): a :class:`rsdeploy_dev.sandbox.Sandbox`."""
    with sandbox_module.session(TEST_PREFIX, HOSTS) as sb:
        yield sb


@pytest.fixture(scope="session")
def infra_images(docker_client):
    """Every infrastructure image, built (cached: seconds when nothing changed)."""
    return images.build(list(images.INFRA), client=docker_client)


class ContainerRunner:
    """Starts throw-away containers and networks, all labelled, and removes them on ``close``."""

    def __init__(self, client):
        self.client = client
        self.label = f"rsdeploy.test-{uuid.uuid4().hex[:8]}"
        self.started = []

    def run(self, image: str, **kwargs):
        """``client.containers.run(image, detach=True, **kwargs)``, remembered for removal."""
        kwargs.setdefault("labels", {})["rsdeploy.test"] = self.label
        container = self.client.containers.run(image, detach=True, **kwargs)
        self.started.append(container)
        return container

    def network(self):
        """A fresh user-defined network (containers on it reach each other by name)."""
        net = self.client.networks.create(f"{self.label}-{len(self.started)}",
                                          labels={"rsdeploy.test": self.label})
        self.started.append(net)
        return net

    def close(self) -> None:
        for obj in reversed(self.started):
            if hasattr(obj, "kill"):
                obj.remove(force=True, v=True)
            else:
                obj.remove()


@pytest.fixture
def containers(docker_client):
    """Throw-away containers for one test: ``containers.run(image, ...)``."""
    runner = ContainerRunner(docker_client)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def module_containers(docker_client):
    """Throw-away containers shared by the tests of one module."""
    runner = ContainerRunner(docker_client)
    yield runner
    runner.close()


def published_port(container, port: str) -> int:
    """The 127.0.0.1 port docker chose for a container port (``ports={port: ("127.0.0.1", None)}``)."""
    container.reload()
    return int(container.attrs["NetworkSettings"]["Ports"][port][0]["HostPort"])


def wait_http(url: str, timeout: float = 30, context=None) -> tuple[int, str]:
    """GET ``url`` until it answers (any status); returns (status, body)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3, context=context) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def wait_log(container, text: str, timeout: float = 90) -> str:
    """Wait until ``text`` appears in the container's output; returns the output."""
    deadline = time.monotonic() + timeout
    while True:
        output = container.logs().decode(errors="replace")
        if text in output or time.monotonic() > deadline:
            return output
        time.sleep(0.5)


def wait_exec(container, command: list[str], timeout: float = 60, printing: str = ""):
    """Run ``command`` in the container until it exits 0 (and prints ``printing``, if given);
    returns its last result. The expected text guards against Docker's exec attach, which
    now and then hands back no output from a process that exits at once (seen in CI)."""
    deadline = time.monotonic() + timeout
    while True:
        result = container.exec_run(command)
        done = result.exit_code == 0 and printing in (result.output or b"").decode(errors="replace")
        if done or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@pytest.fixture(scope="session")
def probe():
    """Helpers: ``probe.published_port``, ``probe.wait_http``, ``probe.wait_exec``, ``probe.wait_log``."""
    import types

    return types.SimpleNamespace(published_port=published_port, wait_http=wait_http,
                                 wait_exec=wait_exec, wait_log=wait_log)
