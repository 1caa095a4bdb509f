"""The systemd layout: PostgreSQL, Redis, Nginx and the monitoring from the distribution's
packages, the backend and Celery as systemd units, the frontend under PM2.

Config files live where each package reads them; services are named by their units. Its files
render and validate today; its rollout arrives with the systemd/PM2 issue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyinfra import host
from pyinfra.facts.systemd import SystemdStatus

from roles import status
from rsdeploy import apply
from rsdeploy.layout import Layout

if TYPE_CHECKING:
    from pathlib import Path

    from rsdeploy.layout import Reaction
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings
    from rsdeploy.validate import Verdict

#: The distribution's unit behind each stack service a host-side job may need.
SERVICE_UNITS = {"db": "postgresql.service", "redis": "redis-server.service",
                 "nginx": "nginx.service"}


class SystemdLayout(Layout):
    """Native services: the packages' own paths, owners and unit names; loopback between
    services of one host, the private address between hosts."""

    name = "systemd"
    runs_in_containers = False

    def config_path(self, hs: HostSettings, component: str, name: str, native: str) -> str:
        return native

    def secrets_dir(self, hs: HostSettings, native: str) -> str:
        return native

    def secret_read_dir(self, hs: HostSettings, native: str) -> str:
        return native

    def data_dir(self, container: str, native: str) -> str:
        return native

    def file_owner(self, image_uid: int | str, native_user: str) -> str:
        return native_user

    def service(self, container: str, unit: str) -> str:
        return unit

    def local_endpoint(self, service: str) -> str:
        return "127.0.0.1"

    def host_address(self, hs: HostSettings) -> str:
        return "127.0.0.1"

    def listen_address(self, hs: HostSettings, shared: bool) -> str:
        return hs.address if shared else "127.0.0.1"

    def exec_argv(self, hs: HostSettings, service: str, argv: list[str]) -> list[str]:
        return list(argv)

    def run_argv(self, hs: HostSettings, service: str, argv: list[str],
                 publish: str | None = None) -> list[str]:
        return [service, *argv]  # the distribution's program (certbot) answers on its own ports

    def command_dir(self, hs: HostSettings) -> str:
        return hs.stack.paths.base_dir

    def script_context(self, hs: HostSettings) -> dict:
        return {"compose_args": []}

    def unit_after(self, service: str) -> str:
        return SERVICE_UNITS.get(service, f"{service}.service")

    def services(self, hs: HostSettings) -> list[str]:
        return status.systemd_units(hs)

    def service_running(self, hs: HostSettings, service: str) -> bool:
        return bool(host.get_fact(SystemdStatus).get(self.unit_after(service)))

    def builds_from_source(self, hs: HostSettings) -> bool:
        return True  # releases are the tag's source, with a virtualenv and a Next.js build

    def render(self, hs: HostSettings) -> list[RenderedFile]:
        return []  # every file belongs to a role

    def validate(self, tree: Path, hs: HostSettings) -> list[Verdict]:
        return []

    def deliver(self, hs: HostSettings, rendered: list[RenderedFile]) -> list:
        apply.fail("the systemd layout's rollout is not available yet: deploy it with layout docker")
        return []

    def release_host(self, hs: HostSettings, shell) -> object:
        apply.fail("the systemd layout's releases are not available yet: deploy it with layout docker")

    def roll_out(self, hs: HostSettings, reactions: dict[Reaction, list], delivered: list,
                 released: frozenset[str] = frozenset()) -> None:
        apply.fail("the systemd layout's rollout is not available yet: deploy it with layout docker")
