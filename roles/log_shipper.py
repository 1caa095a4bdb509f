"""The log shipper on every host: Grafana Alloy (default) or Promtail (legacy).

Promtail reached end-of-life on 2026-03-02; keep ``kind: promtail`` only for sites pinned to
Loki <= 3.6. Ships Docker container logs (docker layout), the systemd journal and
``paths.log_dir/*.log`` to the monitoring host's Loki, labelled with host and environment.

Docker layout: the shipper container needs, read-only, the Docker socket, ``/var/log/journal``,
``/run/log/journal``, ``/etc/machine-id`` and ``paths.log_dir`` at the same paths as on the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pyinfra.api import deploy

from rsdeploy.roles.loki import push_url
from rsdeploy import apply
from rsdeploy.layout import Restart
from rsdeploy.render import RenderedFile, template
from rsdeploy.types import Image, Port, Resources, Section

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: The Docker Engine API as the shipper reaches it (socket mounted at the same path).
DOCKER_HOST = "unix:///var/run/docker.sock"
#: The ``job`` label of the streams read from ``paths.log_dir/*.log`` (dashboards select it).
APP_LOG_JOB = "residency-scheduler"


class Settings(Section):
    kind: Literal["alloy", "promtail", "none"] = "alloy"  # which shipper runs on every host
    alloy_image: Image = "grafana/alloy:v1.11.3"  # docker layout: Alloy image
    promtail_image: Image = "grafana/promtail:3.5.7"  # docker layout: Promtail image (legacy)
    alloy_port: Port = 12345  # Alloy's HTTP/UI port (loopback only)
    promtail_port: Port = 9080  # Promtail's HTTP port (loopback only)
    resources: Resources = Resources(memory="256m", cpus=0.25)  # limits for the shipper service


def applies(hs: HostSettings) -> bool:
    return hs.stack.log_shipper.kind != "none" and hs.monitoring_enabled("loki")


def ports(hs: HostSettings) -> dict[str, int]:
    """The HTTP port of the shipper that runs, by settings key.

    Example: ``ports(hs)`` -> ``{"log_shipper.alloy_port": 12345}``
    """
    key = f"{hs.stack.log_shipper.kind}_port"
    return {f"log_shipper.{key}": getattr(hs.stack.log_shipper, key)}


def service_name(hs: HostSettings) -> str:
    """The Compose service / systemd unit of the shipper. Example: ``"alloy"``"""
    return hs.stack.log_shipper.kind


def config_path(hs: HostSettings) -> str:
    """Where the shipper's config lives on the host.

    Example: ``config_path(hs)`` -> ``"/etc/alloy/config.alloy"``
    """
    name = "config.alloy" if hs.stack.log_shipper.kind == "alloy" else "config.yml"
    service = service_name(hs)
    return hs.layout.config_path(hs, service, name, f"/etc/{service}/{name}")


def _context(hs: HostSettings) -> dict:
    """Values both shippers' templates share."""
    return {
        "push_url": push_url(hs),
        # The stack's own processes log from containers too: read them from the Docker API.
        "docker": hs.layout.runs_in_containers,
        "docker_host": DOCKER_HOST,
        "log_glob": f"{hs.stack.paths.log_dir}/*.log",
        "app_log_job": APP_LOG_JOB,
        "journal_services": journal_services(hs),
    }


def journal_services(hs: HostSettings) -> list[tuple[str, str]]:
    """(Compose service, regex of its units) for the services this host's layout runs as
    systemd units, so their journal streams carry ``service`` as containers' do.

    Example (systemd layout): ``("backend", "residency-backend@.*[.]service")``
    """
    # Unit names: letters, digits and @._- ; a pattern's * stands for a release slot.
    return [(service, source.target.replace(".", "[.]").replace("*", ".*"))
            for service, sources in hs.layout.log_sources(hs).items()
            for source in sources if source.kind == "journal"]


def render(hs: HostSettings) -> list[RenderedFile]:
    if hs.stack.log_shipper.kind == "alloy":
        content = template("alloy/config.alloy.j2", hs, **_context(hs))
    else:
        content = template(
            "promtail/config.yml.j2", hs,
            listen_address=hs.layout.listen_address(hs, shared=False),  # never shared: loopback
            positions_file="/var/lib/promtail/positions.yaml",
            **_context(hs),
        )
    # Either shipper reads its config only at start.
    return [RenderedFile(config_path(hs), content, "log_shipper",
                         reactions=(Restart(service_name(hs)),))]


@deploy("Install the log shipper")
def install(hs: HostSettings) -> None:
    """Natively: Grafana Alloy (or the legacy Promtail) from Grafana Labs' apt repository.
    Not run in the sandbox: that repository is not reachable offline.

    Example: ``log_shipper.install(hs)``
    """
    if not hs.layout.runs_in_containers:
        kind = hs.stack.log_shipper.kind
        apply.install_grafana_packages(f"Install {kind}", [kind])
