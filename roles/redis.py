"""Redis 7: cache and Celery broker, password required (role ``redis``).

Docker layout: the ``redis`` Compose service reads ``base/config/redis/redis.conf`` (a secret:
it holds requirepass) at /usr/local/etc/redis/redis.conf, and its health check reads the password
from ``base/secrets/redis_password``; both owned by uid 999 (the image's redis user).
Systemd layout: the distribution's redis-server with the whole ``/etc/redis/redis.conf``
(a dpkg conffile: upgrades must keep ours, ``--force-confold``).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rsdeploy.types import Image, Port, Resources, Section, Size

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings
    from rsdeploy.validate import Verdict

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
    if docker:  # only the health check's redis-cli reads it (REDISCLI_AUTH), as root without
        # capabilities: so root owns it (mode 600 keeps out everyone else).
        files.append(RenderedFile(f"{hs.stack.paths.base_dir}/secrets/{PASSWORD_SECRET}",
                                  hs.secrets.redis_password, ROLE, mode="600", secret=True,
                                  restarts=readers))
    return files


def load_config(conf: Path, timeout: float = 5.0) -> tuple[bool, str]:
    """Start the real redis-server on ``conf`` on a private Unix socket (no TCP port, data in
    a temporary directory), see whether it comes up, stop it. Returns (ok, its output).

    Example: ``load_config(Path("redis.conf"))`` -> ``(True, "")``
    """
    with tempfile.TemporaryDirectory() as scratch:
        socket = Path(scratch) / "redis.sock"
        proc = subprocess.Popen(
            ["redis-server", str(conf), "--port", "0", "--unixsocket", str(socket),
             "--dir", scratch, "--pidfile", f"{scratch}/pid", "--logfile", "",
             "--daemonize", "no", "--supervised", "no"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while not socket.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        up = socket.exists()
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    return up, "" if up else output.strip()


def validate(tree: Path, hs: HostSettings) -> list[Verdict]:
    """redis.conf as the real redis-server reads it (Debian's redis-server 7.0)."""
    from rsdeploy.validate import Verdict

    path, tool = config_path(hs), "redis-server (loads the config)"
    if shutil.which("redis-server") is None:
        return [Verdict(path, tool, False, "redis-server is not installed (package: redis-server)")]
    ok, detail = load_config(tree / path.lstrip("/"))
    return [Verdict(path, tool, ok, detail)]
