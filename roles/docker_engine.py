"""Docker Engine and Docker Compose v2 (docker layout only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from rsdeploy.types import Section, Size

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class Settings(Section):
    # official: Docker's apt repository (docker-ce + compose plugin); distro: Debian's docker.io
    # plus the Compose v2 binary shipped with rsdeploy's Python dependencies.
    source: Literal["official", "distro"] = "official"
    log_max_size: Size = "10m"  # json-file log rotation: size of one file
    log_max_file: int = 3  # json-file log rotation: files kept per container
    live_restore: bool = True  # keep containers running while dockerd restarts


def applies(hs: HostSettings) -> bool:
    return hs.stack.layout == "docker"


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
