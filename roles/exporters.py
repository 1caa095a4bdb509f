"""Metrics exporters: node-exporter and cAdvisor on every host, postgres-exporter beside the
database, redis-exporter beside Redis. Each can be switched off.

Docker layout: the Compose services take their flags and environment from the functions below;
this role renders only their secret files (``base/secrets/<name>``, mounted at /run/secrets).
Systemd layout: Debian's prometheus-node-exporter, prometheus-postgres-exporter and
prometheus-redis-exporter packages, configured through /etc/default/<package>.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rsdeploy.types import Image, Port, Resources, Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings

ROLE = "exporters"
POSTGRES_EXPORTER_UID = 65534  # quay.io/prometheuscommunity/postgres-exporter runs as nobody
REDIS_EXPORTER_UID = 59000  # oliver006/redis_exporter runs as 59000:59000
POSTGRES_PASSWORD_SECRET = "db_monitor_password"
REDIS_PASSWORD_SECRET = "redis_exporter_passwords"  # JSON map {redis URI: password}
#: Units node-exporter's systemd collector reports (systemd layout): the stack's, not all ~200.
SYSTEMD_UNITS = "(residency-.+|postgresql.*|redis-server|nginx|prometheus.*)[.]service"


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


def exporter_listen(hs: HostSettings, exporter: str) -> str:
    """``host:port`` a native (systemd layout) exporter listens on: loopback beside Prometheus,
    else the host's private address. Example: ``exporter_listen(hs, "redis_exporter")``
    """
    port = getattr(hs.stack.exporters, exporter).port
    return f"{'127.0.0.1' if hs.has_role('monitoring') else hs.address}:{port}"


def node_exporter_flags(hs: HostSettings) -> list[str]:
    """node-exporter's flags: the Compose ``command`` (docker) or Debian's ARGS (systemd).

    Docker: the host's root is mounted at /host (``/:/host:ro,rslave``, pid: host). Systemd: the
    systemd collector feeds the Celery-unit and failed-unit alerts.
    Example: ``node_exporter_flags(hs)`` -> ``["--web.listen-address=172.30.0.1:9100", ...]``
    """
    flags = [f"--web.listen-address={node_exporter_listen(hs)}"]
    if hs.stack.layout == "docker":
        return [*flags, "--path.rootfs=/host"]
    return [*flags, "--collector.systemd", f"--collector.systemd.unit-include={SYSTEMD_UNITS}"]


def postgres_exporter_environment(hs: HostSettings) -> dict[str, str]:
    """postgres-exporter's environment on the db host (Compose ``environment`` or /etc/default).

    The password stays in a file (DATA_SOURCE_PASS_FILE), never in the environment.
    Example: ``postgres_exporter_environment(hs)["DATA_SOURCE_URI"]`` -> ``"db:5432/..."``
    """
    from roles.prometheus import secret_read_path

    pg = hs.stack.postgres
    return {
        "DATA_SOURCE_URI": f"{hs.endpoint('db')}:{pg.port}/{pg.database}?sslmode=disable",
        "DATA_SOURCE_USER": pg.monitor_user,
        "DATA_SOURCE_PASS_FILE": secret_read_path(hs, POSTGRES_PASSWORD_SECRET),
    }


def redis_exporter_address(hs: HostSettings) -> str:
    """The Redis URI redis-exporter scrapes; also the key of its password map."""
    return f"redis://{hs.endpoint('redis')}:{hs.stack.redis.port}"


def redis_exporter_environment(hs: HostSettings) -> dict[str, str]:
    """redis-exporter's environment on the redis host (docker layout: Compose ``environment``)."""
    from roles.prometheus import secret_read_path

    return {
        "REDIS_ADDR": redis_exporter_address(hs),
        "REDIS_PASSWORD_FILE": secret_read_path(hs, REDIS_PASSWORD_SECRET),
    }


def applies(hs: HostSettings) -> bool:
    return hs.monitoring_enabled("prometheus")


def _service_name(hs: HostSettings, compose_service: str) -> str:
    """The Compose service (docker) or Debian unit (systemd) of an exporter."""
    return compose_service if hs.stack.layout == "docker" else f"prometheus-{compose_service}"


def _postgres_files(hs: HostSettings) -> list[RenderedFile]:
    from roles.prometheus import debian_default, secret_file

    unit = _service_name(hs, "postgres-exporter")
    files = [secret_file(hs, POSTGRES_PASSWORD_SECRET, hs.secrets.db_monitor_password, role=ROLE,
                         image_uid=POSTGRES_EXPORTER_UID, restarts=(unit,))]
    if hs.stack.layout == "systemd":
        variables = {**postgres_exporter_environment(hs),
                     "ARGS": f"--web.listen-address={exporter_listen(hs, 'postgres_exporter')}"}
        files.append(debian_default(unit, variables, hs=hs, role=ROLE,
                                    comment="postgres-exporter connection and flags"))
    return files


def _redis_files(hs: HostSettings) -> list[RenderedFile]:
    from roles.prometheus import debian_default, secret_file

    unit = _service_name(hs, "redis-exporter")
    passwords = json.dumps({redis_exporter_address(hs): hs.secrets.redis_password})
    files = [secret_file(hs, REDIS_PASSWORD_SECRET, passwords + "\n", role=ROLE,
                         image_uid=REDIS_EXPORTER_UID, restarts=(unit,))]
    if hs.stack.layout == "systemd":
        # Debian's 1.45 reads flags only from ARGS; the password stays in the file.
        environment = redis_exporter_environment(hs)
        args = [f"-web.listen-address={exporter_listen(hs, 'redis_exporter')}",
                f"-redis.addr={environment['REDIS_ADDR']}",
                f"-redis.password-file={environment['REDIS_PASSWORD_FILE']}"]
        files.append(debian_default(unit, {"ARGS": " ".join(args)}, hs=hs, role=ROLE,
                                    comment="redis-exporter flags"))
    return files


def render(hs: HostSettings) -> list[RenderedFile]:
    from roles.prometheus import debian_default

    exporters = hs.stack.exporters
    files: list[RenderedFile] = []
    if hs.stack.layout == "systemd" and exporters.node_exporter.enabled:
        files.append(debian_default("prometheus-node-exporter",
                                    {"ARGS": " ".join(node_exporter_flags(hs))}, hs=hs,
                                    role=ROLE, comment="node-exporter flags"))
    if hs.has_role("db") and exporters.postgres_exporter.enabled:
        files += _postgres_files(hs)
    if hs.has_role("redis") and exporters.redis_exporter.enabled:
        files += _redis_files(hs)
    return files
