"""Prometheus: scrapes every target of the stack and evaluates the alert rules (role ``monitoring``).

Docker layout: ``base/config/prometheus/prometheus.yml`` and ``rules/`` (mounted at
/etc/prometheus). Systemd layout: Debian's ``prometheus`` package, /etc/prometheus/prometheus.yml,
its flags in /etc/default/prometheus. Alert rules are static files under
``templates/prometheus/rules/``, chosen by layout and by which exporters run.

This module also holds what the monitoring roles share (alertmanager, exporters): where their
secret files live, who owns them, and Debian's /etc/default files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rsdeploy.render import RenderedFile, static, template
from rsdeploy.types import Duration, Image, Port, Resources, Section
from rsdeploy.validate import Verdict, run_tool

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

ROLE = "prometheus"
SYSTEMD_CONFIG_DIR = "/etc/prometheus"  # Debian's prometheus package
SYSTEMD_SECRETS_DIR = "/etc/prometheus/secrets"  # monitoring secrets, read by user prometheus
SYSTEMD_USER = "prometheus"  # Debian runs prometheus, alertmanager and every exporter as this user
CONTAINER_SECRETS_DIR = "/run/secrets"  # where Compose mounts base/secrets/<name>
GRAFANA_CONTAINER_PORT = 3000  # the grafana image's port inside the Compose network

#: Rule files for every layout (templates/prometheus/rules/), and the exporter each one needs.
COMMON_RULES = ("targets.yml", "monitoring.yml", "backend.yml", "host.yml")
EXPORTER_RULES = {"postgres_exporter": "postgres.yml", "redis_exporter": "redis.yml"}
LAYOUT_RULES = {"docker": ("cadvisor", "containers.yml"), "systemd": ("node_exporter", "systemd.yml")}


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


# --- shared by the monitoring roles -----------------------------------------------------------


def peer(hs: HostSettings, name: str) -> HostSettings:
    """Another inventory host's settings, seen with the same stack-wide facts.

    Example: ``peer(hs, "db1.example.org").stack.exporters.postgres_exporter.enabled``
    """
    return dataclasses.replace(hs, name=name, stack=hs.stack_settings[name])


def reach(hs: HostSettings, host: str, service: str, port: int) -> str:
    """``host:port`` at which ``hs``'s containers/processes reach ``service`` running on ``host``.

    Same host: the Compose service name (docker) or loopback (systemd); another host: its address
    (the service publishes its port on that host's private address).
    Example: ``reach(hs, "db1.example.org", "postgres-exporter", 9187)`` -> ``"10.0.0.21:9187"``
    """
    if host == hs.name:
        return f"{service if hs.stack.layout == 'docker' else '127.0.0.1'}:{port}"
    return f"{peer(hs, host).address}:{port}"


def secret_path(hs: HostSettings, name: str) -> str:
    """Where a monitoring secret file lives on the host.

    Example: ``secret_path(hs, "smtp_password")`` -> ``"/opt/residency-scheduler/secrets/smtp_password"``
    """
    if hs.stack.layout == "docker":
        return f"{hs.stack.paths.base_dir}/secrets/{name}"
    return f"{SYSTEMD_SECRETS_DIR}/{name}"


def secret_read_path(hs: HostSettings, name: str) -> str:
    """The path the reading process opens: the Compose secret mount, or the host file itself."""
    if hs.stack.layout == "docker":
        return f"{CONTAINER_SECRETS_DIR}/{name}"
    return secret_path(hs, name)


def secret_file(hs: HostSettings, name: str, content: str, *, role: str, image_uid: int,
                restarts: tuple[str, ...]) -> RenderedFile:
    """A secret file owned by whoever reads it: the image's uid (docker) or Debian's prometheus.

    Compose bind-mounts file secrets with the host file's owner and mode, so the owner must be the
    uid the container runs as. Example: ``secret_file(hs, "smtp_password", pw, role="alertmanager",
    image_uid=65534, restarts=("alertmanager",))``
    """
    owner = str(image_uid) if hs.stack.layout == "docker" else SYSTEMD_USER
    group = str(image_uid) if hs.stack.layout == "docker" else SYSTEMD_USER
    return RenderedFile(secret_path(hs, name), content, role, mode="600", owner=owner,
                        group=group, secret=True, restarts=restarts)


def debian_default(package: str, variables: dict[str, str], *, hs: HostSettings, role: str,
                   comment: str) -> RenderedFile:
    """Debian's ``/etc/default/<package>`` (a systemd EnvironmentFile; its unit runs ``$ARGS``).

    Example: ``debian_default("prometheus", {"ARGS": "--web.enable-lifecycle"}, hs=hs,
    role="prometheus", comment="Prometheus server flags")``
    """
    content = template("prometheus/debian-default.j2", hs, package=package, comment=comment,
                       variables=variables)
    return RenderedFile(f"/etc/default/{package}", content, role, restarts=(package,))


# --- scrape targets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    address: str  # host:port Prometheus scrapes
    instance: str  # the inventory host name (the `instance` label on every series)


@dataclass(frozen=True)
class ScrapeJob:
    name: str
    targets: tuple[Target, ...]


def _job(name: str, targets: list[Target]) -> list[ScrapeJob]:
    return [ScrapeJob(name, tuple(targets))] if targets else []


def _on_every_host(hs: HostSettings, exporter: str, service: str) -> list[Target]:
    targets = []
    for ref in hs.topology.hosts:
        settings = getattr(hs.stack_settings[ref.name].exporters, exporter)
        if settings.enabled:
            targets.append(Target(reach(hs, ref.name, service, settings.port), ref.name))
    return targets


def _beside(hs: HostSettings, role: str, exporter: str, service: str) -> list[Target]:
    carrier = hs.topology.one(role)
    settings = getattr(hs.stack_settings[carrier.name].exporters, exporter)
    return [Target(reach(hs, carrier.name, service, settings.port), carrier.name)] \
        if settings.enabled else []


def _node_targets(hs: HostSettings) -> list[Target]:
    from roles.exporters import node_exporter_listen

    return [Target(node_exporter_listen(peer(hs, ref.name)), ref.name)
            for ref in hs.topology.hosts
            if hs.stack_settings[ref.name].exporters.node_exporter.enabled]


def _log_shipper_targets(hs: HostSettings) -> list[ScrapeJob]:
    from roles import log_shipper

    kind = hs.stack.log_shipper.kind
    port = {"alloy": hs.stack.log_shipper.alloy_port,
            "promtail": hs.stack.log_shipper.promtail_port}.get(kind)
    targets = [Target(reach(hs, ref.name, kind, port), ref.name)
               for ref in hs.topology.hosts if log_shipper.applies(peer(hs, ref.name))]
    return _job(kind, targets)


def _monitoring_service(hs: HostSettings, component: str, port: int) -> list[Target]:
    section = getattr(hs.stack, component)
    return [Target(reach(hs, hs.name, component, port), hs.name)] if section.enabled else []


def _loki(hs: HostSettings) -> list[Target]:
    from roles.loki import listen_address

    if hs.stack.layout == "docker" or not hs.stack.loki.enabled:
        return _monitoring_service(hs, "loki", hs.stack.loki.port)
    return [Target(f"{listen_address(hs)}:{hs.stack.loki.port}", hs.name)]  # may bind the address


def _grafana(hs: HostSettings) -> list[Target]:
    # The Grafana container keeps its own port; Compose publishes grafana.port on the host.
    port = GRAFANA_CONTAINER_PORT if hs.stack.layout == "docker" else hs.stack.grafana.port
    return _monitoring_service(hs, "grafana", port)


def scrape_jobs(hs: HostSettings) -> list[ScrapeJob]:
    """Every scrape job of the monitoring host ``hs``, for the chosen layout and topology.

    Example: ``[j.name for j in scrape_jobs(hs)]`` -> ``["prometheus", "alertmanager", ...]``
    """
    s = hs.stack
    app = hs.topology.one("app")
    backend_port = hs.stack_settings[app.name].backend.port
    jobs = [
        *_job("prometheus", [Target(reach(hs, hs.name, "prometheus", s.prometheus.port), hs.name)]),
        *_job("alertmanager", _monitoring_service(hs, "alertmanager", s.alertmanager.port)),
        *_job("backend", [Target(reach(hs, app.name, "backend", backend_port), app.name)]),
        *_job("node", _node_targets(hs)),
        *_job("postgres", _beside(hs, "db", "postgres_exporter", "postgres-exporter")),
        *_job("redis", _beside(hs, "redis", "redis_exporter", "redis-exporter")),
        *_job("loki", _loki(hs)),
        *_job("grafana", _grafana(hs)),
        *_log_shipper_targets(hs),
    ]
    if s.layout == "docker":
        jobs += _job("cadvisor", _on_every_host(hs, "cadvisor", "cadvisor"))
    return jobs


# --- files ------------------------------------------------------------------------------------


def config_dir(hs: HostSettings) -> str:
    """Directory of prometheus.yml and rules/ on the host."""
    if hs.stack.layout == "docker":
        return f"{hs.stack.paths.base_dir}/config/prometheus"
    return SYSTEMD_CONFIG_DIR


def rule_files(hs: HostSettings) -> list[str]:
    """The rule files that match the targets this stack has (names under rules/)."""
    exporters = [hs.stack_settings[ref.name].exporters for ref in hs.topology.hosts]
    chosen = list(COMMON_RULES)
    chosen += [f for name, f in EXPORTER_RULES.items()
               if any(getattr(e, name).enabled for e in exporters)]
    needs, layout_file = LAYOUT_RULES[hs.stack.layout]
    if any(getattr(e, needs).enabled for e in exporters):
        chosen.append(layout_file)
    return sorted(chosen)


def command_flags(hs: HostSettings) -> list[str]:
    """Prometheus server flags; the Compose service's ``command`` or Debian's ARGS.

    Example: ``command_flags(hs)`` -> ``["--config.file=/etc/prometheus/prometheus.yml", ...]``
    """
    p = hs.stack.prometheus
    flags = [f"--storage.tsdb.retention.time={p.retention}", "--web.enable-lifecycle"]
    if hs.stack.layout == "docker":  # the image's own defaults, restated since command replaces them
        return ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
                *flags, f"--web.listen-address=0.0.0.0:{p.port}"]
    return [*flags, f"--web.listen-address=127.0.0.1:{p.port}"]


def _alertmanager_address(hs: HostSettings) -> str | None:
    return reach(hs, hs.name, "alertmanager", hs.stack.alertmanager.port) \
        if hs.stack.alertmanager.enabled else None


def render(hs: HostSettings) -> list[RenderedFile]:
    restarts = ("prometheus",)  # Compose service and Debian unit share the name
    directory = config_dir(hs)
    config = template(
        "prometheus/prometheus.yml.j2", hs,
        jobs=scrape_jobs(hs),
        alertmanager=_alertmanager_address(hs),
        # Prometheus 3 expands $VAR in external_labels; $$ keeps a literal dollar.
        environment_label=hs.stack.environment.replace("$", "$$"),
    )
    files = [RenderedFile(f"{directory}/prometheus.yml", config, ROLE, restarts=restarts)]
    files += [RenderedFile(f"{directory}/rules/{name}", static(f"prometheus/rules/{name}"), ROLE,
                           restarts=restarts)
              for name in rule_files(hs)]
    if hs.stack.layout == "systemd":
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
