"""The systemd layout: PostgreSQL, Redis, Nginx and the monitoring from the distribution's
packages, the backend and Celery as systemd units, the frontend under PM2.

Config files live where each package reads them; services are named by their units. Releases
are built on the host from the tag's source (:mod:`.delivery`) and run in one of two release
slots (:mod:`.release`); the distribution's services come up in :mod:`.rollout`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.facts.systemd import SystemdStatus

from rsdeploy.roles import backend, frontend, status
from rsdeploy.layout import Control, Layout, LogSource
from rsdeploy.stack.systemd import delivery, release, rollout

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
    release_slots = release.SLOTS
    release_port_step = backend.SLOT_PORT_STEP

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

    def log_sources(self, hs: HostSettings) -> dict[str, list[LogSource]]:
        return status.native_log_sources(hs)

    def controls(self, hs: HostSettings) -> dict[str, Control]:
        return status.native_controls(hs)

    def service_running(self, hs: HostSettings, service: str) -> bool:
        """A distribution service's unit, any release slot's instance of an app unit, or the
        frontend's PM2 app of any slot online (asked only while PM2's daemon runs: its CLI
        would start one otherwise)."""
        units = host.get_fact(SystemdStatus)
        if service == frontend.APP_NAME:
            home = frontend.pm2_home(hs)
            online = host.get_fact(Command, command=(
                f"if [ -S {home}/rpc.sock ] && systemctl is-active --quiet {frontend.PM2_UNIT}; "
                f"then {frontend.pm2_command(hs, 'jlist')} 2>/dev/null; fi; true"))
            return '"status":"online"' in (online or "")
        if units.get(self.unit_after(service)):
            return True
        return any(running for unit, running in units.items() if unit.startswith(f"{service}@"))

    def builds_from_source(self, hs: HostSettings) -> bool:
        return True  # releases are the tag's source, with a virtualenv and a Next.js build

    def render(self, hs: HostSettings) -> list[RenderedFile]:
        return []  # every file belongs to a role

    def validate(self, tree: Path, hs: HostSettings) -> list[Verdict]:
        return []

    def deliver(self, hs: HostSettings, rendered: list[RenderedFile], ahead: bool = False) -> list:
        return delivery.build_release(hs, point_next=not ahead) if hs.has_role("app") else []

    def release_host(self, hs: HostSettings, shell) -> release.SystemdReleaseHost:
        return release.SystemdReleaseHost(hs, shell)

    def roll_out(self, hs: HostSettings, reactions: dict[Reaction, list], delivered: list,
                 released: frozenset[str] = frozenset()) -> None:
        rollout.roll_out(hs, reactions, delivered, released)
