"""Scheduled PostgreSQL backups (pg_dump, custom format) with retention (role ``db``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from rsdeploy.types import Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class Settings(Section):
    enabled: bool = True  # run scheduled backups on the db host
    on_calendar: str = "*-*-* 02:30:00"  # systemd OnCalendar= expression (UTC)
    retention_days: int = Field(default=14, ge=1)  # delete dumps older than this
    directory: str = "/var/lib/residency-scheduler/backups"  # where dumps are kept on the db host


def applies(hs: HostSettings) -> bool:
    return hs.has_role("db") and hs.stack.backup.enabled


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
