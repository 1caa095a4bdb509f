"""PostgreSQL 15 with pgvector: the application's database (role ``db``).

Docker layout: the ``db`` Compose service (see roles/compose.py). Its init script
``base/config/postgres/initdb/10-roles.sql`` (mounted at /docker-entrypoint-initdb.d) creates the
app role, the monitor role and the pgvector extension; the passwords come from secret files
``base/secrets/db_password`` and ``base/secrets/postgres_monitor_password`` (uid 999, the
image's postgres user). Systemd layout: the distribution's postgresql-15 with a ``conf.d`` file,
``pg_hba.conf`` and the same SQL at ``config_dir/postgres/roles.sql`` for the deploy to run.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from rsdeploy.types import Image, Name, Port, Resources, Section, Size

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings

ROLE = "postgres"
#: The postgres user of the upstream (Debian-based) postgres/pgvector images.
IMAGE_UID = "999"
APP_PASSWORD_SECRET = "db_password"
#: The monitor password as the server reads it; postgres-exporter reads its own copy
#: (roles.exporters, ``db_monitor_password``, another uid).
MONITOR_PASSWORD_SECRET = "postgres_monitor_password"
CONTAINER_SECRETS_DIR = "/run/secrets"
#: The roles script inside the db container; the deploy re-runs it when it or a password changes.
INITDB_ROLES_SQL = "/docker-entrypoint-initdb.d/10-roles.sql"


class Settings(Section):
    image: Image = "pgvector/pgvector:pg15"  # docker layout: PostgreSQL 15 image with pgvector
    version: int = 15  # major version (systemd layout package postgresql-<version>)
    port: Port = 5432  # port PostgreSQL listens on
    database: Name = "residency_scheduler"  # the application's database
    user: Name = "scheduler"  # the application's role (not a superuser)
    monitor_user: Name = "rs_monitor"  # read-only role for postgres-exporter (GRANT pg_monitor)
    max_connections: int = 100  # server max_connections; alert fires at 80 % of it
    shared_buffers: Size = "256MB"  # PostgreSQL shared_buffers
    resources: Resources = Resources(memory="1g", cpus=1.0)  # limits for the db service


def applies(hs: HostSettings) -> bool:
    return hs.has_role("db")


def pg_str(value) -> str:
    """A single-quoted string in postgresql.conf. Example: ``pg_str("a'b")`` -> ``"'a''b'"``"""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def monitor_role(hs: HostSettings) -> bool:
    """Whether the monitor role exists: postgres-exporter runs beside this database."""
    from roles.compose import exporter_applies

    return exporter_applies(hs, "postgres_exporter")


def hba_address(address: str) -> str:
    """A pg_hba ADDRESS for one host: an IP as a single-host CIDR, a host name as it is.

    Example: ``hba_address("10.0.0.22")`` -> ``"10.0.0.22/32"``
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    return f"{ip}/{ip.max_prefixlen}"


def app_client_addresses(hs: HostSettings) -> list[str]:
    """pg_hba addresses of the app host when it is another host (else loopback covers it)."""
    app = hs.topology.one("app")
    return [] if app.name == hs.name else [hba_address(app.address)]


def listen_addresses(hs: HostSettings) -> str:
    """listen_addresses: loopback, plus the private address when the app runs elsewhere."""
    return "localhost" if not app_client_addresses(hs) else f"localhost,{hs.address}"


def secrets_dir(hs: HostSettings) -> str:
    """Where the server's secret files live on the host."""
    if hs.stack.layout == "docker":
        return f"{hs.stack.paths.base_dir}/secrets"
    return f"{hs.stack.paths.config_dir}/secrets"


def _secret_files(hs: HostSettings, owner: str, readers: tuple[str, ...]) -> list[RenderedFile]:
    from rsdeploy.render import RenderedFile

    wanted = {APP_PASSWORD_SECRET: hs.secrets.db_password}
    if monitor_role(hs):
        wanted[MONITOR_PASSWORD_SECRET] = hs.secrets.db_monitor_password
    return [RenderedFile(f"{secrets_dir(hs)}/{name}", value, ROLE, mode="600", owner=owner,
                         group=owner, secret=True, restarts=readers)
            for name, value in wanted.items()]


def roles_sql(hs: HostSettings) -> str:
    """The idempotent SQL that creates the database, roles and pgvector (both layouts)."""
    from rsdeploy.render import template

    docker = hs.stack.layout == "docker"
    read_dir = CONTAINER_SECRETS_DIR if docker else secrets_dir(hs)
    return template(
        "postgres/roles.sql.j2", hs, pg=hs.stack.postgres, docker=docker, monitor=monitor_role(hs),
        app_password_file=f"{read_dir}/{APP_PASSWORD_SECRET}",
        monitor_password_file=f"{read_dir}/{MONITOR_PASSWORD_SECRET}",
    )


def _docker_files(hs: HostSettings) -> list[RenderedFile]:
    from rsdeploy.render import RenderedFile

    # Init scripts run once, on an empty data volume; the deploy re-runs the same file with
    # `docker compose exec db psql -U postgres -f /docker-entrypoint-initdb.d/10-roles.sql`.
    init = RenderedFile(f"{hs.stack.paths.base_dir}/config/postgres/initdb/10-roles.sql",
                        roles_sql(hs), ROLE, restarts=("db",))
    return [init, *_secret_files(hs, IMAGE_UID, ("db",))]


def _systemd_files(hs: HostSettings) -> list[RenderedFile]:
    from rsdeploy.render import RenderedFile, template

    pg = hs.stack.postgres
    etc = f"/etc/postgresql/{pg.version}/main"
    unit = (f"postgresql@{pg.version}-main.service",)
    conf = template("postgres/residency-scheduler.conf.j2", hs, pg=pg, pg_str=pg_str,
                    listen_addresses=listen_addresses(hs))
    hba = template("postgres/pg_hba.conf.j2", hs, pg=pg, app_addresses=app_client_addresses(hs))
    return [
        RenderedFile(f"{etc}/conf.d/residency-scheduler.conf", conf, ROLE, owner="postgres",
                     group="postgres", restarts=unit),
        RenderedFile(f"{etc}/pg_hba.conf", hba, ROLE, mode="640", owner="postgres",
                     group="postgres", restarts=unit),
        RenderedFile(f"{hs.stack.paths.config_dir}/postgres/roles.sql", roles_sql(hs), ROLE,
                     owner="postgres", group="postgres"),
        *_secret_files(hs, "postgres", ()),
    ]


def render(hs: HostSettings) -> list[RenderedFile]:
    return _docker_files(hs) if hs.stack.layout == "docker" else _systemd_files(hs)
