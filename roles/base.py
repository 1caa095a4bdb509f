"""Host bootstrap: base packages, trusted CA certificates, time sync, the deploy user,
unattended security upgrades, the firewall and the stack's directories.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsdeploy.types import Name, Port, Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class Settings(Section):
    deploy_user: Name = "deploy"  # login pyinfra uses after bootstrap (sudo, docker group)
    deploy_user_keys: list[str] = []  # SSH public keys allowed to log in as the deploy user
    timezone: str = "UTC"  # host time zone (Celery beat schedules are UTC either way)
    firewall_allow: list[Port] = [22, 80, 443]  # TCP ports open to the world; all else is dropped
    unattended_upgrades: bool = True  # install security updates automatically
    extra_packages: list[str] = []  # further Debian packages for every host


def applies(hs: HostSettings) -> bool:
    return True


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
