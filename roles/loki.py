"""Loki 3.x single binary: stores the stack's logs on the filesystem (role ``monitoring``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsdeploy.types import Duration, Image, Port, Resources, Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class Settings(Section):
    enabled: bool = True  # run Loki on the monitoring host
    image: Image = "grafana/loki:3.5.7"  # docker layout: Loki image (pin 3.x)
    port: Port = 3100  # HTTP port (bound to loopback or the private address, never public)
    retention: Duration = "744h"  # delete logs older than this (compactor retention)
    resources: Resources = Resources(memory="512m", cpus=0.5)  # limits for the loki service


def applies(hs: HostSettings) -> bool:
    return hs.has_role("monitoring") and hs.stack.loki.enabled


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
