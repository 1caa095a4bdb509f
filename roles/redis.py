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
import socket as socketlib
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pyinfra.api import deploy

from rsdeploy.roles import internal_tls
from rsdeploy import apply
from rsdeploy.component_files import secret_file
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
#: The server's TLS key and certificate for clients on other hosts (roles.internal_tls).
TLS_KEY_SECRET, TLS_CERT_SECRET = "redis_tls_key", "redis_tls_cert"


class Settings(Section):
    image: Image = "redis:7-alpine"  # docker layout: Redis 7 image
    port: Port = 6379  # port Redis listens on (this host's clients)
    tls_port: Port = 6380  # port for clients on other hosts: TLS only (internal_tls)
    maxmemory: Size = "256mb"  # Redis maxmemory
    # Celery's broker queues must never be evicted: keep noeviction unless Redis is cache-only.
    maxmemory_policy: Literal["noeviction", "allkeys-lru", "volatile-lru"] = "noeviction"
    resources: Resources = Resources(memory="384m", cpus=0.5)  # limits for the redis service


def applies(hs: HostSettings) -> bool:
    return hs.has_role("redis")


def ports(hs: HostSettings) -> dict[str, int]:
    """The ports Redis takes on this host, by settings key. Example: ``{"redis.port": ...}``"""
    ports = {"redis.port": hs.stack.redis.port}
    if internal_tls.serves(hs, "redis"):
        ports["redis.tls_port"] = hs.stack.redis.tls_port
    return ports


def client_port(carrier: HostSettings) -> int:
    """The port another host's clients dial on ``carrier`` (the Redis host): its TLS port when
    it speaks TLS to them. Example: ``client_port(hs.peer("redis"))`` -> ``6380``"""
    r = carrier.stack.redis
    return r.tls_port if internal_tls.serves(carrier, "redis") else r.port


def local_only_ports(hs: HostSettings) -> list[int]:
    """Ports Redis listens on that no other host may reach: the plain port, when the private
    address carries it too beside the TLS port (Redis binds every port to the same addresses)."""
    return [hs.stack.redis.port] if internal_tls.serves(hs, "redis") else []


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
                       redis_str=redis_str, bind=bind_addresses(hs), log_file=LOG_FILE,
                       tls=tls_files(hs))
    owner = hs.layout.file_owner(IMAGE_UID, "redis")
    reactions = (Restart(hs.layout.service("redis", "redis-server.service")),)
    files = [RenderedFile(config_path(hs), content, ROLE, mode="600", owner=owner, group=owner,
                          secret=True, reactions=reactions)]
    if internal_tls.serves(hs, "redis"):
        key, cert = internal_tls.server_credentials(hs, "redis")
        files += [secret_file(hs, name, value, role=ROLE, image_uid=IMAGE_UID, native_user="redis",
                              native_dir=_native_secrets_dir(hs), reactions=reactions)
                  for name, value in ((TLS_KEY_SECRET, key), (TLS_CERT_SECRET, cert))]
    # The password for redis-cli (REDISCLI_AUTH): the image's health check, rs-diagnose. It runs
    # as root (in the container without capabilities): root owns it, mode 600 keeps out others.
    files.append(RenderedFile(password_path(hs), hs.secrets.redis_password, ROLE, mode="600",
                              secret=True, reactions=reactions if containers else ()))
    return files


def tls_files(hs: HostSettings) -> dict[str, str]:
    """Where Redis reads its TLS certificate and key (``{"cert": ..., "key": ...}``), as its
    process opens them; empty when every client is on this host."""
    if not internal_tls.serves(hs, "redis"):
        return {}
    read_dir = hs.layout.secret_read_dir(hs, _native_secrets_dir(hs))
    return {"cert": f"{read_dir}/{TLS_CERT_SECRET}", "key": f"{read_dir}/{TLS_KEY_SECRET}"}


def password_path(hs: HostSettings) -> str:
    """The host file holding the password for redis-cli."""
    return _secret_path(hs, PASSWORD_SECRET)


def _secret_path(hs: HostSettings, name: str) -> str:
    return f"{hs.layout.secrets_dir(hs, _native_secrets_dir(hs))}/{name}"


def _native_secrets_dir(hs: HostSettings) -> str:
    return f"{hs.stack.paths.config_dir}/secrets"


def cli_argv(hs: HostSettings, *args: str) -> list[str]:
    """``redis-cli ARGS`` where Redis runs, the password read from its file into REDISCLI_AUTH
    (never on a command line).

    Example: ``cli_argv(hs, "info", "memory")``
    """
    password = f"{hs.layout.secret_read_dir(hs, _native_secrets_dir(hs))}/{PASSWORD_SECRET}"
    script = f'REDISCLI_AUTH="$(cat {password})" exec redis-cli -p {hs.stack.redis.port} "$@"'
    return hs.layout.exec_argv(hs, "redis", ["sh", "-c", script, "redis-cli", *args])


def load_config(conf: Path, timeout: float = 5.0, tls: dict[str, Path] | None = None
                ) -> tuple[bool, str]:
    """Start the real redis-server on ``conf`` on a private Unix socket (no TCP port, data in
    a temporary directory), see whether it comes up, stop it. Returns (ok, its output).
    ``tls``: where the rendered certificate and key are here (the TLS port a free one).

    Example: ``load_config(Path("redis.conf"))`` -> ``(True, "")``
    """
    overrides = []
    if tls:
        with socketlib.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        overrides = ["--tls-port", str(free), "--bind", "127.0.0.1",
                     "--tls-cert-file", str(tls["cert"]), "--tls-key-file", str(tls["key"])]
    with tempfile.TemporaryDirectory() as scratch:
        socket = Path(scratch) / "redis.sock"
        proc = subprocess.Popen(
            ["redis-server", str(conf), "--port", "0", "--unixsocket", str(socket),
             "--dir", scratch, "--pidfile", f"{scratch}/pid", "--logfile", "",
             "--daemonize", "no", "--supervised", "no", *overrides],
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
    tls = {part: tree / secret.lstrip("/") for part, secret in
           (("cert", _secret_path(hs, TLS_CERT_SECRET)),
            ("key", _secret_path(hs, TLS_KEY_SECRET)))} if tls_files(hs) else None
    ok, detail = load_config(tree / path.lstrip("/"), tls=tls)
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
