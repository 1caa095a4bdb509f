"""Grafana with provisioned datasources (Prometheus, Loki) and the stack's dashboards
(role ``monitoring``). The admin password is the secret grafana_admin_password.

Docker layout: provisioning in ``base/config/grafana/provisioning/`` (-> /etc/grafana/provisioning),
dashboards in ``base/config/grafana/dashboards/`` (-> /var/lib/grafana/dashboards), server settings
as ``GF_*`` variables from :func:`environment`, the password in
``base/secrets/grafana_admin_password``.
Systemd layout: the package's /etc/grafana/grafana.ini and /etc/grafana/provisioning/, dashboards
in /var/lib/grafana/dashboards. Dashboards are generated from the Python data below (stable uids,
datasources referenced by uid), never hand-written JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyinfra.api import deploy

from rsdeploy.roles.backend import serves_metrics
from rsdeploy.roles.log_shipper import APP_LOG_JOB
from rsdeploy.roles.loki import base_url
from rsdeploy import apply
from rsdeploy.layout import Restart
from rsdeploy.render import RenderedFile, template
from rsdeploy.types import Image, Name, Port, Resources, Section

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings, SecretRules

PROMETHEUS = {"type": "prometheus", "uid": "rs-prometheus"}  # datasource reference
LOKI = {"type": "loki", "uid": "rs-loki"}  # datasource reference
DASHBOARDS_DIR = "/var/lib/grafana/dashboards"  # where Grafana reads dashboards (both layouts)
PROVISIONING_DIR = "/etc/grafana/provisioning"  # where Grafana reads provisioning (both layouts)
SECRET_NAME = "grafana_admin_password"
CONTAINER_UID = "472"  # the grafana user of the upstream image
NATIVE_DIR = "/etc/grafana"  # the package's configuration directory (grafana.ini, the password)
GRID_WIDTH = 24  # Grafana's dashboard grid is 24 columns wide


class Settings(Section):
    enabled: bool = True  # run Grafana on the monitoring host
    image: Image = "grafana/grafana:12.2.1"  # docker layout: Grafana image
    port: Port = 3001  # web port (bound to loopback; reach it through an SSH tunnel)
    admin_user: Name = "admin"  # Grafana admin login
    resources: Resources = Resources(memory="512m", cpus=0.5)  # limits for the grafana service


def applies(hs: HostSettings) -> bool:
    return hs.has_role("monitoring") and hs.stack.grafana.enabled


def ports(hs: HostSettings) -> dict[str, int]:
    """The port Grafana (published) takes on this host, by settings key. Example: ``{"grafana.port": ...}``"""
    return {"grafana.port": hs.stack.grafana.port}


def check(hs: HostSettings, rules: SecretRules) -> None:
    """The admin password Grafana is provisioned with."""
    if hs.monitoring_enabled("grafana"):
        rules.require(SECRET_NAME, "Grafana", 12)


# --- server settings (grafana.ini on systemd, GF_* variables in Docker) ------------------------


def server_settings(hs: HostSettings) -> dict[str, dict[str, str]]:
    """Grafana settings rsdeploy sets, by grafana.ini section (the admin password apart).

    Example: ``server_settings(hs)["security"]["admin_user"]`` -> ``"admin"``
    """
    g = hs.stack.grafana
    settings = {
        "analytics": {"check_for_plugin_updates": "false", "check_for_updates": "false",
                      "reporting_enabled": "false"},
        "auth.anonymous": {"enabled": "false"},
        "paths": {"provisioning": PROVISIONING_DIR},
        "security": {"admin_user": g.admin_user, "disable_gravatar": "true"},
        "users": {"allow_sign_up": "false"},
    }
    if not hs.layout.runs_in_containers:  # a container keeps port 3000; Compose publishes g.port
        settings["server"] = {"http_addr": "127.0.0.1", "http_port": str(g.port)}
    return dict(sorted(settings.items()))


def environment(hs: HostSettings) -> dict[str, str]:
    """``GF_*`` variables for the grafana Compose service (docker layout).

    Example: ``environment(hs)["GF_SECURITY_ADMIN_PASSWORD__FILE"]`` ->
    ``"/run/secrets/grafana_admin_password"``
    """
    env = {
        f"GF_{section.replace('.', '_').upper()}_{key.upper()}": value
        for section, values in server_settings(hs).items()
        for key, value in values.items()
    }
    env["GF_SECURITY_ADMIN_PASSWORD__FILE"] = secret_read_path(hs)
    return dict(sorted(env.items()))


def secret_path(hs: HostSettings) -> str:
    """The admin password file on the host.

    Example: ``secret_path(hs)`` -> ``"/opt/residency-scheduler/secrets/grafana_admin_password"``
    """
    return f"{hs.layout.secrets_dir(hs, NATIVE_DIR)}/{SECRET_NAME}"


def secret_read_path(hs: HostSettings) -> str:
    """The admin password file as Grafana opens it.

    Example: ``secret_read_path(hs)`` -> ``"/run/secrets/grafana_admin_password"``
    """
    return f"{hs.layout.secret_read_dir(hs, NATIVE_DIR)}/{SECRET_NAME}"


# --- datasources ------------------------------------------------------------------------------


def datasources(hs: HostSettings) -> list[dict]:
    """The datasources Grafana gets, with URLs as Grafana reaches them (same host).

    Example: ``datasources(hs)[0]["url"]`` -> ``"http://prometheus:9090"``
    """
    found = []
    if hs.monitoring_enabled("prometheus"):
        prom = hs.stack.prometheus
        found.append({**PROMETHEUS, "name": "Prometheus", "default": True,
                      "url": f"http://{hs.endpoint('monitoring', 'prometheus')}:{prom.port}",
                      "json_data": {"httpMethod": "POST", "timeInterval": prom.scrape_interval}})
    if hs.monitoring_enabled("loki"):
        found.append({**LOKI, "name": "Loki", "default": not found, "url": base_url(hs),
                      "json_data": {"maxLines": 1000}})
    return found


# --- dashboards: small builders, then the four dashboards as data ------------------------------


@dataclass(frozen=True)
class Query:
    """One query of a panel: PromQL or LogQL, with an optional legend (Grafana's ``{{label}}``)."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A panel before layout: Grafana ``kind``, datasource, queries, size in grid units."""

    kind: str
    title: str
    queries: tuple[Query, ...]
    datasource: dict = field(default_factory=lambda: PROMETHEUS)
    unit: str = "short"
    width: int = 12
    height: int = 8
    mappings: tuple[tuple[int, str, str], ...] = ()  # (value, text, colour)
    thresholds: tuple[tuple[float | None, str], ...] = ((None, "green"),)  # (from, colour)
    description: str = ""


def timeseries(title: str, *queries: Query, unit: str = "short", **extra) -> Panel:
    """A time series graph, half a row wide.

    Example: ``timeseries("CPU", Query("...", "{{instance}}"), unit="percentunit")``
    """
    return Panel("timeseries", title, queries, unit=unit, **extra)


def stat(title: str, query: Query, width: int = 6, **extra) -> Panel:
    """A single-value panel. Example: ``stat("PostgreSQL up", Query("min(pg_up)"))``"""
    return Panel("stat", title, (query,), width=width, height=4, **extra)


def logs(title: str, *exprs: str) -> Panel:
    """A full-width Loki logs panel. Example: ``logs("Backend", '{service="backend"}')``"""
    queries = tuple(Query(expr) for expr in exprs)
    return Panel("logs", title, queries, datasource=LOKI, width=GRID_WIDTH, height=12)


UP_DOWN = ((0, "DOWN", "red"), (1, "UP", "green"))
#: resilience_utilization_level as the app defines it (0 GREEN .. 4 BLACK).
UTILIZATION_LEVELS = ((0, "GREEN", "green"), (1, "YELLOW", "yellow"), (2, "ORANGE", "orange"),
                      (3, "RED", "red"), (4, "BLACK", "#1f1f1f"))
#: Threshold steps colouring each utilization level like its name.
LEVEL_COLOURS = ((None, "green"), *((level, colour) for level, _, colour in UTILIZATION_LEVELS[1:]))
RATE = "[$__rate_interval]"
#: Deploys on every dashboard's time axis, from each host's release metrics
#: (:mod:`rsdeploy.release_metrics`): a host's deploy time changed, named with the release it
#: runs since (the newest info series: an older one lingers after a Prometheus restart).
DEPLOY_ANNOTATION = {
    "name": "Deploys", "datasource": PROMETHEUS, "enable": True, "iconColor": "blue",
    "expr": "(changes(rsdeploy_release_deployed_timestamp_seconds[2m]) > 0)"
            " * on (instance, stack) group_left (version)"
            " topk by (instance, stack) (1, timestamp(rsdeploy_release_info))",
    "step": "1m", "titleFormat": "Deploy", "textFormat": "{{instance}}: {{version}}",
    "tagKeys": "instance",
}


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    targets = [
        {"datasource": panel.datasource, "expr": q.expr, "legendFormat": q.legend,
         "refId": chr(ord("A") + i)}
        for i, q in enumerate(panel.queries)
    ]
    steps = [{"color": colour, "value": start} for start, colour in panel.thresholds]
    mappings = [{"type": "value", "options": {str(value): {"text": text, "color": colour,
                                                             "index": i}}}
                for i, (value, text, colour) in enumerate(panel.mappings)]
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": panel.datasource,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": panel.unit, "mappings": mappings,
                         "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {"showTime": True, "sortOrder": "Descending", "wrapLogMessage": True}
        if panel.kind == "logs" else {},
    }


def layout(panels: list[Panel]) -> list[dict]:
    """Place panels left to right, top to bottom; ids follow the order (stable across renders)."""
    placed, x, y, row_height = [], 0, 0, 0
    for panel_id, panel in enumerate(panels, start=1):
        if x + panel.width > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        placed.append(_panel_json(panel, panel_id, x, y))
        x, row_height = x + panel.width, max(row_height, panel.height)
    return placed


def variable(name: str, datasource: dict, query: str) -> dict:
    """A multi-value dashboard variable read from a label, "All" by default."""
    return {
        "name": name, "label": name, "type": "query", "datasource": datasource,
        "query": query, "definition": query, "refresh": 2, "sort": 1,
        "multi": True, "includeAll": True, "allValue": ".+",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def dashboard(uid: str, title: str, panels: list[Panel], variables: list[dict] = ()) -> dict:
    """A complete dashboard JSON model. Example: ``dashboard("rs-system", "System", [...])``"""
    return {
        "uid": uid, "title": title, "id": None, "version": 1, "schemaVersion": 39,
        "tags": ["residency-scheduler"], "editable": False, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "timezone": "browser",
        "annotations": {"list": [DEPLOY_ANNOTATION]}, "templating": {"list": list(variables)},
        "panels": layout(panels),
    }


def _app_health(hs: HostSettings) -> Query:
    """1 when a backend/Celery process is up: containers (cAdvisor) or systemd units."""
    if hs.layout.runs_in_containers:
        return Query('max by (name) (container_last_seen{name=~".*(backend|celery).*"})'
                     " > bool (time() - 60)", "{{name}}")
    return Query('max by (name) (node_systemd_unit_state{name=~"residency-(backend|celery-.*)'
                 '[.]service", state="active"})', "{{name}}")


def _request_panels() -> list[Panel]:
    """Request rate, errors and latency from the backend's own /metrics."""
    total = f"sum(rate(http_requests_total{RATE}))"
    return [
        timeseries("Request rate by status",
                   Query(f"sum by (status) (rate(http_requests_total{RATE}))", "{{status}}"),
                   unit="reqps"),
        timeseries("5xx error ratio",
                   Query(f'sum(rate(http_requests_total{{status="5xx"}}{RATE})) / {total}', "5xx"),
                   unit="percentunit",
                   thresholds=((None, "green"), (0.01, "orange"), (0.05, "red"))),
        timeseries("Latency p95 / p99", *(
            Query(f"histogram_quantile({q}, sum by (le) "
                  f"(rate(http_request_duration_highr_seconds_bucket{RATE})))", f"p{q[2:]}")
            for q in ("0.95", "0.99")), unit="s"),
        timeseries("Latency p95 by handler",
                   Query("histogram_quantile(0.95, sum by (le, handler) (rate("
                         f'http_request_duration_seconds_bucket{{handler!="/metrics"}}{RATE})))',
                         "{{handler}}"), unit="s"),
    ]


def application_overview(hs: HostSettings) -> dict:
    """Request rate, errors, latency (when the backend serves /metrics) and process health of
    the API, with its logs."""
    panels = [
        *(_request_panels() if serves_metrics(hs) else []),
        timeseries("Backend and Celery up", _app_health(hs), mappings=UP_DOWN, width=GRID_WIDTH,
                   thresholds=((None, "red"), (1, "green"))),
    ]
    return dashboard("rs-app-overview", "Application Overview", panels + log_panels(hs),
                     log_variables(hs))


def _log_labels(hs: HostSettings) -> list[tuple[str, str]]:
    """(Loki label, what it names) that the log shipper sets on this stack's streams."""
    if not hs.monitoring_enabled("loki"):
        return []
    return [("service", "service (Compose name, both layouts)"), ("unit", "systemd unit")]


def app_log_files() -> str:
    """LogQL selector of the application's log files (``paths.log_dir/*.log``)."""
    return f'{{job="{APP_LOG_JOB}"}}'


def log_panels(hs: HostSettings) -> list[Panel]:
    """One logs panel per stream label, filtered by the variable of the same name, and the
    application's log files."""
    if not hs.monitoring_enabled("loki"):
        return []
    return [*(logs(f"Logs by {meaning}", f'{{{label}=~"${label}"}}')
              for label, meaning in _log_labels(hs)),
            logs("Application log files", app_log_files())]


def log_variables(hs: HostSettings) -> list[dict]:
    """The variables :func:`log_panels` filter by."""
    return [variable(label, LOKI, f"label_values({label})") for label, _ in _log_labels(hs)]


def database_performance(hs: HostSettings) -> dict:
    """PostgreSQL and Redis health, load and size."""
    user_dbs = 'datname!~"template.*"'
    panels = [
        stat("PostgreSQL up", Query("min(pg_up)"), mappings=UP_DOWN,
             thresholds=((None, "red"), (1, "green"))),
        stat("Redis up", Query("min(redis_up)"), mappings=UP_DOWN,
             thresholds=((None, "red"), (1, "green"))),
        stat("Connections used", Query("sum(pg_stat_activity_count) / "
                                       "max(pg_settings_max_connections)"),
             unit="percentunit", thresholds=((None, "green"), (0.7, "orange"), (0.8, "red"))),
        stat("Redis clients", Query("sum(redis_connected_clients)")),
        timeseries("Connections vs max_connections",
                   Query("sum(pg_stat_activity_count)", "connections"),
                   Query("max(pg_settings_max_connections)", "max_connections")),
        timeseries("Transactions per second", *(
            Query(f"sum by (datname) (rate(pg_stat_database_xact_{kind}{{{user_dbs}}}{RATE}))",
                  f"{{{{datname}}}} {kind}") for kind in ("commit", "rollback")), unit="ops"),
        timeseries("Deadlocks",
                   Query(f"sum by (datname) (increase(pg_stat_database_deadlocks{{{user_dbs}}}"
                         f"{RATE}))", "{{datname}}")),
        timeseries("Database size", Query(f"pg_database_size_bytes{{{user_dbs}}}", "{{datname}}"),
                   unit="bytes"),
        timeseries("Redis memory", Query("redis_memory_used_bytes", "used"),
                   Query("redis_memory_max_bytes > 0", "maxmemory"), unit="bytes"),
        timeseries("Redis connected clients", Query("redis_connected_clients", "{{instance}}")),
    ]
    return dashboard("rs-database", "Database Performance", panels)


def system_resources(hs: HostSettings) -> dict:
    """Host CPU, memory, disk and network; container (docker) or unit (systemd) health."""
    host = 'instance=~"$instance"'
    disks = f'{host}, fstype!~"tmpfs|overlay|squashfs|nsfs"'
    panels = [
        timeseries("CPU used",
                   Query("1 - avg by (instance) (rate("
                         f'node_cpu_seconds_total{{mode="idle", {host}}}{RATE}))', "{{instance}}"),
                   unit="percentunit"),
        timeseries("Memory used",
                   Query(f"1 - node_memory_MemAvailable_bytes{{{host}}} / "
                         f"node_memory_MemTotal_bytes{{{host}}}", "{{instance}}"),
                   unit="percentunit"),
        timeseries("Disk used",
                   Query(f"1 - node_filesystem_avail_bytes{{{disks}}} / "
                         f"node_filesystem_size_bytes{{{disks}}}", "{{instance}} {{mountpoint}}"),
                   unit="percentunit", thresholds=((None, "green"), (0.8, "orange"), (0.9, "red"))),
        timeseries("Network traffic", *(
            Query(f'sum by (instance) (rate(node_network_{way}_bytes_total{{{host}, device!="lo"}}'
                  f"{RATE}))", f"{{{{instance}}}} {way}") for way in ("receive", "transmit")),
            unit="Bps"),
    ]
    if hs.layout.runs_in_containers:
        panels += [
            timeseries("Container memory (working set)",
                       Query('max by (name) (container_memory_working_set_bytes{name!=""})',
                             "{{name}}"), unit="bytes"),
            timeseries("Container restarts (1h)",
                       Query('sum by (name) (changes(container_start_time_seconds{name!=""}[1h]))',
                             "{{name}}")),
        ]
    else:
        panels += [
            timeseries("Failed systemd units",
                       Query("sum by (instance, name) "
                             '(node_systemd_unit_state{state="failed"}) > 0',
                             "{{instance}} {{name}}")),
            timeseries("Unit state changes (1h)",
                       Query("sum by (name) "
                             '(changes(node_systemd_unit_state{state="active"}[1h])) > 0',
                             "{{name}}")),
        ]
    return dashboard("rs-system", "System Resources", panels,
                     [variable("instance", PROMETHEUS, "label_values(node_uname_info, instance)")])


def resilience_metrics(hs: HostSettings) -> dict | None:
    """The scheduler's resilience framework: utilization per component and the alert levels
    (the backend's gauges), with its log events; None with neither metrics nor logs."""
    panels = [] if not serves_metrics(hs) else [
        stat("Utilization level", Query("max(resilience_utilization_level)"),
             mappings=UTILIZATION_LEVELS, thresholds=LEVEL_COLOURS, width=12,
             description="0 GREEN .. 4 BLACK"),
        stat("Defense level", Query("max(resilience_defense_level)"), width=12,
             thresholds=((None, "green"), (2, "yellow"), (3, "orange"), (4, "red"), (5, "#1f1f1f")),
             description="Defense in depth: 1 (normal) .. 5 (highest)"),
        timeseries("Utilization rate by component",
                   Query("resilience_utilization_rate", "{{component}}"), unit="percentunit",
                   thresholds=((None, "green"), (0.8, "orange"), (0.95, "red"))),
        timeseries("Utilization and defense levels",
                   Query("max(resilience_utilization_level)", "utilization level"),
                   Query("max(resilience_defense_level)", "defense level"),
                   mappings=UTILIZATION_LEVELS),
    ]
    if hs.monitoring_enabled("loki"):
        words = ' |~ "(?i)resilience|contingency|defense|fallback"'
        backend = '{service=~"backend|celery-worker|celery-beat"}'  # containers and units alike
        panels.append(logs("Resilience events in the logs",
                           *(source + words for source in (backend, app_log_files()))))
    return dashboard("rs-resilience", "Resilience Metrics", panels) if panels else None


DASHBOARDS = (application_overview, database_performance, system_resources, resilience_metrics)


def dashboards(hs: HostSettings) -> dict[str, dict]:
    """Every dashboard this host's Grafana gets, by uid (none without Prometheus)."""
    if not hs.monitoring_enabled("prometheus"):
        return {}
    return {d["uid"]: d for d in (build(hs) for build in DASHBOARDS) if d is not None}


# --- files ------------------------------------------------------------------------------------


def _dirs(hs: HostSettings) -> tuple[str, str]:
    """(provisioning dir, dashboards dir) on the host."""
    return (hs.layout.config_path(hs, "grafana", "provisioning", PROVISIONING_DIR),
            hs.layout.config_path(hs, "grafana", "dashboards", DASHBOARDS_DIR))


def owned_dirs(hs: HostSettings) -> dict[str, tuple]:
    """The dashboards directory holds only this stack's dashboards: one dropped (its panels'
    metrics switched off) is removed, and Grafana, rescanning it, deletes the dashboard."""
    return {_dirs(hs)[1]: ()}


def render(hs: HostSettings) -> list[RenderedFile]:
    # Grafana reads provisioning, its password and grafana.ini only at start.
    restart = (Restart(hs.layout.service("grafana", "grafana-server")),)
    provisioning, dashboards_dir = _dirs(hs)
    files = [
        RenderedFile(f"{provisioning}/datasources/residency-scheduler.yml",
                     template("grafana/datasources.yml.j2", hs, datasources=datasources(hs)),
                     "grafana", reactions=restart),
        RenderedFile(f"{provisioning}/dashboards/residency-scheduler.yml",
                     template("grafana/dashboards.yml.j2", hs, dashboards_dir=DASHBOARDS_DIR),
                     "grafana", reactions=restart),
        # Owned by the user Grafana runs as; the group likewise: root beside the image's uid,
        # the package's group natively.
        RenderedFile(secret_path(hs), hs.secrets.grafana_admin_password or "", "grafana",
                     mode="600", owner=hs.layout.file_owner(CONTAINER_UID, "grafana"),
                     group=hs.layout.file_owner("root", "grafana"), secret=True,
                     reactions=restart),
    ]
    # Grafana rescans the dashboards directory by itself: no restart for dashboard changes.
    files += [
        RenderedFile(f"{dashboards_dir}/{uid}.json",
                     json.dumps(model, indent=2, sort_keys=True) + "\n", "grafana")
        for uid, model in dashboards(hs).items()
    ]
    if not hs.layout.runs_in_containers:  # the image takes these as GF_* variables instead
        files.append(RenderedFile(
            f"{NATIVE_DIR}/grafana.ini",
            template("grafana/grafana.ini.j2", hs, settings=server_settings(hs),
                     password_file=secret_read_path(hs)),
            "grafana", mode="640", group="grafana", reactions=restart))
    return files


@deploy("Install Grafana")
def install(hs: HostSettings) -> None:
    """Natively: Grafana from Grafana Labs' apt repository (Debian has no package). Not run in
    the sandbox: that repository is not reachable offline.

    Example: ``grafana.install(hs)``
    """
    if not hs.layout.runs_in_containers:
        apply.install_grafana_packages("Install Grafana", ["grafana"])
