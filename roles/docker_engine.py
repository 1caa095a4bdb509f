"""Docker Engine and Docker Compose v2 (docker layout only)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

from rsdeploy.types import Section, Size

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings

DAEMON_JSON = "/etc/docker/daemon.json"


class Settings(Section):
    # official: Docker's apt repository (docker-ce + compose plugin); distro: Debian's docker.io
    # plus the Compose v2 binary shipped with rsdeploy's Python dependencies.
    source: Literal["official", "distro"] = "official"
    log_max_size: Size = "10m"  # json-file log rotation: size of one file
    log_max_file: int = 3  # json-file log rotation: files kept per container
    live_restore: bool = True  # keep containers running while dockerd restarts


def applies(hs: HostSettings) -> bool:
    return hs.stack.layout == "docker"


def daemon_settings(hs: HostSettings) -> dict:
    """dockerd's settings: bounded json-file logs for every container (also those started
    outside Compose), and live restore so an engine upgrade does not stop the stack.

    Example: ``daemon_settings(hs)["log-opts"]`` -> ``{"max-file": "3", "max-size": "10m"}``
    """
    d = hs.stack.docker
    return {
        "live-restore": d.live_restore,
        "log-driver": "json-file",
        "log-opts": {"max-file": str(d.log_max_file), "max-size": d.log_max_size},
    }


def render(hs: HostSettings) -> list[RenderedFile]:
    from rsdeploy.render import RenderedFile

    # Emitted from data: always valid JSON. dockerd reads it only at start (restart docker).
    content = json.dumps(daemon_settings(hs), indent=2, sort_keys=True) + "\n"
    return [RenderedFile(DAEMON_JSON, content, "docker_engine", restarts=("docker.service",))]
