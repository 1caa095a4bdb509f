"""Redis 7: cache and Celery broker, password required (role ``redis``).

Docker layout: the ``redis`` Compose service reads ``base/config/redis/redis.conf`` (a secret:
it holds requirepass) at /usr/local/etc/redis/redis.conf, and its health check reads the password
from ``base/secrets/redis_password``; both owned by uid 999 (the image's redis user).
Systemd layout: the distribution's redis-server with the whole ``/etc/redis/redis.conf``
(a dpkg conffile: upgrades must keep ours, ``--force-confold``).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Literal

from rsdeploy.types import Image, Port, Resources, Section, Size

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings

ROLE = "redis"
IMAGE_UID = "999"  # the redis user of the official images (alpine and Debian)
PASSWORD_SECRET = "redis_password"
CONTAINER_CONFIG = "/usr/local/etc/redis/redis.conf"


class Settings(Section):
    image: Image = "redis:7-alpine"  # docker layout: Redis 7 image
    port: Port = 6379  # port Redis listens on
    maxmemory: Size = "256mb"  # Redis maxmemory
    # Celery's broker queues must never be evicted: keep noeviction unless Redis is cache-only.
    maxmemory_policy: Literal["noeviction", "allkeys-lru", "volatile-lru"] = "noeviction"
    resources: Resources = Resources(memory="384m", cpus=0.5)  # limits for the redis service


def applies(hs: HostSettings) -> bool:
    return hs.has_role("redis")


def redis_str(value) -> str:
    """A double-quoted redis.conf argument that Redis reads back byte for byte.

    Backslash and double quote are escaped; every byte outside printable ASCII becomes ``\\xHH``.
    Example: ``redis_str('a"b')`` -> ``'"a\\\\"b"'``
    """
    out = []
    for byte in str(value).encode():
        char = chr(byte)
        if char in '\\"':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def bind_addresses(hs: HostSettings) -> str:
    """``bind``: all interfaces in a container; natively loopback, plus the private address
    when the app runs on another host.
    """
    if hs.stack.layout == "docker":
        return "* -::*"
    app = hs.topology.one("app")
    if app.name == hs.name:
        return "127.0.0.1 -::1"
    ipaddress.ip_address(hs.address)  # bind needs an address, not a name: fail at render time
    return f"127.0.0.1 -::1 {hs.address}"


def config_path(hs: HostSettings) -> str:
    if hs.stack.layout == "docker":
        return f"{hs.stack.paths.base_dir}/config/redis/redis.conf"
    return "/etc/redis/redis.conf"


def render(hs: HostSettings) -> list[RenderedFile]:
    from rsdeploy.render import RenderedFile, template

    docker = hs.stack.layout == "docker"
    content = template("redis/redis.conf.j2", hs, r=hs.stack.redis, docker=docker,
                       redis_str=redis_str, bind=bind_addresses(hs))
    owner = IMAGE_UID if docker else "redis"
    readers = ("redis",) if docker else ("redis-server.service",)
    files = [RenderedFile(config_path(hs), content, ROLE, mode="600", owner=owner, group=owner,
                          secret=True, restarts=readers)]
    if docker:  # the health check's redis-cli reads it (REDISCLI_AUTH)
        files.append(RenderedFile(f"{hs.stack.paths.base_dir}/secrets/{PASSWORD_SECRET}",
                                  hs.secrets.redis_password, ROLE, mode="600", owner=owner,
                                  group=owner, secret=True, restarts=readers))
    return files
