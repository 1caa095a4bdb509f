"""The Next.js frontend (role ``app``).

Docker layout: Compose service ``frontend``. Systemd layout: PM2 process residency-frontend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from rsdeploy.types import Port, Resources, Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class Settings(Section):
    image: str = "residency-scheduler-frontend"  # docker layout: image repository; the tag is the version
    port: Port = 3000  # port `node server.js` listens on
    pm2_instances: int = Field(default=1, ge=1, le=16)  # systemd layout: PM2 instances
    resources: Resources = Resources(memory="512m", cpus=0.5)  # limits for the frontend service


def applies(hs: HostSettings) -> bool:
    return hs.has_role("app")


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
