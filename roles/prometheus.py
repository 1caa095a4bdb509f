"""Prometheus: scrapes every target of the stack and evaluates the alert rules (role ``monitoring``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsdeploy.types import Duration, Image, Port, Resources, Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class Settings(Section):
    enabled: bool = True  # run Prometheus on the monitoring host
    image: Image = "prom/prometheus:v3.5.0"  # docker layout: Prometheus image
    port: Port = 9090  # web UI/API port (bound to loopback, never public)
    scrape_interval: Duration = "15s"  # how often targets are scraped
    evaluation_interval: Duration = "15s"  # how often rules are evaluated
    retention: Duration = "15d"  # --storage.tsdb.retention.time
    resources: Resources = Resources(memory="1g", cpus=1.0)  # limits for the prometheus service


def applies(hs: HostSettings) -> bool:
    return hs.has_role("monitoring") and hs.stack.prometheus.enabled


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
