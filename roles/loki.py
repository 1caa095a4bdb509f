"""Loki 3.x single binary: stores the stack's logs on the filesystem (role ``monitoring``).

Docker layout: ``base/config/loki/config.yml`` mounted at ``/etc/loki/config.yml``, data on a
volume at ``/loki``. Systemd layout: ``/etc/loki/config.yml`` (as Grafana's package uses), data
under ``/var/lib/loki``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, model_validator
from pyinfra.api import deploy

from rsdeploy import apply
from rsdeploy.layout import Restart
from rsdeploy.render import RenderedFile, template
from rsdeploy.types import Duration, Image, Port, Resources, Section

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: The first day of the tsdb/v13 schema period; never change it once Loki has stored data.
SCHEMA_FROM = "2024-04-01"
#: Where Loki keeps chunks, index and the compactor's state: in its image (a volume), natively.
CONTAINER_DATA_DIR, NATIVE_DATA_DIR = "/loki", "/var/lib/loki"
#: Loki's gRPC port, on loopback only (the single binary talks to itself over it).
GRPC_PORT = 9096


class Settings(Section):
    enabled: bool = True  # run Loki on the monitoring host
    image: Image = "grafana/loki:3.5.7"  # docker layout: Loki image (pin 3.x)
    port: Port = 3100  # HTTP port (bound to loopback or the private address, never public)
    retention: Duration = "744h"  # delete logs older than this (compactor retention)
    ingestion_rate_mb: int = Field(default=8, ge=1, le=1024)  # per-stack push rate limit, MB/s
    ingestion_burst_mb: int = Field(default=16, ge=1, le=4096)  # burst above that rate, MB
    resources: Resources = Resources(memory="512m", cpus=0.5)  # limits for the loki service

    @model_validator(mode="after")
    def _burst_covers_rate(self):
        if self.ingestion_burst_mb < self.ingestion_rate_mb:
            raise ValueError("ingestion_burst_mb must be at least ingestion_rate_mb")
        return self


def applies(hs: HostSettings) -> bool:
    return hs.has_role("monitoring") and hs.stack.loki.enabled


def ports(hs: HostSettings) -> dict[str, int]:
    """Loki's HTTP port and its fixed gRPC port (on loopback), by settings key.

    Example: ``ports(hs)`` -> ``{"loki.port": 3100, "Loki's gRPC port (fixed)": 9096}``
    """
    return {"loki.port": hs.stack.loki.port, "Loki's gRPC port (fixed)": GRPC_PORT}


def config_path(hs: HostSettings) -> str:
    """Where Loki's config file lives on the host.

    Example: ``config_path(hs)`` -> ``"/opt/residency-scheduler/config/loki/config.yml"``
    """
    return hs.layout.config_path(hs, "loki", "config.yml", "/etc/loki/config.yml")


def data_dir(hs: HostSettings) -> str:
    """Where Loki keeps its state, as Loki sees it. Example: ``data_dir(hs)`` -> ``"/loki"``"""
    return hs.layout.data_dir(CONTAINER_DATA_DIR, NATIVE_DATA_DIR)


def listen_address(hs: HostSettings) -> str:
    """The address Loki's HTTP server binds to.

    In a container every interface (Compose publishes the port on the private address only);
    natively loopback, or the host's private address when other hosts ship logs to it.
    Example: ``listen_address(hs)`` -> ``"127.0.0.1"``
    """
    return hs.layout.listen_address(hs, shared=len(hs.topology.hosts) > 1)


def push_url(hs: HostSettings) -> str:
    """The URL a log shipper on host ``hs`` pushes to: the monitoring host's Loki.

    Example: ``push_url(hs)`` -> ``"http://10.0.0.24:3100/loki/api/v1/push"``
    """
    return f"{base_url(hs)}/loki/api/v1/push"


def base_url(hs: HostSettings) -> str:
    """Loki's HTTP root as processes on host ``hs`` reach it. Example: ``"http://loki:3100"``"""
    loki = hs.peer("monitoring").stack.loki
    return f"http://{hs.endpoint('monitoring', 'loki')}:{loki.port}"


def render(hs: HostSettings) -> list[RenderedFile]:
    content = template(
        "loki/config.yml.j2", hs,
        data_dir=data_dir(hs),
        listen_address=listen_address(hs),
        grpc_port=GRPC_PORT,
        schema_from=SCHEMA_FROM,
    )
    # Loki reads its config only at start (Compose service and systemd unit: loki).
    return [RenderedFile(config_path(hs), content, "loki", reactions=(Restart("loki"),))]


@deploy("Install Loki")
def install(hs: HostSettings) -> None:
    """Natively: Loki from Grafana Labs' apt repository (Debian has no package). Not run in
    the sandbox: that repository is not reachable offline.

    Example: ``loki.install(hs)``
    """
    if not hs.layout.runs_in_containers:
        apply.install_grafana_packages("Install Loki", ["loki"])
