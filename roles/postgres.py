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
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import server

from rsdeploy.roles import internal_tls
from rsdeploy.roles.exporters import exporter_applies
from rsdeploy import apply
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
#: The server's TLS key and certificate for clients on other hosts (roles.internal_tls).
TLS_KEY_SECRET, TLS_CERT_SECRET = "db_tls_key", "db_tls_cert"
#: pg_hba.conf in the db container (``-c hba_file``): the image keeps its own in the data volume.
CONTAINER_HBA = "/etc/postgresql/pg_hba.conf"
#: pgvector for the distribution's server: Debian 12 packages none for PostgreSQL 15, so its
#: source tarball from Debian's archive is built on the host (as the sandbox's image does).
PGVECTOR_VERSION = "0.8.0"
PGVECTOR_URL = f"http://deb.debian.org/debian/pool/main/p/pgvector/pgvector_{PGVECTOR_VERSION}.orig.tar.gz"
PGVECTOR_SHA256 = "867a2c328d4928a5a9d6f052cd3bc78c7d60228a9b914ad32aa3db88e9de27b0"


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
    """pg_hba addresses of the app hosts other than this one (loopback covers this one)."""
    return [hba_address(app.address) for app in hs.peers("app") if app.name != hs.name]


def listen_addresses(hs: HostSettings) -> str:
    """listen_addresses: loopback, plus the private address when the app runs elsewhere."""
    return "localhost" if not app_client_addresses(hs) else f"localhost,{hs.address}"


def log_file(hs: HostSettings) -> str:
    """Where Debian's cluster of this version logs (natively; the image logs to its output)."""
    return f"/var/log/postgresql/postgresql-{hs.stack.postgres.version}-main.log"


def native_unit(hs: HostSettings) -> str:
    """The distribution's unit of the cluster (``postgresql.service`` only starts it)."""
    return f"postgresql@{hs.stack.postgres.version}-main.service"


def _service(hs: HostSettings) -> str:
    """The db Compose service, or the distribution's server unit."""
    return hs.layout.service("db", native_unit(hs))


def admin_argv(hs: HostSettings, *argv: str) -> list[str]:
    """``argv`` (psql, pg_isready ...) as the server's superuser over its local socket, where no
    password is needed: in the db container, or natively as the postgres user (peer).

    Example: ``admin_argv(hs, "pg_isready", "--quiet")``
    """
    command = hs.layout.exec_argv(hs, "db", [argv[0], "--username", "postgres", *argv[1:]])
    return command if hs.layout.runs_in_containers else ["runuser", "-u", "postgres", "--", *command]


def _native_secrets_dir(hs: HostSettings) -> str:
    return f"{hs.stack.paths.config_dir}/secrets"


def secrets_dir(hs: HostSettings) -> str:
    """Where the server's secret files live on the host."""
    return hs.layout.secrets_dir(hs, _native_secrets_dir(hs))


def secret_read_dir(hs: HostSettings) -> str:
    """Where the server (and psql running the roles script) opens its secret files."""
    return hs.layout.secret_read_dir(hs, _native_secrets_dir(hs))


def _reapply_roles(hs: HostSettings) -> tuple[Reaction, ...]:
    """What a changed roles script or password asks for: the script run again by the superuser.

    The image runs its init scripts once, on an empty data volume: the deploy re-runs the same
    file in the db service. The distribution's server has no init scripts: the deploy runs it
    (first upload included) as the postgres user.
    """
    return (Exec(_service(hs), ("psql", "--quiet", "-U", "postgres", "-d", "postgres", "-f",
                                roles_read_path(hs)),
                 "Apply changed database roles and passwords", user="postgres"),)


def roles_read_path(hs: HostSettings) -> str:
    """roles.sql as psql opens it (in the db container: its init script)."""
    return hs.layout.data_dir(INITDB_ROLES_SQL, f"{hs.stack.paths.config_dir}/postgres/roles.sql")


def _secret_files(hs: HostSettings) -> list[RenderedFile]:
    wanted = {APP_PASSWORD_SECRET: hs.secrets.db_password}
    if monitor_role(hs):
        wanted[MONITOR_PASSWORD_SECRET] = hs.secrets.db_monitor_password
    files = [secret_file(hs, name, value, role=ROLE, image_uid=IMAGE_UID, native_user="postgres",
                         native_dir=_native_secrets_dir(hs), reactions=_reapply_roles(hs))
             for name, value in wanted.items()]
    if internal_tls.serves(hs, "db"):
        key, cert = internal_tls.server_credentials(hs, "db")
        files += [secret_file(hs, name, value, role=ROLE, image_uid=IMAGE_UID,
                              native_user="postgres", native_dir=_native_secrets_dir(hs),
                              reactions=(Restart(_service(hs)),))
                  for name, value in ((TLS_KEY_SECRET, key), (TLS_CERT_SECRET, cert))]
    return files


def tls_settings(hs: HostSettings) -> dict[str, str]:
    """The server's TLS settings (``ssl*`` parameters) for clients on other hosts; none when
    every client is on this host. Example: ``tls_settings(hs)["ssl"]`` -> ``"on"``"""
    if not internal_tls.serves(hs, "db"):
        return {}
    read_dir = secret_read_dir(hs)
    return {"ssl": "on", "ssl_cert_file": f"{read_dir}/{TLS_CERT_SECRET}",
            "ssl_key_file": f"{read_dir}/{TLS_KEY_SECRET}", "ssl_min_protocol_version": "TLSv1.2"}


def hba_path(hs: HostSettings) -> str:
    """pg_hba.conf on the host: Debian's cluster's, or mounted into the db container (only when
    clients on other hosts must use TLS; otherwise the image's own rules apply)."""
    return hs.layout.config_path(hs, "postgres", "pg_hba.conf",
                                 f"/etc/postgresql/{hs.stack.postgres.version}/main/pg_hba.conf")


def hba_file(hs: HostSettings) -> RenderedFile:
    """Who may log in from where: the local socket and loopback (natively as Debian has it,
    the image's way in the container), this host's containers, and the app hosts over TLS
    only (``hostssl``) when they are elsewhere."""
    owner = hs.layout.file_owner("root", "postgres")
    content = template("postgres/pg_hba.conf.j2", hs, pg=hs.stack.postgres,
                       app_addresses=app_client_addresses(hs), docker=hs.layout.runs_in_containers,
                       tls=internal_tls.serves(hs, "db"))
    return RenderedFile(hba_path(hs), content, ROLE, mode="644" if hs.layout.runs_in_containers
                        else "640", owner=owner, group=owner, reactions=(Restart(_service(hs)),))


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
    path = hs.layout.config_path(hs, "postgres", "initdb/10-roles.sql", roles_read_path(hs))
    owner = "root" if hs.layout.runs_in_containers else "postgres"
    return RenderedFile(path, roles_sql(hs), ROLE, owner=owner, group=owner,
                        reactions=_reapply_roles(hs))


def _package_files(hs: HostSettings) -> list[RenderedFile]:
    """The distribution's server reads conf.d and pg_hba.conf (the image: Compose's command)."""
    pg = hs.stack.postgres
    etc = f"/etc/postgresql/{pg.version}/main"
    conf = template("postgres/residency-scheduler.conf.j2", hs, pg=pg, pg_str=pg_str,
                    listen_addresses=listen_addresses(hs), tls=tls_settings(hs))
    return [RenderedFile(f"{etc}/conf.d/residency-scheduler.conf", conf, ROLE, owner="postgres",
                         group="postgres", reactions=(Restart(_service(hs)),))]


def render(hs: HostSettings) -> list[RenderedFile]:
    files = [] if hs.layout.runs_in_containers else _package_files(hs)
    if not hs.layout.runs_in_containers or internal_tls.serves(hs, "db"):
        files.append(hba_file(hs))
    return [*files, _roles_script(hs), *_secret_files(hs)]


# --- deploy ------------------------------------------------------------------------------------


@deploy("Install PostgreSQL")
def install(hs: HostSettings) -> None:
    """Natively: the distribution's PostgreSQL and pgvector, built from Debian's source once
    (checksum checked; ``with_llvm=no``: no JIT bitcode, which would need clang).

    Example: ``postgres.install(hs)`` (before its files are uploaded: they belong to its user)
    """
    if hs.layout.runs_in_containers:
        return
    version = hs.stack.postgres.version
    apply.install_packages(f"Install PostgreSQL {version}", [f"postgresql-{version}",
                                                             "postgresql-client"])
    if host.get_fact(File, path=f"/usr/share/postgresql/{version}/extension/vector.control"):
        return
    apply.install_packages("Install what building pgvector needs",
                           [f"postgresql-server-dev-{version}", "make", "gcc", "libc6-dev"])
    pg_config = f"/usr/lib/postgresql/{version}/bin/pg_config"
    server.shell(
        name=f"Build and install pgvector {PGVECTOR_VERSION} for PostgreSQL {version}",
        commands=[f"src=$(mktemp -d) && trap 'rm -rf \"$src\"' EXIT && "
                  f"curl -fsSL -o \"$src/pgvector.tar.gz\" {PGVECTOR_URL} && "
                  f"echo '{PGVECTOR_SHA256}  '\"$src/pgvector.tar.gz\" | sha256sum -c --quiet - && "
                  "tar -xzf \"$src/pgvector.tar.gz\" -C \"$src\" --strip-components=1 && "
                  f"make -s -C \"$src\" with_llvm=no PG_CONFIG={pg_config} && "
                  f"make -s -C \"$src\" with_llvm=no PG_CONFIG={pg_config} install"],
    )
