"""Operator tools on every host: ``/usr/local/bin/rs-status`` (status overview for either layout),
``/usr/local/bin/rs-logs`` (every service's logs, wherever the layout keeps them),
``/usr/local/bin/rs-service`` (stop, start, restart in order), ``/usr/local/bin/rs-diagnose``
(the facts ``rsdeploy diagnose`` judges: restarts, OOM kills, the database, Redis, the clock), on app hosts
``/usr/local/bin/rs-celery`` (the guide's Celery inspect and manual task triggers) and, where the
app writes log files (run natively, not in containers), logrotate for ``paths.log_dir``.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from pydantic import Field

from rsdeploy.roles import backend, backup, exporters, flower, frontend, log_shipper, nginx, postgres, redis, tls
from rsdeploy import lock
from rsdeploy.layout import Control, LogSource
from rsdeploy.release import version_file
from rsdeploy.render import RenderedFile, template
from rsdeploy.types import Section
from rsdeploy.units import unit_safe_path
from rsdeploy.validate import Verdict, check_script, run_tool

if TYPE_CHECKING:
    from pathlib import Path

    from rsdeploy.settings import HostSettings

STATUS_PATH = "/usr/local/bin/rs-status"
LOGS_PATH = "/usr/local/bin/rs-logs"
SERVICE_PATH = "/usr/local/bin/rs-service"
CELERY_PATH = "/usr/local/bin/rs-celery"
DIAGNOSE_PATH = "/usr/local/bin/rs-diagnose"
LOGROTATE_PATH = "/etc/logrotate.d/residency-scheduler"

#: Debian unit names of the distribution services, by role / monitoring component.
ROLE_UNITS = {"db": "postgresql.service", "redis": "redis-server.service", "web": "nginx.service"}
MONITORING_UNITS = {"prometheus": "prometheus.service",
                    "alertmanager": "prometheus-alertmanager.service",
                    "loki": "loki.service", "grafana": "grafana-server.service"}

# Probes run inside the app containers (their images have python / node, not curl).
BACKEND_PROBE = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                 "'http://127.0.0.1:{port}' + sys.argv[1], timeout=10).read().decode())")
FRONTEND_PROBE = ("require('http').get('http://127.0.0.1:{port}/', r => process.exit("
                  "r.statusCode === 200 ? 0 : 1)).on('error', () => process.exit(1))")
PM2_SUMMARY = ("let d = ''; process.stdin.on('data', c => d += c).on('end', () => {"
               " for (const p of JSON.parse(d)) console.log(p.name, p.pm2_env.status,"
               " p.pm2_env.restart_time, p.monit.cpu, p.monit.memory, p.pm2_env.pm_uptime); })")
# `docker compose ps` and `docker stats` formats: Go templates, hence kept out of the Jinja
# template ("|" never occurs in their fields).
PS_FORMAT = "{{.Service}}|{{.Name}}|{{.State}}|{{.Health}}|{{.RunningFor}}"
STATS_FORMAT = "{{.Name}}|{{.CPUPerc}}|{{.MemUsage}}"
STATE_FORMAT = "{{.State}}|{{.Health}}"
INSPECT_FORMAT = "{{.RestartCount}}|{{.State.OOMKilled}}"
#: Services rs-service starts first and waits for: the app needs them answering.
DATA_STORES = ("db", "redis")
#: Seconds rs-celery gives the workers to answer an inspect question.
INSPECT_TIMEOUT = 10


class Settings(Section):
    log_rotate_days: int = Field(default=14, ge=1, le=3650)  # days of paths.log_dir logs logrotate keeps
    certificate_warn_days: int = Field(default=21, ge=1, le=365)  # warn below (certbot renews at 30)
    backup_max_age_hours: int = Field(default=36, ge=1, le=8760)  # status warns, BackupStale fires, past this
    stop_timeout: int = Field(default=30, ge=1, le=3600)  # seconds rs-service gives a container to stop (the guide's 30)
    start_timeout: int = Field(default=180, ge=10, le=3600)  # seconds rs-service waits for a started service to run
    slow_query_seconds: int = Field(default=30, ge=1, le=86400)  # diagnose reports queries running longer


def applies(hs: HostSettings) -> bool:
    return True


def systemd_units(hs: HostSettings) -> list[str]:
    """The units of this host that must be active when it runs the stack natively (what the
    systemd layout answers for ``hs.layout.services(hs)``)."""
    units = [unit for role, unit in ROLE_UNITS.items() if hs.has_role(role)]
    if hs.has_role("app"):  # the app's own units run per release slot (see release_slots)
        units.append(frontend.PM2_UNIT)
    if flower.applies(hs):
        units.append(flower.UNIT)
    if hs.has_role("monitoring"):
        units += [unit for name, unit in MONITORING_UNITS.items()
                  if getattr(hs.stack, name).enabled]
    units += exporters.native_units(hs)
    if log_shipper.applies(hs):
        units.append(f"{hs.stack.log_shipper.kind}.service")
    if _backup_applies(hs):
        units.append("rs-backup.timer")
    return units


def release_slots(hs: HostSettings) -> list[dict]:
    """Each release slot with the URLs its API and frontend answer on (natively)."""
    backend_host = backend.listen_address(hs, "web", "monitoring")
    frontend_host = backend.listen_address(hs, "web")
    backend_ports = backend.slot_ports(hs, hs.stack.backend.port)
    frontend_ports = backend.slot_ports(hs, hs.stack.frontend.port)
    return [{"name": slot, "backend_url": f"http://{backend_host}:{backend_ports[slot]}",
             "frontend_url": f"http://{frontend_host}:{frontend_ports[slot]}",
             "units": [f"{u.name.split('@')[0]}@{slot}.service" for u in backend.app_units(hs)]}
            for slot in hs.layout.release_slots]


def native_services(hs: HostSettings) -> dict[str, str]:
    """Natively, each service's unit by its Compose name, in the order they start (data stores,
    the app, monitoring, the web server); the app's own by their unit template
    (``residency-backend@.service``: one instance per release slot); the frontend by PM2's unit.
    """
    services = {}
    if hs.has_role("db"):
        services["db"] = postgres.native_unit(hs)
    if hs.has_role("redis"):
        services["redis"] = ROLE_UNITS["redis"]
    if hs.has_role("app"):
        for unit in backend.app_units(hs):
            services[unit.name.split("@")[0].removeprefix("residency-")] = unit.name
        services["frontend"] = frontend.PM2_UNIT
    if flower.applies(hs):
        services["flower"] = flower.UNIT
    if hs.has_role("monitoring"):
        services.update({name: unit for name, unit in MONITORING_UNITS.items()
                         if getattr(hs.stack, name).enabled})
    services.update({name.replace("_", "-"): f"{package}.service"
                     for name, package in exporters.PACKAGES.items()
                     if exporters.exporter_applies(hs, name)})
    if log_shipper.applies(hs):
        services[log_shipper.service_name(hs)] = f"{log_shipper.service_name(hs)}.service"
    if hs.has_role("web"):
        services["nginx"] = ROLE_UNITS["web"]
    return services


def native_log_sources(hs: HostSettings) -> dict[str, list[LogSource]]:
    """Natively, where each service logs (what the systemd layout answers for
    ``hs.layout.log_sources(hs)``): the journal of its unit (every release slot's instance of
    the app's); besides, PostgreSQL, Redis and nginx write Debian's files, and PM2 the
    frontend's output to ``paths.log_dir``."""
    files = {"db": [postgres.log_file(hs)], "redis": [redis.LOG_FILE],
             "nginx": [nginx.ERROR_LOG, nginx.ACCESS_LOG], "frontend": [frontend.log_files(hs)]}
    return {service: [LogSource("journal", unit.replace("@.", "@*."))]
            + [LogSource("file", path) for path in files.get(service, [])]
            for service, unit in native_services(hs).items()}


def native_controls(hs: HostSettings) -> dict[str, Control]:
    """Natively, how each service is stopped and started (what the systemd layout answers for
    ``hs.layout.controls(hs)``): its unit; the app's, the serving slot's instance (the enabled
    one); the frontend, the serving slot's PM2 app."""
    def control(service: str, unit: str) -> Control:
        if service == "frontend":
            return Control("pm2", frontend.APP_NAME)
        return Control("slots" if "@." in unit else "unit", unit)
    return {service: control(service, unit) for service, unit in native_services(hs).items()}


def _backup_applies(hs: HostSettings) -> bool:
    return backup.applies(hs)


def disk_dirs(hs: HostSettings) -> list[str]:
    """Directories whose size and free space rs-status shows."""
    dirs = {hs.stack.paths.data_dir}
    if _backup_applies(hs):
        dirs.add(hs.stack.backup.directory)
    if hs.layout.runs_in_containers:
        dirs.add("/var/lib/docker")  # images, volumes (the database) and container logs
    return sorted(dirs)


def status_script(hs: HostSettings) -> RenderedFile:
    """rs-status for this host's layout and roles: the layout's template, given the services to
    check and how to reach them (containers: Compose and in-container probes; native: systemd,
    PM2 and HTTP on the listen addresses). Each template reads its own of these values.
    """
    s = hs.stack
    content = template(
        f"status/rs-status.{hs.layout.name}.sh.j2", hs, services=hs.layout.services(hs),
        **hs.layout.script_context(hs),
        version_file=version_file(hs), has_app=hs.has_role("app"), has_web=hs.has_role("web"),
        has_db=_backup_applies(hs), disk_dirs=disk_dirs(hs),
        ps_format=PS_FORMAT, stats_format=STATS_FORMAT,
        lock_file=lock.paths(hs)[0], lock_info=lock.paths(hs)[1],
        certificate=tls.host_certificate_paths(hs)[0],
        backend_probe=BACKEND_PROBE.format(port=s.backend.port),
        frontend_probe=FRONTEND_PROBE.format(port=s.frontend.port),
        user=backend.APP_USER, pm2_home=frontend.pm2_home(hs),
        pm2=frontend.pm2_bin(hs), pm2_summary=PM2_SUMMARY,
        release_slots=release_slots(hs),
    )
    return RenderedFile(STATUS_PATH, content, "status", mode="755")


def logs_script(hs: HostSettings) -> RenderedFile:
    """rs-logs: every service's logs from where this host's layout keeps them (one template
    for both layouts: the sources say where)."""
    sources = [(service, source) for service, found in hs.layout.log_sources(hs).items()
               for source in found]
    content = template("status/rs-logs.sh.j2", hs, sources=sources, layout_name=hs.layout.name,
                       **hs.layout.script_context(hs))
    return RenderedFile(LOGS_PATH, content, "status", mode="755")


def service_script(hs: HostSettings) -> RenderedFile:
    """rs-service: stop, start or restart this host's services in order, gracefully (one
    template for both layouts: the controls say how)."""
    controls = _controls(hs)["controls"]
    serving = next((c.target for name, c in controls if name == "backend" and c.kind == "slots"), "")
    content = template("status/rs-service.sh.j2", hs, **_controls(hs),
                       serving_template=serving, state_format=STATE_FORMAT,
                       data_stores=DATA_STORES,
                       stop_timeout=hs.stack.status.stop_timeout,
                       start_timeout=hs.stack.status.start_timeout,
                       pm2_argv=shlex.split(frontend.pm2_command(hs)))
    return RenderedFile(SERVICE_PATH, content, "status", mode="755")


def _controls(hs: HostSettings) -> dict:
    """What the scripts sharing ``status/_controls.sh.j2`` need: how each service is
    controlled, in start order, and how to reach Compose and the release slots."""
    return dict(controls=list(hs.layout.controls(hs).items()), layout_name=hs.layout.name,
                release_slots=hs.layout.release_slots, **hs.layout.script_context(hs))


def diagnose_script(hs: HostSettings) -> RenderedFile:
    """rs-diagnose: the facts ``rsdeploy diagnose`` judges (one template for both layouts:
    the controls and the db and redis roles say how to reach each service)."""
    content = template("status/rs-diagnose.sh.j2", hs, **_controls(hs),
                       inspect_format=INSPECT_FORMAT,
                       slow_query_seconds=hs.stack.status.slow_query_seconds,
                       has_db=hs.has_role("db"), has_redis=hs.has_role("redis"),
                       psql_argv=postgres.admin_argv(hs, "psql", "--dbname", "postgres",
                                                     "--no-psqlrc", "--no-align", "--tuples-only",
                                                     "--quiet", "--field-separator", "\t"),
                       pg_isready_argv=postgres.admin_argv(hs, "pg_isready"),
                       redis_cli_argv=redis.cli_argv(hs))
    return RenderedFile(DIAGNOSE_PATH, content, "status", mode="755")


def celery_script(hs: HostSettings) -> RenderedFile:
    """rs-celery (app hosts): Celery's inspect and call in the worker's context (the layout's
    control of the worker says where: its container, or the serving slot's unit natively)."""
    release = backend.slot_dir(hs, "@SLOT@")
    content = template("status/rs-celery.sh.j2", hs, worker=hs.layout.controls(hs)["celery-worker"],
                       layout_name=hs.layout.name, celery_app=backend.CELERY_APP,
                       inspect_timeout=INSPECT_TIMEOUT, release_slots=hs.layout.release_slots,
                       run_properties=backend.run_properties(hs, release, "@SLOT@"),
                       **hs.layout.script_context(hs))
    return RenderedFile(CELERY_PATH, content, "status", mode="755")


def writes_log_files(hs: HostSettings) -> bool:
    """Whether the app writes log files to ``paths.log_dir`` here (natively run; containers
    log to Docker's json-file driver)."""
    return hs.has_role("app") and not hs.layout.runs_in_containers


def logrotate_file(hs: HostSettings) -> RenderedFile:
    content = template("logrotate/residency-scheduler.j2", hs, user=backend.APP_USER,
                       log_glob=f"{unit_safe_path(hs.stack.paths.log_dir)}/*.log")
    return RenderedFile(LOGROTATE_PATH, content, "status")


def render(hs: HostSettings) -> list[RenderedFile]:
    files = [status_script(hs), logs_script(hs), service_script(hs), diagnose_script(hs)]
    if hs.has_role("app"):
        files.append(celery_script(hs))
    if writes_log_files(hs):
        files.append(logrotate_file(hs))
    return files


def validate(tree: Path, hs: HostSettings) -> list[Verdict]:
    """bash -n / shellcheck on rs-status, rs-logs, rs-service, rs-diagnose and rs-celery;
    ``logrotate -d`` (dry run) on the logrotate file."""
    scripts = (STATUS_PATH, LOGS_PATH, SERVICE_PATH, DIAGNOSE_PATH) + ((CELERY_PATH,) if hs.has_role("app") else ())
    verdicts = [v for path in scripts for v in check_script(tree, path)]
    if writes_log_files(hs):
        local = str(tree / LOGROTATE_PATH.lstrip("/"))
        verdicts.append(run_tool(["logrotate", "-d", local], LOGROTATE_PATH, "logrotate -d"))
    return verdicts
