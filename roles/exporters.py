"""Metrics exporters: node-exporter and cAdvisor on every host, postgres-exporter beside the
database, redis-exporter beside Redis. Each can be switched off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsdeploy.types import Image, Port, Resources, Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class Exporter(Section):
    enabled: bool = True  # run this exporter
    image: Image  # docker layout: exporter image
    port: Port  # metrics port (loopback or the private address, never public)
    resources: Resources = Resources(memory="128m", cpus=0.25)  # limits for the exporter


class Settings(Section):
    node_exporter: Exporter = Exporter(image="prom/node-exporter:v1.9.1", port=9100)  # host metrics
    cadvisor: Exporter = Exporter(image="ghcr.io/google/cadvisor:0.53.0", port=8080)  # containers
    postgres_exporter: Exporter = Exporter(
        image="quay.io/prometheuscommunity/postgres-exporter:v0.17.1", port=9187
    )  # database metrics (needs the secret db_monitor_password)
    redis_exporter: Exporter = Exporter(image="oliver006/redis_exporter:v1.74.0", port=9121)  # Redis


def node_exporter_listen(hs: HostSettings) -> str:
    """``host:port`` node-exporter listens on; it runs in the host's network namespace.

    Alone on one host it listens only where local Prometheus reaches it (the Compose network's
    gateway in the docker layout, loopback in the systemd layout); in a multi-host stack on the
    host's private address, so the monitoring host can scrape it.
    Example: ``node_exporter_listen(hs)`` -> ``"172.30.0.1:9100"``
    """
    from roles.compose import gateway

    port = hs.stack.exporters.node_exporter.port
    if not hs.has_role("monitoring"):
        return f"{hs.address}:{port}"
    return f"{gateway(hs) if hs.stack.layout == 'docker' else '127.0.0.1'}:{port}"


def applies(hs: HostSettings) -> bool:
    return hs.monitoring_enabled("prometheus")


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
