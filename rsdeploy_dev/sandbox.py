"""Sandbox hosts: fresh Debian 12 machines as systemd containers, reached over SSH on loopback.

    rsdeploy sandbox up [--hosts N] [--name PREFIX]
    rsdeploy sandbox status [--name PREFIX]
    rsdeploy sandbox down [--name PREFIX]

Each host is a container of ``rsdeploy/host:bookworm`` with systemd as PID 1 (like a VM: units,
journald, Docker inside), on the user-defined network ``<prefix>-net`` with a fixed address, and
publishes SSH, 80/443 and the monitoring UIs on 127.0.0.1 ports that never change. Everything the
sandbox makes is labelled ``rsdeploy.sandbox=<prefix>`` and recorded in
``.sandbox/<prefix>/state.json`` with the SSH key, known_hosts, ssh config and secrets file;
``inventories/sandbox.py`` reads that state. ``up`` is idempotent, ``down`` removes exactly what
``up`` (and ``images push``: the registry) made.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import secrets as random_secrets
import shutil
import socket
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from rsdeploy.roles import internal_tls
from rsdeploy_dev import REPO_ROOT
from rsdeploy.errors import UserError
from rsdeploy.secrets import update_file
from rsdeploy_dev import images, refapp, registry
from rsdeploy_dev.engine import (
    ensure_engine,
    ensure_packages,
    find,
    ipam_config,
    machine_lock,
    measuring,
)

DEFAULT_PREFIX = "rs-sandbox"
PREFIX_ENV = "RS_SANDBOX_PREFIX"
#: The layout inventories/sandbox.py deploys (docker or systemd).
LAYOUT_ENV = "RS_SANDBOX_LAYOUT"
KEEP_ENV = "RS_KEEP_SANDBOX"
SANDBOX_ROOT = REPO_ROOT / ".sandbox"
LABEL = "rsdeploy.sandbox"
#: Container ports every host publishes on 127.0.0.1, and what listens there.
HOST_PORTS = {22: "ssh", 80: "http", 443: "https", 9090: "prometheus", 9093: "alertmanager",
              3001: "grafana"}
#: The test ACME server's ports: the ACME API (directory at /dir) and the management API.
ACME_PORT = 14000
ACME_MANAGEMENT_PORT = 15000
#: Secrets of the sandbox stack (random, made once per sandbox), by name and length in bytes.
SECRET_BYTES = {"db_password": 24, "redis_password": 24, "secret_key": 48, "webhook_secret": 48,
                "db_monitor_password": 24, "grafana_admin_password": 24, "flower_password": 24}
PORT_RANGE = (20000, 40000)
#: How long the registry and the ACME server may take to answer after they start: seconds on an
#: idle machine, but the test suite starts them while other groups build and deploy (one CI run
#: saw the registry take more than 30 s).
START_TIMEOUT = 120
#: The app hosts' download caches (pip's and npm's: ``roles.backend.PIP_CACHE_DIR``,
#: ``roles.frontend.NPM_CACHE_DIR``) in one volume of the machine's, shared by every sandbox
#: host: each release's packages are fetched once per machine, not once per host and chain.
DOWNLOAD_CACHE, DOWNLOAD_CACHE_DIR = "rsdeploy-dev-download-cache", "/var/cache/residency-scheduler"
#: Docker's default CPU weight of a container (cgroup cpu.shares), and a measured host's.
CPU_SHARES, MEASURED_CPU_SHARES = 1024, 8192
#: The CPU weight of the cgroup every container is in, against each busy process of this
#: machine's own (cgroup v1: a process in the root group weighs as much as all containers).
CONTAINERS_CPU_SHARES = 8192


def log(message: str) -> None:
    print(f"[sandbox] {message}", flush=True)


def default_prefix() -> str:
    """``$RS_SANDBOX_PREFIX`` or ``rs-sandbox``."""
    return os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX


# --- where the sandbox keeps its files --------------------------------------------------------


@dataclass(frozen=True)
class SandboxPaths:
    """Files of one sandbox under ``.sandbox/<prefix>/`` (git-ignored)."""

    root: Path

    @classmethod
    def of(cls, prefix: str) -> SandboxPaths:
        return cls(SANDBOX_ROOT / prefix)

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.root / "ssh_config"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.yml"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def app_source(self) -> Path:
        """The reference app's git repository (a tag per release): build delivery's source."""
        return self.root / "refapp"

    @property
    def acme(self) -> Path:
        return self.root / "acme"

    def host_key(self, host: str) -> Path:
        return self.root / "hostkeys" / host / "ssh_host_ed25519_key"


@dataclass(frozen=True)
class Host:
    """One sandbox host: container name, address on the sandbox network, published ports."""

    name: str
    address: str
    ports: dict[int, int]  # container port -> 127.0.0.1 port

    def port(self, container_port: int) -> int:
        """The loopback port that reaches ``container_port``. Example: ``host.port(22)``."""
        return self.ports[container_port]


@dataclass(frozen=True)
class Sandbox:
    """A sandbox as recorded in its state file (what tests, inventories and the CLI read)."""

    prefix: str
    paths: SandboxPaths
    network: str
    subnet: str
    hosts: tuple[Host, ...]
    registry: dict | None
    acme: dict | None = None  # the test ACME server (ensure_acme): directory and roots URLs

    @classmethod
    def load(cls, prefix: str | None = None) -> Sandbox:
        """Read ``.sandbox/<prefix>/state.json``. Example: ``Sandbox.load("rs-sandbox")``."""
        prefix = prefix or default_prefix()
        paths = SandboxPaths.of(prefix)
        if not paths.state.is_file():
            raise UserError(f"no sandbox {prefix} ({paths.state} missing): "
                            f"run rsdeploy sandbox up --name {prefix}")
        state = json.loads(paths.state.read_text())
        hosts = tuple(Host(h["name"], h["address"], {int(k): v for k, v in h["ports"].items()})
                      for h in state["hosts"])
        return cls(prefix, paths, state["network"], state["subnet"], hosts, state.get("registry"),
                   state.get("acme"))

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def ssh(self, host: str, command: str, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run ``command`` on a host through the sandbox's ssh config (key + known_hosts).

        Example: ``sandbox.ssh("rs-sandbox-1", "systemctl is-system-running")``
        """
        return subprocess.run(["ssh", "-F", str(self.paths.ssh_config), host, command],
                              capture_output=True, text=True, timeout=timeout, check=check)


def _write_state(paths: SandboxPaths, state: dict) -> None:
    paths.state.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def _read_state(paths: SandboxPaths) -> dict:
    return json.loads(paths.state.read_text()) if paths.state.is_file() else {}


# --- keys, certificates, secrets --------------------------------------------------------------


def _ssh_keygen(path: Path, comment: str) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(path)], check=True)


def _ensure_ca(paths: SandboxPaths, prefix: str) -> None:
    """A CA for the sandbox's TLS certificates (the registry's); hosts trust it via the inventory."""
    if paths.ca_cert.exists():
        return
    paths.ca_cert.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([
        "openssl", "req", "-x509", "-new", "-nodes", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout", str(paths.ca_key),
        "-out", str(paths.ca_cert), "-days", "825", "-subj", f"/CN=rsdeploy sandbox CA {prefix}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ], check=True, capture_output=True)
    paths.ca_key.chmod(0o600)


def _issue_cert(paths: SandboxPaths, name: str, dest: Path, sans: list[str]) -> None:
    """A server certificate for ``name`` signed by the sandbox CA (``dest``.crt/.key)."""
    key, csr, crt = dest.with_suffix(".key"), dest.with_suffix(".csr"), dest.with_suffix(".crt")
    ext = dest.with_suffix(".ext")
    ext.write_text(f"subjectAltName={','.join(sans)}\nextendedKeyUsage=serverAuth\n"
                   "basicConstraints=CA:FALSE\n")
    subprocess.run(["openssl", "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-keyout", str(key), "-out", str(csr),
                    "-subj", f"/CN={name}"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(paths.ca_cert),
                    "-CAkey", str(paths.ca_key), "-CAcreateserial", "-days", "825",
                    "-extfile", str(ext), "-out", str(crt)], check=True, capture_output=True)
    key.chmod(0o600)
    csr.unlink()
    ext.unlink()


def _ensure_secrets(paths: SandboxPaths) -> None:
    """Random strong secrets for the sandbox stack, made once (mode 600)."""
    if paths.secrets.exists():
        return
    values = {name: random_secrets.token_urlsafe(size) for name, size in SECRET_BYTES.items()}
    values["registry_password"] = registry.password()  # the machine's one registry
    fd = os.open(paths.secrets, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# Sandbox secrets, made by rsdeploy sandbox up (random; removed by down).\n")
        yaml.safe_dump(values, out, sort_keys=True)
    key, cert = internal_tls.new_ca(f"{paths.root.name} sandbox")
    update_file(paths.secrets, {internal_tls.KEY_SECRET: key, internal_tls.CERT_SECRET: cert})


def registry_password(prefix: str) -> str:
    """The registry's password as the sandbox's secrets file holds it (``registry_password``)."""
    data = yaml.safe_load(SandboxPaths.of(prefix).secrets.read_text())
    return data["registry_password"]


# --- addresses and ports ----------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _allocate_ports(prefix: str, wanted: list[str], taken: set[int]) -> dict[str, int]:
    """Free loopback ports for ``wanted`` slots, starting at a point derived from the prefix.

    The same prefix on the same machine gets the same ports; the state file keeps them after.
    """
    low, high = PORT_RANGE
    port = low + zlib.crc32(prefix.encode()) % ((high - low) // 100) * 100
    out = {}
    for slot in wanted:
        while port in taken or not _port_free(port):
            port += 1
            if port >= high:
                raise UserError("no free loopback port left for the sandbox")
        out[slot] = port
        taken.add(port)
    return out


def _pick_subnet(client, prefix: str) -> str:
    """A /24 in 10.213.0.0/16, derived from the prefix, that no docker network uses."""
    used = [ipaddress.ip_network(cfg["Subnet"]) for net in client.networks.list()
            for cfg in (net.attrs.get("IPAM") or {}).get("Config") or [] if "Subnet" in cfg]
    start = zlib.crc32(prefix.encode()) % 200 + 20
    for third in [*range(start, 250), *range(20, start)]:
        candidate = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return str(candidate)
    raise UserError("no free 10.213.x.0/24 subnet for the sandbox network")


def _address(subnet: str, offset: int) -> str:
    return str(ipaddress.ip_network(subnet).network_address + offset)


def host_name(prefix: str, index: int) -> str:
    """``rs-sandbox`` and 1 -> ``rs-sandbox-1``."""
    return f"{prefix}-{index}"


# --- docker objects ---------------------------------------------------------------------------


def _owned(obj, prefix: str) -> bool:
    labels = obj.attrs.get("Labels") or obj.attrs.get("Config", {}).get("Labels") or {}
    return labels.get(LABEL) == prefix


def _get_container(client, name: str, prefix: str):
    container = find(client.containers, name)
    if container is None:
        return None
    if not _owned(container, prefix):
        raise UserError(f"a container named {name} exists and is not part of sandbox {prefix}: "
                        "choose another --name")
    return container


def _ensure_network(client, prefix: str, state: dict):
    name = f"{prefix}-net"
    for net in client.networks.list(names=[name]):
        if net.name == name:
            if not _owned(net, prefix):
                raise UserError(f"docker network {name} exists and is not part of sandbox {prefix}")
            state["subnet"] = net.attrs["IPAM"]["Config"][0]["Subnet"]
            return net
    subnet = state.get("subnet") or _pick_subnet(client, prefix)
    log(f"network {name} ({subnet})")
    ipam = ipam_config(subnet)
    state["subnet"] = subnet
    return client.networks.create(name, driver="bridge", ipam=ipam, labels={LABEL: prefix})


def _ensure_volume(client, name: str, prefix: str) -> str:
    if find(client.volumes, name) is None:
        client.volumes.create(name, labels={LABEL: prefix})
    return name


def _identity_tar(authorized_key: bytes, host_key: Path) -> bytes:
    """Per-host files put into a created container before it boots."""
    files = {
        "root/.ssh/authorized_keys": (authorized_key, 0o600),
        "etc/ssh/ssh_host_ed25519_key": (host_key.read_bytes(), 0o600),
        "etc/ssh/ssh_host_ed25519_key.pub": (host_key.with_suffix(".pub").read_bytes(), 0o644),
        "etc/machine-id": (uuid.uuid4().hex.encode() + b"\n", 0o444),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _create_host(client, prefix: str, name: str, address: str, ports: dict[int, int],
                 image: str, paths: SandboxPaths):
    """Create and start one systemd host container, exactly as ENVIRONMENT.md describes."""
    network = f"{prefix}-net"
    volume = _ensure_volume(client, f"{name}-docker", prefix)
    if find(client.volumes, DOWNLOAD_CACHE) is None:  # the machine's, kept by down
        client.volumes.create(DOWNLOAD_CACHE, labels={"rsdeploy.dev": "download-cache"})
    container = client.containers.create(
        image, command="/sbin/init", name=name, hostname=name, detach=True,
        ports={f"{inner}/tcp": ("127.0.0.1", outer) for inner, outer in ports.items()},
        # --privileged fails on this kernel (no CAP_SYS_RESOURCE for the engine): all caps but it.
        cap_add=["ALL"], cap_drop=["SYS_RESOURCE"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        cgroupns="host",
        volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                 volume: {"bind": "/var/lib/docker", "mode": "rw"},
                 DOWNLOAD_CACHE: {"bind": DOWNLOAD_CACHE_DIR, "mode": "rw"}},
        tmpfs={"/run": "", "/run/lock": ""},
        labels={LABEL: prefix, "rsdeploy.sandbox.role": "host"},
        network=network,
        networking_config={network: client.api.create_endpoint_config(
            ipv4_address=address, aliases=[name])},
        restart_policy={"Name": "unless-stopped"},
    )
    _ssh_keygen(paths.host_key(name), f"root@{name}")
    container.put_archive("/", _identity_tar(paths.key.with_suffix(".pub").read_bytes(),
                                             paths.host_key(name)))
    container.start()
    return container


def _wait_for_ssh(port: int, timeout: float = 90) -> None:
    """Wait until sshd answers with its banner on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2) as s:
            s.settimeout(3)
            if s.recv(64).startswith(b"SSH-"):
                return
        time.sleep(0.5)
    raise UserError(f"sshd did not answer on 127.0.0.1:{port} within {timeout:.0f} s")


# --- ssh client files -------------------------------------------------------------------------


def _write_ssh_files(sandbox_paths: SandboxPaths, hosts: list[dict]) -> None:
    """known_hosts pinned to each host's own key, and an ssh config naming every host."""
    known, config = [], []
    for host in hosts:
        public = sandbox_paths.host_key(host["name"]).with_suffix(".pub").read_text().split()
        key = f"{public[0]} {public[1]}"
        known.append(f"[127.0.0.1]:{host['ports']['22']} {key}")
        known.append(f"{host['name']},{host['address']} {key}")
        config.append(f"""Host {host['name']}
    HostName 127.0.0.1
    Port {host['ports']['22']}
    User root
    IdentityFile {sandbox_paths.key}
    IdentitiesOnly yes
    UserKnownHostsFile {sandbox_paths.known_hosts}
    StrictHostKeyChecking yes
    ConnectTimeout 10
""")
    sandbox_paths.known_hosts.write_text("\n".join(known) + "\n")
    sandbox_paths.ssh_config.write_text("\n".join(config))


# --- up / down / status -----------------------------------------------------------------------


def up(prefix: str | None = None, count: int = 1) -> Sandbox:
    """Bring ``count`` hosts up (re-using running ones) and write the state, keys and secrets.
    One bring-up at a time on this machine: free ports and subnets are picked, then taken.

    Example: ``sandbox = up("rs-sandbox", 2)``
    """
    with machine_lock("sandbox"):
        return _up(prefix, count)


def _up(prefix: str | None, count: int) -> Sandbox:
    prefix = prefix or default_prefix()
    started = time.monotonic()
    ensure_packages({"ssh-keygen": "openssh-client", "ssh": "openssh-client",
                     "openssl": "openssl", "debootstrap": "debootstrap"})
    client = ensure_engine()
    image = images.ensure_host_image(client)
    paths = SandboxPaths.of(prefix)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.root.chmod(0o700)
    state = _read_state(paths)
    _ssh_keygen(paths.key, f"rsdeploy-sandbox-{prefix}")
    _ensure_ca(paths, prefix)
    _ensure_secrets(paths)
    refapp.build_repo(paths.app_source)
    _ensure_network(client, prefix, state)
    _remove_extra_hosts(client, prefix, count, state)
    hosts = [_ensure_host(client, prefix, i, image, paths, state) for i in range(1, count + 1)]
    _favour_containers(client.containers.get(hosts[0]["name"]))
    state.update(prefix=prefix, network=f"{prefix}-net", hosts=hosts, key=str(paths.key),
                 known_hosts=str(paths.known_hosts), ssh_config=str(paths.ssh_config),
                 secrets=str(paths.secrets), ca_cert=str(paths.ca_cert))
    _write_state(paths, state)
    _write_ssh_files(paths, hosts)
    sandbox = Sandbox.load(prefix)
    for host in sandbox.hosts:
        log(f"{host.name}: systemd {_system_state(sandbox, host.name)}")
    log(f"up in {time.monotonic() - started:.0f} s; secrets: {paths.secrets}; "
        f"inventory: RS_SANDBOX_PREFIX={prefix} inventories/sandbox.py")
    return sandbox


def _ensure_host(client, prefix: str, index: int, image: str, paths: SandboxPaths,
                 state: dict) -> dict:
    name = host_name(prefix, index)
    recorded = {h["name"]: h for h in state.get("hosts", [])}.get(name)
    container = _get_container(client, name, prefix)
    if container is not None and recorded:
        ports = recorded["ports"]
        if container.status != "running":
            log(f"{name}: starting the existing container")
            container.start()
        else:
            log(f"{name}: running already")
    else:
        if container is not None:  # ours but unrecorded (state lost): make it anew
            container.remove(force=True)
        taken = {p for h in state.get("hosts", []) for p in h["ports"].values()}
        ports = {str(k): v for k, v in _allocate_ports(
            name, [str(p) for p in HOST_PORTS], taken).items()}
        log(f"{name}: creating (ssh on 127.0.0.1:{ports['22']}) ...")
        container = _create_host(client, prefix, name, _address(state["subnet"], 10 + index),
                                 {int(k): v for k, v in ports.items()}, image, paths)
    _wait_for_ssh(ports["22"])
    return {"name": name, "address": _address(state["subnet"], 10 + index),
            "container_id": container.id, "ports": ports}


def _system_state(sandbox: Sandbox, host: str) -> str:
    """``systemctl is-system-running --wait`` over SSH (proves key and known_hosts work too)."""
    result = sandbox.ssh(host, "systemctl is-system-running --wait", check=False)
    if result.returncode == 255:
        raise UserError(f"ssh to {host} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _remove_extra_hosts(client, prefix: str, count: int, state: dict) -> None:
    """Hosts beyond ``count`` (from an earlier, larger ``up``) go, with their volumes."""
    keep = {host_name(prefix, i) for i in range(1, count + 1)}
    for container in client.containers.list(all=True, filters={"label": [
            f"{LABEL}={prefix}", "rsdeploy.sandbox.role=host"]}):
        if container.name not in keep:
            log(f"{container.name}: removing (beyond --hosts {count})")
            container.remove(force=True)
            _remove_volume(client, f"{container.name}-docker", prefix)
    state["hosts"] = [h for h in state.get("hosts", []) if h["name"] in keep]


def _remove_volume(client, name: str, prefix: str) -> None:
    volume = find(client.volumes, name)
    if volume is not None and _owned(volume, prefix):
        volume.remove(force=True)


#: Seconds the engine may take to remove one container, volume or network.
REMOVE_TIMEOUT = 600


def down(prefix: str | None = None) -> list[str]:
    """Remove every container, volume and network labelled for the sandbox and
    ``.sandbox/<prefix>/``; returns what was removed (the machine's registry stays).
    """
    prefix = prefix or default_prefix()
    # Removing a host with its Docker volume took over a minute on a loaded CI machine.
    client = ensure_engine(api_timeout=REMOVE_TIMEOUT)
    paths = SandboxPaths.of(prefix)
    removed = []
    selector = {"label": f"{LABEL}={prefix}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True)
        removed.append(f"container {container.name}")
    for volume in client.volumes.list(filters=selector):
        volume.remove(force=True)
        removed.append(f"volume {volume.name}")
    for network in client.networks.list(filters=selector):
        registry.leave(client, network.name)  # the machine's registry stays, off this network
        network.remove()
        removed.append(f"network {network.name}")
    if paths.root.exists():
        shutil.rmtree(paths.root)
        removed.append(f"directory {paths.root}")
    for item in removed:
        log(f"removed {item}")
    return removed


def status(prefix: str | None = None) -> list[dict]:
    """Each host's container state, ports and systemd state (also printed)."""
    sandbox = Sandbox.load(prefix)
    client = ensure_engine()
    rows = []
    for host in sandbox.hosts:
        container = _get_container(client, host.name, sandbox.prefix)
        running = container is not None and container.status == "running"
        systemd = (container.exec_run(["systemctl", "is-system-running"]).output.decode().strip()
                   if running else "-")
        ports = " ".join(f"{HOST_PORTS[p]}={o}" for p, o in sorted(host.ports.items()))
        rows.append({"name": host.name, "container": container.status if container else "missing",
                     "systemd": systemd, "address": host.address, "ports": host.ports})
        print(f"{host.name:24} {rows[-1]['container']:8} systemd={systemd:10} "
              f"address={host.address:14} {ports}")
    if sandbox.registry:
        reg = sandbox.registry
        print(f"{reg['name']:24} registry {reg['name']}:{registry.PORT} "
              f"(127.0.0.1:{reg['port']}, user {reg['username']}; the machine's)")
    if sandbox.acme:
        print(f"{sandbox.acme['name']:24} acme     {sandbox.acme['directory']} "
              f"(names: {', '.join(sandbox.acme['names'])})")
    print(f"ssh: ssh -F {sandbox.paths.ssh_config} {sandbox.hosts[0].name}")
    return rows


@contextlib.contextmanager
def session(prefix: str | None = None, count: int = 1) -> Iterator[Sandbox]:
    """Sandbox for a test session: up (re-used when up), down at the end unless RS_KEEP_SANDBOX=1.

    Example (a pytest fixture)::

        @pytest.fixture(scope="session")
        def sandbox():
            with rsdeploy_dev.sandbox.session() as sb:
                yield sb
    """
    sandbox = up(prefix, count)
    try:
        yield sandbox
    finally:
        if os.environ.get(KEEP_ENV) != "1":
            down(sandbox.prefix)


def _favour_containers(container) -> None:
    """The sandbox hosts stand in for servers of their own: give the cgroup all containers
    share (cgroup v1's ``/docker``) the weight of :data:`CONTAINERS_CPU_SHARES` busy processes,
    so this machine's own (the test groups' pytest, pyinfra and ssh) do not starve them. Where
    the machine has no such group (cgroup v2) or it cannot be written, nothing changes."""
    pid = container.attrs["State"]["Pid"]
    with contextlib.suppress(OSError, ValueError):
        line = next(entry for entry in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                    if entry.split(":")[1].split(",")[0] == "cpu")
        own = Path("/sys/fs/cgroup/cpu") / line.split(":", 2)[2].strip("/")  # /docker/<id>
        shares = own.parent / "cpu.shares"
        if own.parent != Path("/sys/fs/cgroup/cpu") and shares.read_text().strip() != str(
                CONTAINERS_CPU_SHARES):
            shares.write_text(str(CONTAINERS_CPU_SHARES))
            log(f"containers' CPU weight: {CONTAINERS_CPU_SHARES} ({shares})")


#: Each container a host's engine runs and its cgroup (cpu controller), read on the host.
_STACK_CGROUPS = r"""command -v docker >/dev/null || exit 0
for id in $(docker ps -q); do
  set -- $(docker inspect -f '{{.Name}} {{.State.Pid}}' "$id")
  echo "${1#/} $(awk -F: '$2 ~ /(^|,)cpu(,|$)/ {print $3}' "/proc/$2/cgroup")"
done"""


def _stack_outside(container) -> list[str]:
    """The containers a sandbox host's engine runs outside the host's own cgroup (cgroup v1's
    cpu controller): where the host's CPU weight does not reach. Example: ``[]``, or
    ``["residency-scheduler-nginx-1"]`` on a host whose engine keeps the default parent."""
    init = container.exec_run(["cat", "/proc/1/cgroup"]).output.decode()
    own = next((line.split(":", 2)[2] for line in init.splitlines()
                if "cpu" in line.split(":")[1].split(",")), None)
    if own is None:  # no cgroup v1 cpu controller: nothing to compare
        return []
    own = own.rsplit("/init.scope", 1)[0]
    listed = container.exec_run(["sh", "-c", _STACK_CGROUPS]).output.decode()
    return [name for name, _, path in (line.partition(" ") for line in listed.splitlines())
            if not path.startswith(own + "/")]


@contextlib.contextmanager
def precedence(sandbox: Sandbox) -> Iterator[Sandbox]:
    """While the block runs, the sandbox's hosts come first on this machine's CPU.

    A measurement of a host (requests dropped or slow while a release switches) is of that host,
    as if it were a server of its own; here its containers share two cores with every other
    test group's hosts. Each host container's CPU weight (cgroup ``cpu.shares``) is raised to
    :data:`MEASURED_CPU_SHARES` (8 times Docker's default) for the block, the stack's containers
    included (the host image's engine keeps their cgroups inside the host's; checked first): an
    idle host costs the others nothing, a busy one is served first. No other site is measured meanwhile, and this
    machine's engine starts no image build or push of the test groups (its layer compression
    runs outside every container's weight; :func:`~rsdeploy_dev.engine.measuring`). Inside a host nothing changes (the release
    build still runs behind the serving processes by its own ``nice``). Example::

        with sandbox.precedence(site.sandbox), load.steady(url, name, ca) as run:
            subprocess.run(["rsdeploy", "deploy", ...])
    """
    containers = [ensure_engine().containers.get(host.name) for host in sandbox.hosts]
    for container in containers:
        outside = _stack_outside(container)
        if outside:
            raise UserError(f"{container.name} runs {', '.join(outside)} outside its own cgroup: "
                            "its CPU weight would not cover them (a host image older than "
                            "sandbox-dockerd; rsdeploy sandbox down, then up)")
        container.update(cpu_shares=MEASURED_CPU_SHARES)
    try:
        with measuring():
            yield sandbox
    finally:
        for container in containers:
            with contextlib.suppress(Exception):  # a host removed inside the block
                container.update(cpu_shares=CPU_SHARES)



# --- the registry (pull delivery) -------------------------------------------------------------


def ensure_registry(prefix: str, client) -> dict:
    """The machine's registry (:mod:`rsdeploy_dev.registry`) running and on the sandbox's
    network, where its hosts reach it as ``rsdeploy-registry:5000``; returns its record (also
    in the state file: ``Sandbox.registry``).

    Example: ``ensure_registry("rs-sandbox", ensure_engine())["port"]``
    """
    sandbox = Sandbox.load(prefix)
    record = registry.ensure(client)
    registry.join(client, sandbox.network)
    with machine_lock("sandbox"):
        state = _read_state(sandbox.paths)
        state["registry"] = record
        _write_state(sandbox.paths, state)
    return record


def push_images(prefix: str, names: list[str] | None = None, versions: list[str] | None = None,
                client=None) -> list[str]:
    """Push the selected images to the machine's registry (:func:`rsdeploy_dev.registry.push`)
    and put it on the sandbox's network, where its hosts pull them; returns the pushed refs.

    Example: ``push_images("rs-sandbox", images.SANDBOX_STACK, ["v1.0.0"])``
    """
    client = client or ensure_engine()
    ensure_registry(prefix, client)
    return registry.push(client, names, versions)


def _run_service(client, sandbox: Sandbox, name: str, address: str, image: str, role: str,
                 **options):
    """Start a labelled service container at a fixed ``address`` on the sandbox network.

    Example: ``_run_service(client, sandbox, "rs-sandbox-registry", "10.213.5.5", ref, "registry")``
    """
    return client.containers.run(
        image, name=name, detach=True,
        labels={LABEL: sandbox.prefix, "rsdeploy.sandbox.role": role},
        network=sandbox.network,
        networking_config={sandbox.network: client.api.create_endpoint_config(
            ipv4_address=address, aliases=[name])},
        restart_policy={"Name": "unless-stopped"},
        **options,
    )


# --- the test ACME server (tls.mode certbot) ---------------------------------------------------


def ensure_acme(prefix: str, client, names: dict[str, str]) -> dict:
    """Run ``<prefix>-acme``, a pebble ACME server, on the sandbox network; returns its record
    (also in the state file: ``Sandbox.acme``), with ``directory`` (tls.acme_server) and
    ``roots`` (its current root certificate, from the management API).

    ``names`` maps each site name to the sandbox host that answers its HTTP-01 challenges on
    port 80 (pebble reads them from its /etc/hosts); other names change it, which re-creates
    the server (with a new root). Its TLS certificate comes from the sandbox CA, which the
    hosts trust. Example: ``ensure_acme("rs-acme", client, {"rs-acme.test": "10.213.9.11"})``
    """
    sandbox = Sandbox.load(prefix)
    state = _read_state(sandbox.paths)
    name, address = f"{prefix}-acme", _address(sandbox.subnet, 6)
    base = f"https://{address}"
    acme = {"name": name, "address": address, "names": dict(sorted(names.items())),
            "directory": f"{base}:{ACME_PORT}/dir", "roots": f"{base}:{ACME_MANAGEMENT_PORT}/roots/0"}
    _acme_files(sandbox.paths, acme)
    container = _get_container(client, name, prefix)
    if container is not None and (state.get("acme") or {}).get("names") != acme["names"]:
        container.remove(force=True)
        container = None
    if container is None:
        image = images.INFRA["pebble"]
        images.build_image(client, image, images.ensure_base(client))
        log(f"{name}: starting ({acme['directory']}) ...")
        _run_service(client, sandbox, name, address, image.ref, "acme",
                     volumes={str(sandbox.paths.acme): {"bind": "/test/config", "mode": "ro"}},
                     # No artificial validation delays, no random nonce rejections, and
                     # every order validated anew (a renewal proves its challenge path too).
                     environment={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
                                  "PEBBLE_AUTHZREUSE": "0"},
                     extra_hosts=acme["names"])
    elif container.status != "running":
        container.start()
    state["acme"] = acme
    _write_state(sandbox.paths, state)
    _wait_for_acme(sandbox.paths, acme)
    return acme


def _acme_files(paths: SandboxPaths, acme: dict) -> None:
    """pebble's configuration and its listeners' certificate (sandbox CA, IP SAN), once."""
    paths.acme.mkdir(parents=True, exist_ok=True)
    if not (paths.acme / "server.crt").exists():
        _issue_cert(paths, acme["name"], paths.acme / "server",
                    [f"DNS:{acme['name']}", f"IP:{acme['address']}"])
    config = {"pebble": {
        "listenAddress": f"0.0.0.0:{ACME_PORT}",
        "managementListenAddress": f"0.0.0.0:{ACME_MANAGEMENT_PORT}",
        "certificate": "/test/config/server.crt",
        "privateKey": "/test/config/server.key",
        "httpPort": 80,  # HTTP-01: the site's port 80, where certbot or nginx answers
        "tlsPort": 443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }}
    (paths.acme / "pebble-config.json").write_text(json.dumps(config, indent=2) + "\n")


def _wait_for_acme(paths: SandboxPaths, acme: dict, timeout: float = START_TIMEOUT) -> None:
    """Until the directory answers over TLS that the sandbox CA vouches for."""
    context = ssl.create_default_context(cafile=str(paths.ca_cert))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.URLError, OSError):
            urllib.request.urlopen(acme["directory"], context=context, timeout=3)
            return
        time.sleep(0.5)
    raise UserError(f"the sandbox ACME server did not answer at {acme['directory']}")


def acme_root(prefix: str) -> str:
    """The PEM root certificate the sandbox's ACME server issues under now (management API).

    Example: ``acme_root("rs-acme")`` -> ``"-----BEGIN CERTIFICATE-----..."``
    """
    sandbox = Sandbox.load(prefix)
    if not sandbox.acme:
        raise UserError(f"sandbox {prefix} runs no ACME server (rsdeploy_dev.sandbox.ensure_acme)")
    context = ssl.create_default_context(cafile=str(sandbox.paths.ca_cert))
    with urllib.request.urlopen(sandbox.acme["roots"], context=context, timeout=10) as answer:
        return answer.read().decode()


# --- command line -----------------------------------------------------------------------------


def cmd_up(args) -> int:
    sandbox = up(args.name, args.hosts)
    print(sandbox.paths.secrets)
    return 0


def cmd_down(args) -> int:
    down(args.name)
    return 0


def cmd_status(args) -> int:
    status(args.name)
    return 0


def add_commands(sub) -> None:
    """Register ``rsdeploy sandbox up|down|status`` on the CLI's subparsers."""
    sandbox = sub.add_parser("sandbox", help="fresh Debian 12 hosts (systemd containers) for tests")
    actions = sandbox.add_subparsers(dest="sandbox_command", required=True)
    for action, func, text in [("up", cmd_up, "create or start the hosts (idempotent)"),
                               ("down", cmd_down, "remove everything the sandbox made"),
                               ("status", cmd_status, "hosts, ports and systemd state")]:
        parser = actions.add_parser(action, help=text)
        parser.add_argument("--name", default=None,
                            help=f"sandbox name prefix (default: ${PREFIX_ENV} or {DEFAULT_PREFIX})")
        parser.set_defaults(func=func)
        if action == "up":
            parser.add_argument("--hosts", type=int, default=1, help="number of hosts (default 1)")
