"""Grafana with provisioned datasources (Prometheus, Loki) and the stack's dashboards
(role ``monitoring``). The admin password is the secret grafana_admin_password.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsdeploy.types import Image, Name, Port, Resources, Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class Settings(Section):
    enabled: bool = True  # run Grafana on the monitoring host
    image: Image = "grafana/grafana:12.2.1"  # docker layout: Grafana image
    port: Port = 3001  # web port (bound to loopback; reach it through an SSH tunnel)
    admin_user: Name = "admin"  # Grafana admin login
    resources: Resources = Resources(memory="512m", cpus=0.5)  # limits for the grafana service


def applies(hs: HostSettings) -> bool:
    return hs.has_role("monitoring") and hs.stack.grafana.enabled


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
