"""Prometheus: scrapes every target of the stack and evaluates the alert rules (role ``monitoring``).

Docker layout: ``base/config/prometheus/prometheus.yml`` and ``rules/`` (mounted at
/etc/prometheus). Systemd layout: Debian's ``prometheus`` package, /etc/prometheus/prometheus.yml,
its flags in /etc/default/prometheus. Alert rules are static files under
``templates/prometheus/rules/``, chosen by which exporters run.

What the monitoring roles share (secret files, Debian's /etc/default files) is in
:mod:`rsdeploy.component_files`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from pyinfra.api import deploy

from rsdeploy.roles import backup, log_shipper, loki
from rsdeploy import apply
from rsdeploy.roles.backend import serves_metrics, slot_ports
from rsdeploy.roles.exporters import exporter_applies, node_exporter_listen, systemd_collector
from rsdeploy.component_files import debian_default
from rsdeploy.layout import Reload
from rsdeploy.render import RenderedFile, static, template
from rsdeploy.types import Duration, Image, Port, Resources, Section
from rsdeploy.validate import Verdict, run_tool

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

ROLE = "prometheus"
SYSTEMD_CONFIG_DIR = "/etc/prometheus"  # Debian's prometheus package
GRAFANA_CONTAINER_PORT = 3000  # the grafana image's port inside the Compose network

#: Rule files every stack gets (templates/prometheus/rules/).
COMMON_RULES = ("targets.yml", "monitoring.yml", "host.yml")
#: Rules on the backend's own metrics: only when it serves /metrics (backend.metrics).
BACKEND_RULES = "backend.yml"
#: Rule files that need an exporter, by the exporter each one needs (the release metrics reach
#: Prometheus through node-exporter's textfile collector).
EXPORTER_RULES = {"postgres_exporter": "postgres.yml", "redis_exporter": "redis.yml",
                  "cadvisor": "containers.yml", "node_exporter": "release.yml"}
#: The backup alerts: rs-backup publishes each run through node-exporter's textfile collector.
BACKUP_RULES = "backup.yml"
#: The rules on systemd units need node-exporter's systemd collector on some host.
SYSTEMD_RULES = "systemd.yml"


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


def ports(hs: HostSettings) -> dict[str, int]:
    """The port Prometheus takes on this host, by settings key. Example: ``{"prometheus.port": ...}``"""
    return {"prometheus.port": hs.stack.prometheus.port}


# --- scrape targets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    address: str  # host:port Prometheus scrapes
    instance: str  # the inventory host name (the `instance` label on every series)
    slot: str = ""  # the release slot of an app instance (natively; the `slot` label)


@dataclass(frozen=True)
class ScrapeJob:
    name: str
    targets: tuple[Target, ...]


def _job(name: str, targets: list[Target]) -> list[ScrapeJob]:
    return [ScrapeJob(name, tuple(targets))] if targets else []


def _hosts(hs: HostSettings) -> list[HostSettings]:
    """Every host of the stack, in inventory order."""
    return [hs.on(ref.name) for ref in hs.topology.hosts]


def _exporter(hs: HostSettings, exporter: str, service: str) -> list[Target]:
    """The exporter on every host where it runs (see :func:`roles.exporters.exporter_applies`)."""
    return [Target(hs.reach(host.name, service, getattr(host.stack.exporters, exporter).port),
                   host.name)
            for host in _hosts(hs) if exporter_applies(host, exporter)]


def _node_targets(hs: HostSettings) -> list[Target]:
    # node-exporter runs in each host's network namespace: scraped where it listens.
    return [Target(node_exporter_listen(host), host.name)
            for host in _hosts(hs) if exporter_applies(host, "node_exporter")]


def _log_shipper_targets(hs: HostSettings) -> list[ScrapeJob]:
    kind = hs.stack.log_shipper.kind
    port = {"alloy": hs.stack.log_shipper.alloy_port,
            "promtail": hs.stack.log_shipper.promtail_port}.get(kind)
    targets = [Target(hs.reach(host.name, kind, port), host.name)
               for host in _hosts(hs) if log_shipper.applies(host)]
    return _job(kind, targets)


def _monitoring_service(hs: HostSettings, component: str, port: int) -> list[Target]:
    section = getattr(hs.stack, component)
    return [Target(hs.reach(hs.name, component, port), hs.name)] if section.enabled else []


def _backend_targets(hs: HostSettings) -> list[Target]:
    """The backend of each app host and release slot (one target per host where instances
    share a name)."""
    return [Target(hs.reach(app.name, "backend", port), app.name, slot)
            for app in hs.peers("app")
            for slot, port in slot_ports(app, app.stack.backend.port).items()]


def _loki(hs: HostSettings) -> list[Target]:
    if not hs.stack.loki.enabled:
        return []
    bound = loki.listen_address(hs)
    if bound == "0.0.0.0":  # every interface: reached like any service on this host
        return _monitoring_service(hs, "loki", hs.stack.loki.port)
    return [Target(f"{bound}:{hs.stack.loki.port}", hs.name)]  # one address: scraped there


def _grafana(hs: HostSettings) -> list[Target]:
    # The Grafana image keeps its own port (Compose publishes grafana.port on the host); the
    # package listens on grafana.port itself.
    port = GRAFANA_CONTAINER_PORT if hs.layout.runs_in_containers else hs.stack.grafana.port
    return _monitoring_service(hs, "grafana", port)


def scrape_jobs(hs: HostSettings) -> list[ScrapeJob]:
    """Every scrape job of the monitoring host ``hs``, for its layout and topology.

    Example: ``[j.name for j in scrape_jobs(hs)]`` -> ``["prometheus", "alertmanager", ...]``
    """
    s = hs.stack
    return [
        *_job("prometheus", [Target(hs.reach(hs.name, "prometheus", s.prometheus.port),
                                    hs.name)]),
        *_job("alertmanager", _monitoring_service(hs, "alertmanager", s.alertmanager.port)),
        *_job("backend", _backend_targets(hs) if serves_metrics(hs) else []),
        *_job("node", _node_targets(hs)),
        *_job("postgres", _exporter(hs, "postgres_exporter", "postgres-exporter")),
        *_job("redis", _exporter(hs, "redis_exporter", "redis-exporter")),
        *_job("loki", _loki(hs)),
        *_job("grafana", _grafana(hs)),
        *_log_shipper_targets(hs),
        *_job("cadvisor", _exporter(hs, "cadvisor", "cadvisor")),
    ]


# --- files ------------------------------------------------------------------------------------


def _config_path(hs: HostSettings, name: str) -> str:
    return hs.layout.config_path(hs, "prometheus", name, f"{SYSTEMD_CONFIG_DIR}/{name}")


def config_dir(hs: HostSettings) -> str:
    """Directory of prometheus.yml and rules/ on the host."""
    return str(PurePosixPath(_config_path(hs, "prometheus.yml")).parent)


def rule_files(hs: HostSettings) -> list[str]:
    """The rule files that match the targets this stack has (names under rules/)."""
    hosts = _hosts(hs)
    chosen = list(COMMON_RULES)
    chosen += [f for name, f in EXPORTER_RULES.items()
               if any(exporter_applies(host, name) for host in hosts)]
    if any(systemd_collector(host) for host in hosts):
        chosen.append(SYSTEMD_RULES)
    if serves_metrics(hs):
        chosen.append(BACKEND_RULES)
    if any(backup.applies(host) and exporter_applies(host, "node_exporter") for host in hosts):
        chosen.append(BACKUP_RULES)
    return sorted(chosen)


def command_flags(hs: HostSettings) -> list[str]:
    """Prometheus server flags; the Compose service's ``command`` or Debian's ARGS.

    Example: ``command_flags(hs)`` -> ``["--config.file=/etc/prometheus/prometheus.yml", ...]``
    """
    p = hs.stack.prometheus
    # The image's own defaults (container paths), restated since Compose's command replaces them.
    image = (["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
             if hs.layout.runs_in_containers else [])
    return [*image, f"--storage.tsdb.retention.time={p.retention}", "--web.enable-lifecycle",
            f"--web.listen-address={hs.layout.listen_address(hs, False)}:{p.port}"]


def _alertmanager_address(hs: HostSettings) -> str | None:
    return hs.reach(hs.name, "alertmanager", hs.stack.alertmanager.port) \
        if hs.stack.alertmanager.enabled else None


def _reactions(hs: HostSettings) -> tuple[Reload, ...]:
    # Prometheus rereads its config and rules on SIGHUP / `systemctl reload`.
    return (Reload(hs.layout.service("prometheus", "prometheus")),)


def owned_dirs(hs: HostSettings) -> dict[str, tuple[Reload, ...]]:
    """rules/ holds only the rule files of this stack's targets: a file no longer chosen (its
    component switched off) is removed, or Prometheus would keep loading it."""
    return {f"{config_dir(hs)}/rules": _reactions(hs)}


def render(hs: HostSettings) -> list[RenderedFile]:
    reactions = _reactions(hs)
    config = template(
        "prometheus/prometheus.yml.j2", hs,
        jobs=scrape_jobs(hs),
        alertmanager=_alertmanager_address(hs),
        # Prometheus 3 expands $VAR in external_labels; $$ keeps a literal dollar.
        environment_label=hs.stack.environment.replace("$", "$$"),
    )
    files = [RenderedFile(_config_path(hs, "prometheus.yml"), config, ROLE, reactions=reactions)]
    files += [RenderedFile(_config_path(hs, f"rules/{name}"), static(f"prometheus/rules/{name}"),
                           ROLE, reactions=reactions)
              for name in rule_files(hs)]
    if not hs.layout.runs_in_containers:  # the package reads its flags from /etc/default
        files.append(debian_default("prometheus", {"ARGS": " ".join(command_flags(hs))}, hs=hs,
                                    role=ROLE, comment="Prometheus server flags"))
    return files


# --- validation -------------------------------------------------------------------------------


def validate(tree: Path, hs: HostSettings) -> list[Verdict]:
    """``promtool check config`` (which loads the rule files too) and ``promtool check rules``."""
    directory = tree / config_dir(hs).lstrip("/")
    config = f"{config_dir(hs)}/prometheus.yml"
    verdicts = [run_tool(["promtool", "check", "config", "prometheus.yml"], config,
                         "promtool check config", cwd=directory)]
    rules = sorted(str(p) for p in (directory / "rules").glob("*.yml"))
    verdicts += [run_tool(["promtool", "check", "rules", rule], f"{config_dir(hs)}/rules/"
                          f"{Path(rule).name}", "promtool check rules") for rule in rules]
    return verdicts


@deploy("Install Prometheus")
def install(hs: HostSettings) -> None:
    """Natively: Debian's prometheus (its daemon reads /etc/default/prometheus and our config).

    Example: ``prometheus.install(hs)``
    """
    if not hs.layout.runs_in_containers:
        apply.install_packages("Install Prometheus", ["prometheus"],
                               extra_install_args="-o Dpkg::Options::=--force-confold")
