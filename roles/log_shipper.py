"""The log shipper on every host: Grafana Alloy (default) or Promtail (legacy).

Promtail reached end-of-life on 2026-03-02; keep ``kind: promtail`` only for sites pinned to
Loki <= 3.6. Ships Docker container logs, the journal and /var/log/residency-scheduler to Loki.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from rsdeploy.types import Image, Port, Resources, Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class Settings(Section):
    kind: Literal["alloy", "promtail", "none"] = "alloy"  # which shipper runs on every host
    alloy_image: Image = "grafana/alloy:v1.11.3"  # docker layout: Alloy image
    promtail_image: Image = "grafana/promtail:3.5.7"  # docker layout: Promtail image (legacy)
    alloy_port: Port = 12345  # Alloy's HTTP/UI port (loopback only)
    promtail_port: Port = 9080  # Promtail's HTTP port (loopback only)
    resources: Resources = Resources(memory="256m", cpus=0.25)  # limits for the shipper service


def applies(hs: HostSettings) -> bool:
    return hs.stack.log_shipper.kind != "none" and hs.monitoring_enabled("loki")


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
