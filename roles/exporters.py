"""Metrics exporters: node-exporter and cAdvisor on every host, postgres-exporter beside the
database, redis-exporter beside Redis. Each can be switched off.

Docker layout: the Compose services take their flags and environment from the functions below;
this role renders only their secret files (``base/secrets/<name>``, mounted at /run/secrets).
Systemd layout: Debian's prometheus-node-exporter, prometheus-postgres-exporter and
prometheus-redis-exporter packages, configured through /etc/default/<package>.

node-exporter also serves the ``*.prom`` files in :func:`rsdeploy.release_metrics.metrics_dir`
(its textfile collector): the release each host runs, written there by the deploy.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from pydantic import model_validator
from pyinfra.api import deploy
from pyinfra.operations import files

from rsdeploy import apply
from rsdeploy.component_files import (
    MONITORING_SECRETS_DIR,
    MONITORING_USER,
    debian_default,
    secret_file,
    secret_read_path,
)
from rsdeploy.layout import Restart
from rsdeploy.release_metrics import metrics_dir
from rsdeploy.types import Image, Port, Resources, Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings, SecretRules

ROLE = "exporters"
POSTGRES_EXPORTER_UID = 65534  # quay.io/prometheuscommunity/postgres-exporter runs as nobody
REDIS_EXPORTER_UID = 59000  # oliver006/redis_exporter runs as 59000:59000
POSTGRES_PASSWORD_SECRET = "db_monitor_password"
REDIS_PASSWORD_SECRET = "redis_exporter_passwords"  # JSON map {redis URI: password}
#: Units node-exporter's systemd collector reports (systemd layout): the stack's, not all ~200.
SYSTEMD_UNITS = "(residency-.+|postgresql.*|redis-server|nginx|prometheus.*)[.]service"
#: The role an exporter runs beside (the others run on every host).
BESIDE = {"postgres_exporter": "db", "redis_exporter": "redis"}
#: Exporters only a layout running containers has: cAdvisor reports the containers.
CONTAINERS_ONLY = ("cadvisor",)
#: Where the node-exporter container sees the host's root file system (``/:/host:ro,rslave`` in
#: compose.monitoring.yml).
HOST_ROOT = "/host"


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

    @model_validator(mode="before")
    @classmethod
    def _defaults_under_overrides(cls, data):
        """A partial exporter section keeps the other defaults: ``cadvisor: {enabled: false}``
        needs no image or port."""
        if not isinstance(data, dict):
            return data
        return {name: {**cls.model_fields[name].default.model_dump(), **value}
                if name in cls.model_fields and isinstance(value, dict) else value
                for name, value in data.items()}


def applies(hs: HostSettings) -> bool:
    return hs.monitoring_enabled("prometheus")


def exporter_applies(hs: HostSettings, name: str) -> bool:
    """Whether exporter ``name`` runs on this host: Prometheus scrapes it and it is enabled;
    node-exporter on every host, cAdvisor on every host whose components run in containers,
    postgres-exporter beside the database, redis-exporter beside Redis.

    Example: ``exporter_applies(hs, "postgres_exporter")`` -> ``True`` on the db host
    """
    beside = BESIDE.get(name)
    return (hs.monitoring_enabled("prometheus")
            and getattr(hs.stack.exporters, name).enabled
            and (beside is None or hs.has_role(beside))
            and (name not in CONTAINERS_ONLY or hs.layout.runs_in_containers))


def ports(hs: HostSettings) -> dict[str, int]:
    """The port of each exporter that runs on this host, by settings key.

    Example: ``ports(hs)`` -> ``{"exporters.node_exporter.port": 9100, ...}``
    """
    return {f"exporters.{name}.port": getattr(hs.stack.exporters, name).port
            for name in Settings.model_fields if exporter_applies(hs, name)}


def systemd_collector(hs: HostSettings) -> bool:
    """Whether node-exporter reports the stack's systemd units (:data:`SYSTEMD_UNITS`): only when
    it runs as the host's own package; a container has no access to the host's systemd.
    """
    return exporter_applies(hs, "node_exporter") and not hs.layout.runs_in_containers


def check(hs: HostSettings, rules: SecretRules) -> None:
    """postgres-exporter logs in with its own password (also the database's monitor role)."""
    if exporter_applies(hs, "postgres_exporter"):
        rules.require(POSTGRES_PASSWORD_SECRET, "postgres-exporter", 12)


def node_exporter_listen(hs: HostSettings) -> str:
    """``host:port`` node-exporter listens on; it runs in the host's network namespace.

    Alone on one host it listens only where local Prometheus reaches the host (the Compose
    network's gateway in the docker layout, loopback in the systemd layout); in a multi-host stack
    on the host's private address, so the monitoring host can scrape it.
    Example: ``node_exporter_listen(hs)`` -> ``"172.30.0.1:9100"``
    """
    port = hs.stack.exporters.node_exporter.port
    if not hs.has_role("monitoring"):
        return f"{hs.address}:{port}"
    return f"{hs.layout.host_address(hs)}:{port}"


def exporter_listen(hs: HostSettings, exporter: str) -> str:
    """``host:port`` a native (systemd layout) exporter listens on: loopback beside Prometheus,
    else the host's private address. Example: ``exporter_listen(hs, "redis_exporter")``
    """
    port = getattr(hs.stack.exporters, exporter).port
    return f"{hs.layout.listen_address(hs, not hs.has_role('monitoring'))}:{port}"


def textfile_dir(hs: HostSettings) -> str:
    """The textfile collector's directory as node-exporter sees it: the host's
    :func:`~rsdeploy.release_metrics.metrics_dir`, in a container under the host's root
    (:data:`HOST_ROOT`, already mounted read-only: no mount of its own, and a directory made
    after the container started is seen as well).

    Example: ``textfile_dir(hs)`` -> ``"/host/var/lib/residency-scheduler/metrics"`` (docker)
    """
    return hs.layout.data_dir(f"{HOST_ROOT}{metrics_dir(hs)}", metrics_dir(hs))


def node_exporter_flags(hs: HostSettings) -> list[str]:
    """node-exporter's flags: the Compose ``command`` (docker) or Debian's ARGS (systemd).

    Docker: the host's root is mounted at /host (``/:/host:ro,rslave``, pid: host). Systemd: the
    systemd collector feeds the Celery-unit and failed-unit alerts. Both: the textfile collector
    serves the release metrics (:func:`textfile_dir`).
    Example: ``node_exporter_flags(hs)`` -> ``["--web.listen-address=172.30.0.1:9100", ...]``
    """
    flags = [f"--web.listen-address={node_exporter_listen(hs)}",
             f"--collector.textfile.directory={textfile_dir(hs)}"]
    if hs.layout.runs_in_containers:  # a container path: the image sees the host's root there
        return [*flags, f"--path.rootfs={HOST_ROOT}"]
    return [*flags, "--collector.systemd", f"--collector.systemd.unit-include={SYSTEMD_UNITS}"]


def _secret_read_path(hs: HostSettings, name: str) -> str:
    return secret_read_path(hs, name, MONITORING_SECRETS_DIR)


def postgres_exporter_environment(hs: HostSettings) -> dict[str, str]:
    """postgres-exporter's environment on the db host (Compose ``environment`` or /etc/default).

    The password stays in a file (DATA_SOURCE_PASS_FILE), never in the environment.
    Example: ``postgres_exporter_environment(hs)["DATA_SOURCE_URI"]`` -> ``"db:5432/..."``
    """
    pg = hs.stack.postgres
    return {
        "DATA_SOURCE_URI": f"{hs.endpoint('db', 'db')}:{pg.port}/{pg.database}?sslmode=disable",
        "DATA_SOURCE_USER": pg.monitor_user,
        "DATA_SOURCE_PASS_FILE": _secret_read_path(hs, POSTGRES_PASSWORD_SECRET),
    }


def redis_exporter_address(hs: HostSettings) -> str:
    """The Redis URI redis-exporter scrapes; also the key of its password map."""
    return f"redis://{hs.endpoint('redis', 'redis')}:{hs.stack.redis.port}"


def redis_exporter_environment(hs: HostSettings) -> dict[str, str]:
    """redis-exporter's environment on the redis host (docker layout: Compose ``environment``)."""
    return {
        "REDIS_ADDR": redis_exporter_address(hs),
        "REDIS_PASSWORD_FILE": _secret_read_path(hs, REDIS_PASSWORD_SECRET),
    }


def _service_name(hs: HostSettings, compose_service: str) -> str:
    """The Compose service (docker) or Debian unit (systemd) of an exporter."""
    return hs.layout.service(compose_service, f"prometheus-{compose_service}")


def _secret_file(hs: HostSettings, name: str, content: str, image_uid: int,
                 service: str) -> RenderedFile:
    return secret_file(hs, name, content, role=ROLE, image_uid=image_uid,
                       native_user=MONITORING_USER, native_dir=MONITORING_SECRETS_DIR,
                       reactions=(Restart(service),))


def _postgres_files(hs: HostSettings) -> list[RenderedFile]:
    service = _service_name(hs, "postgres-exporter")
    files = [_secret_file(hs, POSTGRES_PASSWORD_SECRET, hs.secrets.db_monitor_password,
                          POSTGRES_EXPORTER_UID, service)]
    if not hs.layout.runs_in_containers:  # the package reads /etc/default, the image Compose's
        variables = {**postgres_exporter_environment(hs),
                     "ARGS": f"--web.listen-address={exporter_listen(hs, 'postgres_exporter')}"}
        files.append(debian_default(service, variables, hs=hs, role=ROLE,
                                    comment="postgres-exporter connection and flags"))
    return files


def _redis_files(hs: HostSettings) -> list[RenderedFile]:
    service = _service_name(hs, "redis-exporter")
    passwords = json.dumps({redis_exporter_address(hs): hs.secrets.redis_password})
    files = [_secret_file(hs, REDIS_PASSWORD_SECRET, passwords + "\n", REDIS_EXPORTER_UID,
                          service)]
    if not hs.layout.runs_in_containers:  # the package reads /etc/default, the image Compose's
        # Debian's 1.45 reads flags only from ARGS; the password stays in the file.
        environment = redis_exporter_environment(hs)
        args = [f"-web.listen-address={exporter_listen(hs, 'redis_exporter')}",
                f"-redis.addr={environment['REDIS_ADDR']}",
                f"-redis.password-file={environment['REDIS_PASSWORD_FILE']}"]
        files.append(debian_default(service, {"ARGS": " ".join(args)}, hs=hs, role=ROLE,
                                    comment="redis-exporter flags"))
    return files


def render(hs: HostSettings) -> list[RenderedFile]:
    files: list[RenderedFile] = []
    # The package reads /etc/default; the image takes the same flags as Compose's command.
    if not hs.layout.runs_in_containers and exporter_applies(hs, "node_exporter"):
        files.append(debian_default("prometheus-node-exporter",
                                    {"ARGS": " ".join(node_exporter_flags(hs))}, hs=hs,
                                    role=ROLE, comment="node-exporter flags"))
    if exporter_applies(hs, "postgres_exporter"):
        files += _postgres_files(hs)
    if exporter_applies(hs, "redis_exporter"):
        files += _redis_files(hs)
    return files


# --- deploy -----------------------------------------------------------------------------------


@deploy("Create node-exporter's textfile directory")
def create_textfile_dir(hs: HostSettings) -> None:
    """The host directory node-exporter reads ``*.prom`` files from
    (:func:`~rsdeploy.release_metrics.metrics_dir`), made before node-exporter starts: the
    deploy writes the release metrics there and never renders nor prunes it. Readable by
    node-exporter's user (nobody in the image, prometheus natively), written only by root.

    Example: ``if exporters.exporter_applies(hs, "node_exporter"): exporters.create_textfile_dir(hs)``
    """
    files.directory(name=f"Create {metrics_dir(hs)} (node-exporter's textfile metrics)",
                    path=metrics_dir(hs), mode="755", user="root", group="root")


#: The Debian package of each exporter run natively (cAdvisor has none: containers only).
PACKAGES = {"node_exporter": "prometheus-node-exporter",
            "postgres_exporter": "prometheus-postgres-exporter",
            "redis_exporter": "prometheus-redis-exporter"}


def native_units(hs: HostSettings) -> list[str]:
    """The units of the exporters that run natively on this host (none in containers)."""
    if hs.layout.runs_in_containers:
        return []
    return [f"{PACKAGES[name]}.service" for name in PACKAGES if exporter_applies(hs, name)]


@deploy("Install the exporters")
def install(hs: HostSettings) -> None:
    """Natively: Debian's package of each exporter this host runs.

    Example: ``exporters.install(hs)``
    """
    packages = [f"{unit.removesuffix('.service')}" for unit in native_units(hs)]
    if packages:
        apply.install_packages(f"Install {', '.join(packages)}", packages,
                               extra_install_args="-o Dpkg::Options::=--force-confold")
