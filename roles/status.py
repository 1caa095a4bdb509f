"""Operator tools on every host: ``/usr/local/bin/rs-status`` (status overview for either layout)
and logrotate for /var/log/residency-scheduler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsdeploy.types import Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class Settings(Section):
    log_rotate_days: int = 14  # days of /var/log/residency-scheduler logs logrotate keeps


def applies(hs: HostSettings) -> bool:
    return True


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
