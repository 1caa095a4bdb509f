"""The docker layout: every component in a container of one Compose project per host.

The project's files (:mod:`.project`), how images arrive (:mod:`.delivery`) and the rollout
(:mod:`.rollout`) are modules of their own; :class:`DockerLayout` answers the roles' questions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyinfra import host

from rsdeploy.facts import ComposeContainers
from rsdeploy.layout import Control, Layout, LogSource
from rsdeploy.stack.docker import delivery, project, release, rollout

if TYPE_CHECKING:
    from pathlib import Path

    from rsdeploy.layout import Reaction
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings
    from rsdeploy.validate import Verdict

#: Where Compose mounts file secrets inside a container.
CONTAINER_SECRETS_DIR = "/run/secrets"


class DockerLayout(Layout):
    """Compose: config under ``<base_dir>/config/<component>/``, secrets under
    ``<base_dir>/secrets/`` (mounted at /run/secrets), services by their Compose names."""

    name = "docker"
    runs_in_containers = True
    # Published for another host, a service's instances share a range of host ports: Docker
    # gives the one started beside the serving one the next port of the range.
    release_port_step = 1

    def release_slots_on(self, hs: HostSettings) -> tuple[str, ...]:
        return ("a", "b") if project.app_published(hs) else ()

    def config_path(self, hs: HostSettings, component: str, name: str, native: str) -> str:
        return f"{hs.stack.paths.base_dir}/config/{component}/{name}"

    def secrets_dir(self, hs: HostSettings, native: str) -> str:
        return f"{hs.stack.paths.base_dir}/secrets"

    def secret_read_dir(self, hs: HostSettings, native: str) -> str:
        return CONTAINER_SECRETS_DIR

    def data_dir(self, container: str, native: str) -> str:
        return container

    def file_owner(self, image_uid: int | str, native_user: str) -> str:
        # Compose bind-mounts files with the host file's owner: the uid the image runs as.
        return str(image_uid)

    def service(self, container: str, unit: str) -> str:
        return container

    def local_endpoint(self, service: str) -> str:
        return service  # the Compose network's DNS name

    def host_address(self, hs: HostSettings) -> str:
        return project.gateway(hs)

    def listen_address(self, hs: HostSettings, shared: bool) -> str:
        return "0.0.0.0"  # inside the container; the port mapping decides who reaches it

    def exec_argv(self, hs: HostSettings, service: str, argv: list[str]) -> list[str]:
        return ["docker", "compose", *project.compose_args(hs), "exec", "-T", service, *argv]

    def run_argv(self, hs: HostSettings, service: str, argv: list[str],
                 publish: str | None = None) -> list[str]:
        ports = ["--publish", publish] if publish else []
        return ["docker", "compose", *project.compose_args(hs), "run", "--rm", "--no-deps",
                *ports, service, *argv]

    def command_dir(self, hs: HostSettings) -> str:
        return hs.stack.paths.base_dir

    def script_context(self, hs: HostSettings) -> dict:
        return {"compose_args": project.compose_args(hs)}

    def unit_after(self, service: str) -> str:
        return "docker.service"

    def services(self, hs: HostSettings) -> list[str]:
        return project.long_running(hs)

    def log_sources(self, hs: HostSettings) -> dict[str, list[LogSource]]:
        return {service: [LogSource("compose", service)] for service in project.long_running(hs)}

    def controls(self, hs: HostSettings) -> dict[str, Control]:
        return {service: Control("compose", service) for service in project.long_running(hs)}

    def service_running(self, hs: HostSettings, service: str) -> bool:
        container = host.get_fact(ComposeContainers, project=hs.stack.compose.project).get(service)
        return bool(container) and container["state"] == "running"

    def builds_from_source(self, hs: HostSettings) -> bool:
        return hs.stack.app.delivery == "build"

    def render(self, hs: HostSettings) -> list[RenderedFile]:
        return project.render(hs) + delivery.render(hs)

    def validate(self, tree: Path, hs: HostSettings) -> list[Verdict]:
        return project.validate(tree, hs)

    def preflight(self, hs: HostSettings) -> None:
        if hs.stack.app.delivery == "bundle":  # its manifest, read where rsdeploy runs
            delivery.bundle_manifest(hs)

    def deliver(self, hs: HostSettings, rendered: list[RenderedFile], ahead: bool = False) -> list:
        return delivery.deliver_images(hs, project.project_images(rendered))  # touches no container

    def release_host(self, hs: HostSettings, shell) -> release.DockerReleaseHost:
        return release.DockerReleaseHost(hs, shell)

    def roll_out(self, hs: HostSettings, reactions: dict[Reaction, list], delivered: list,
                 released: frozenset[str] = frozenset()) -> None:
        rollout.roll_out(hs, reactions, delivered, released)
