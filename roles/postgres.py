"""PostgreSQL 15 with pgvector: the application's database (role ``db``).

Docker layout: the ``db`` Compose service. Systemd layout: the distribution's postgresql-15.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsdeploy.types import Image, Name, Port, Resources, Section, Size

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


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


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
