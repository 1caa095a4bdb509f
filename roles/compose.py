"""The docker layout's Compose project: the app stack, production overrides, the monitoring
stack and the web (nginx + certbot) stack, with the app env file and secrets as files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsdeploy.types import Name, Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class Settings(Section):
    project: Name = "residency-scheduler"  # Compose project name (container name prefix)


def applies(hs: HostSettings) -> bool:
    return hs.stack.layout == "docker"


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
