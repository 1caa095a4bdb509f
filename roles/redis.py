"""Redis 7: cache and Celery broker, password required (role ``redis``).

Docker layout: the ``redis`` Compose service. Systemd layout: the distribution's redis-server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from rsdeploy.types import Image, Port, Resources, Section, Size

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class Settings(Section):
    image: Image = "redis:7-alpine"  # docker layout: Redis 7 image
    port: Port = 6379  # port Redis listens on
    maxmemory: Size = "256mb"  # Redis maxmemory
    # Celery's broker queues must never be evicted: keep noeviction unless Redis is cache-only.
    maxmemory_policy: Literal["noeviction", "allkeys-lru", "volatile-lru"] = "noeviction"
    resources: Resources = Resources(memory="384m", cpus=0.5)  # limits for the redis service


def applies(hs: HostSettings) -> bool:
    return hs.has_role("redis")


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
