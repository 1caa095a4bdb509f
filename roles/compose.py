"""The docker layout's Compose project: the app stack, production overrides, the monitoring
stack and the web (nginx + certbot) stack, with the app env file and secrets as files.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from pydantic import field_validator

from rsdeploy.types import Name, Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class Settings(Section):
    project: Name = "residency-scheduler"  # Compose project name (container name prefix)
    subnet: str = "172.30.0.0/24"  # the project's network; its gateway is the host as containers see it

    @field_validator("subnet")
    @classmethod
    def _network(cls, value: str) -> str:
        ipaddress.ip_network(value)  # raises ValueError with a clear message
        return value


def gateway(hs: HostSettings) -> str:
    """The host's address on the project network (first address of the subnet).

    Example: ``gateway(hs)`` -> ``"172.30.0.1"``
    """
    return str(next(ipaddress.ip_network(hs.stack.compose.subnet).hosts()))


def applies(hs: HostSettings) -> bool:
    return hs.stack.layout == "docker"


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
