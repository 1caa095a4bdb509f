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

from pyinfra.api import deploy

from rsdeploy import apply
from rsdeploy.layout import Restart
from rsdeploy.render import RenderedFile, template
from rsdeploy.types import Image, Port, Resources, Section, Size
from rsdeploy.validate import Verdict

if TYPE_CHECKING:
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


def ports(hs: HostSettings) -> dict[str, int]:
    """The port Redis takes on this host, by settings key. Example: ``{"redis.port": ...}``"""
    return {"redis.port": hs.stack.redis.port}


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
    if hs.layout.runs_in_containers:  # what Compose publishes decides who else reaches it
        return "* -::*"
    if [app.name for app in hs.peers("app")] == [hs.name]:
        return "127.0.0.1 -::1"
    ipaddress.ip_address(hs.address)  # bind needs an address, not a name: fail at render time
    return f"127.0.0.1 -::1 {hs.address}"


#: Where Debian's redis-server writes its log (natively; the image logs to its output).
LOG_FILE = "/var/log/redis/redis-server.log"


def config_path(hs: HostSettings) -> str:
    return hs.layout.config_path(hs, "redis", "redis.conf", "/etc/redis/redis.conf")


def render(hs: HostSettings) -> list[RenderedFile]:
    # The image: its working directory is the data volume, no pidfile or logfile of Debian's unit.
    containers = hs.layout.runs_in_containers
    content = template("redis/redis.conf.j2", hs, r=hs.stack.redis, docker=containers,
                       redis_str=redis_str, bind=bind_addresses(hs), log_file=LOG_FILE)
    owner = hs.layout.file_owner(IMAGE_UID, "redis")
    reactions = (Restart(hs.layout.service("redis", "redis-server.service")),)
    files = [RenderedFile(config_path(hs), content, ROLE, mode="600", owner=owner, group=owner,
                          secret=True, reactions=reactions)]
    if containers:  # only the image's health check reads it (REDISCLI_AUTH), with redis-cli as
        # root without capabilities: so root owns it (mode 600 keeps out everyone else).
        secrets = hs.layout.secrets_dir(hs, f"{hs.stack.paths.config_dir}/secrets")
        files.append(RenderedFile(f"{secrets}/{PASSWORD_SECRET}", hs.secrets.redis_password, ROLE,
                                  mode="600", secret=True, reactions=reactions))
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
    path, tool = config_path(hs), "redis-server (loads the config)"
    if shutil.which("redis-server") is None:
        return [Verdict(path, tool, False, "redis-server is not installed (package: redis-server)")]
    ok, detail = load_config(tree / path.lstrip("/"))
    return [Verdict(path, tool, ok, detail)]


@deploy("Install Redis")
def install(hs: HostSettings) -> None:
    """Natively: the distribution's redis-server; an upgrade keeps our redis.conf (a conffile).

    Example: ``redis.install(hs)`` (before redis.conf is uploaded: it belongs to its user)
    """
    if hs.layout.runs_in_containers:
        return
    apply.install_packages("Install Redis", ["redis-server"],
                           extra_install_args="-o Dpkg::Options::=--force-confold")
