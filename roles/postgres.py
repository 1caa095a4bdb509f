"""PostgreSQL 15 with pgvector: the application's database (role ``db``).

Docker layout: the ``db`` Compose service (the stack's Compose project). Its init script
``base/config/postgres/initdb/10-roles.sql`` (mounted at /docker-entrypoint-initdb.d) creates the
app role, the monitor role and the pgvector extension; the passwords come from secret files
``base/secrets/db_password`` and ``base/secrets/postgres_monitor_password`` (uid 999, the
image's postgres user). Systemd layout: the distribution's postgresql-15 with a ``conf.d`` file,
``pg_hba.conf`` and the same SQL at ``config_dir/postgres/roles.sql`` for the deploy to run.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from pydantic import Field

from roles.exporters import exporter_applies
from rsdeploy.component_files import secret_file
from rsdeploy.layout import Exec, Restart
from rsdeploy.render import RenderedFile, template
from rsdeploy.types import Image, Name, Port, Resources, Section, Size

if TYPE_CHECKING:
    from rsdeploy.layout import Reaction
    from rsdeploy.settings import HostSettings

ROLE = "postgres"
#: The postgres user of the upstream (Debian-based) postgres/pgvector images.
IMAGE_UID = "999"
APP_PASSWORD_SECRET = "db_password"
#: The monitor password as the server reads it; postgres-exporter reads its own copy
#: (roles.exporters, ``db_monitor_password``, another uid).
MONITOR_PASSWORD_SECRET = "postgres_monitor_password"
#: The roles script inside the db container; the deploy re-runs it when it or a password changes.
INITDB_ROLES_SQL = "/docker-entrypoint-initdb.d/10-roles.sql"


class Settings(Section):
    image: Image = "pgvector/pgvector:pg15"  # docker layout: PostgreSQL 15 image with pgvector
    # major version (systemd layout package postgresql-<version>)
    version: int = Field(default=15, ge=10, le=99)
    port: Port = 5432  # port PostgreSQL listens on
    database: Name = "residency_scheduler"  # the application's database
    user: Name = "scheduler"  # the application's role (not a superuser)
    monitor_user: Name = "rs_monitor"  # read-only role for postgres-exporter (GRANT pg_monitor)
    # server max_connections; alert fires at 80 % of it
    max_connections: int = Field(default=100, ge=1, le=262143)
    shared_buffers: Size = "256MB"  # PostgreSQL shared_buffers
    resources: Resources = Resources(memory="1g", cpus=1.0)  # limits for the db service


def applies(hs: HostSettings) -> bool:
    return hs.has_role("db")


def ports(hs: HostSettings) -> dict[str, int]:
    """The port PostgreSQL takes on this host, by settings key. Example: ``{"postgres.port": ...}``"""
    return {"postgres.port": hs.stack.postgres.port}


def pg_str(value) -> str:
    """A single-quoted string in postgresql.conf. Example: ``pg_str("a'b")`` -> ``"'a''b'"``"""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def monitor_role(hs: HostSettings) -> bool:
    """Whether the monitor role exists: postgres-exporter runs beside this database."""
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
    app = hs.peer("app")
    return [] if app.name == hs.name else [hba_address(app.address)]


def listen_addresses(hs: HostSettings) -> str:
    """listen_addresses: loopback, plus the private address when the app runs elsewhere."""
    return "localhost" if not app_client_addresses(hs) else f"localhost,{hs.address}"


def _service(hs: HostSettings) -> str:
    """The db Compose service, or the distribution's server unit."""
    return hs.layout.service("db", f"postgresql@{hs.stack.postgres.version}-main.service")


def _native_secrets_dir(hs: HostSettings) -> str:
    return f"{hs.stack.paths.config_dir}/secrets"


def secrets_dir(hs: HostSettings) -> str:
    """Where the server's secret files live on the host."""
    return hs.layout.secrets_dir(hs, _native_secrets_dir(hs))


def secret_read_dir(hs: HostSettings) -> str:
    """Where the server (and psql running the roles script) opens its secret files."""
    return hs.layout.secret_read_dir(hs, _native_secrets_dir(hs))


def _reapply_roles(hs: HostSettings) -> tuple[Reaction, ...]:
    """What a changed roles script or password asks for.

    The image runs its init scripts once, on an empty data volume: the deploy re-runs the same
    file in the db service. The distribution's server has no init scripts; its deploy runs
    roles.sql itself.
    """
    if not hs.layout.runs_in_containers:
        return ()
    return (Exec(_service(hs),
                 ("psql", "--quiet", "-U", "postgres", "-d", "postgres", "-f", INITDB_ROLES_SQL),
                 "Apply changed database roles and passwords"),)


def _secret_files(hs: HostSettings) -> list[RenderedFile]:
    wanted = {APP_PASSWORD_SECRET: hs.secrets.db_password}
    if monitor_role(hs):
        wanted[MONITOR_PASSWORD_SECRET] = hs.secrets.db_monitor_password
    return [secret_file(hs, name, value, role=ROLE, image_uid=IMAGE_UID, native_user="postgres",
                        native_dir=_native_secrets_dir(hs), reactions=_reapply_roles(hs))
            for name, value in wanted.items()]


def roles_sql(hs: HostSettings) -> str:
    """The idempotent SQL that creates the database, roles and pgvector (both layouts)."""
    read_dir = secret_read_dir(hs)
    return template(
        "postgres/roles.sql.j2", hs, pg=hs.stack.postgres,
        # The image's entrypoint runs it first and bootstraps the superuser with a password.
        docker=hs.layout.runs_in_containers, monitor=monitor_role(hs),
        app_password_file=f"{read_dir}/{APP_PASSWORD_SECRET}",
        monitor_password_file=f"{read_dir}/{MONITOR_PASSWORD_SECRET}",
    )


def _roles_script(hs: HostSettings) -> RenderedFile:
    """roles.sql: an init script of the image (mounted at /docker-entrypoint-initdb.d), or a
    file the deploy runs as the postgres user."""
    native = f"{hs.stack.paths.config_dir}/postgres/roles.sql"
    path = hs.layout.config_path(hs, "postgres", "initdb/10-roles.sql", native)
    owner = "root" if hs.layout.runs_in_containers else "postgres"
    return RenderedFile(path, roles_sql(hs), ROLE, owner=owner, group=owner,
                        reactions=_reapply_roles(hs))


def _package_files(hs: HostSettings) -> list[RenderedFile]:
    """The distribution's server reads conf.d and pg_hba.conf (the image: Compose's command)."""
    pg = hs.stack.postgres
    etc = f"/etc/postgresql/{pg.version}/main"
    reactions = (Restart(_service(hs)),)
    conf = template("postgres/residency-scheduler.conf.j2", hs, pg=pg, pg_str=pg_str,
                    listen_addresses=listen_addresses(hs))
    hba = template("postgres/pg_hba.conf.j2", hs, pg=pg, app_addresses=app_client_addresses(hs))
    return [
        RenderedFile(f"{etc}/conf.d/residency-scheduler.conf", conf, ROLE, owner="postgres",
                     group="postgres", reactions=reactions),
        RenderedFile(f"{etc}/pg_hba.conf", hba, ROLE, mode="640", owner="postgres",
                     group="postgres", reactions=reactions),
    ]


def render(hs: HostSettings) -> list[RenderedFile]:
    files = [] if hs.layout.runs_in_containers else _package_files(hs)
    return [*files, _roles_script(hs), *_secret_files(hs)]
