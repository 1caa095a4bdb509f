"""Host bootstrap: base packages, trusted CA certificates, time sync, the deploy user,
unattended security upgrades, the firewall and the stack's directories.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from rsdeploy.roles import redis
from rsdeploy import apply, remote
from rsdeploy.layout import HostCommand, UnitReload
from rsdeploy.render import RenderedFile, static, template
from rsdeploy.types import Line, Name, Port, Section, matching
from rsdeploy.validate import Verdict, run_tool

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: Every host gets these: `ss` for verification, curl for health checks, nftables for the firewall.
BASE_PACKAGES = [
    "iproute2", "curl", "ca-certificates", "gnupg", "sudo", "nftables", "systemd-timesyncd",
    "unattended-upgrades", "logrotate", "python3",
]
CA_DIR = "/usr/local/share/ca-certificates/rsdeploy"
#: The host's CA bundle after update-ca-certificates: the extra trusted CAs included.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
FIREWALL_FILE = "/etc/rsdeploy/firewall.nft"
FIREWALL_UNIT = "rsdeploy-firewall.service"
#: sshd reads its drop-ins in name order and keeps the first value of each option: this one
#: comes before any other (a cloud image's 50-cloud-init.conf allowing passwords, say).
SSHD_DROP_IN = "/etc/ssh/sshd_config.d/00-rsdeploy.conf"


#: A zone of /usr/share/zoneinfo: ``UTC``, ``Europe/Berlin`` (no ``..``: /etc/localtime links there).
TimeZone = Annotated[str, matching(re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*"),
                                   "a time zone such as UTC or Europe/Berlin")]
#: A Debian package, optionally with an architecture and a version: ``jq``, ``jq:amd64=1.6-2``.
DebianPackage = Annotated[str, matching(
    re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?"),
    "a Debian package name (optionally :arch and =version)")]


class Settings(Section):
    deploy_user: Name = "deploy"  # login pyinfra uses after bootstrap (sudo, docker group)
    # SSH public keys allowed to log in as the deploy user; empty: bootstrap takes those of
    # whoever runs it (the ssh-agent's, else ~/.ssh/id_*.pub)
    deploy_user_keys: list[Line] = []
    initial_user: Name = "root"  # bootstrap's first login on a bare host (root or passwordless sudo)
    timezone: TimeZone = "UTC"  # host time zone (Celery beat schedules are UTC either way)
    firewall_allow: list[Port] = [22, 80, 443]  # TCP ports open to the world; all else is dropped
    unattended_upgrades: bool = True  # install security updates automatically
    extra_packages: list[DebianPackage] = []  # further Debian packages for every host


def applies(hs: HostSettings) -> bool:
    return True


def ca_bundle(hs: HostSettings) -> str | None:
    """The bundle tools with their own CA store (pip, npm, node) must be pointed at so they
    trust the extra CAs (a TLS-intercepting proxy), or None when there are none.

    Example: ``ca_bundle(hs)`` -> ``"/etc/ssl/certs/ca-certificates.crt"``
    """
    return SYSTEM_CA_BUNDLE if hs.stack.trusted_ca_certs else None


def firewall_peers(hs: HostSettings) -> list[str]:
    """IPv4 addresses of the stack's other hosts, allowed through this host's firewall."""
    return sorted(
        h.address for h in hs.topology.hosts
        if h.name != hs.name and isinstance(_ip(h.address), ipaddress.IPv4Address)
    )


def data_store_access(hs: HostSettings) -> tuple[list[int], list[str]]:
    """PostgreSQL's and Redis' ports on this host and the only peers allowed to them: the app
    hosts (other hosts of the stack are dropped like outsiders); nothing to restrict on a host
    without them or without peers. Example: ``([5432, 6379], ["10.0.0.22", "10.0.0.25"])``
    """
    ports = [port for role, port in (("db", hs.stack.postgres.port),
                                     ("redis", redis.client_port(hs))) if hs.has_role(role)]
    clients = sorted(app.address for app in hs.peers("app")
                     if app.name != hs.name and isinstance(_ip(app.address), ipaddress.IPv4Address))
    return (ports, clients) if ports and firewall_peers(hs) else ([], [])


def _ip(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def hardens_ssh(hs: HostSettings) -> bool:
    """Whether this run switches off root's and password logins: only when it logs in as the
    deploy user, which proves that login works (an inventory that logs in as root keeps it;
    bootstrap's first contact, as the initial user, leaves sshd as it is).

    Example: ``hardens_ssh(hs)`` -> ``True`` (``ssh_user: deploy``, the deploy user)
    """
    return hs.login_user == hs.stack.base.deploy_user != "root"


def deploy_user_keys(hs: HostSettings) -> list[str]:
    """The public keys that may log in as the deploy user: the site's, else those of whoever
    runs rsdeploy (its ssh-agent's, else ``~/.ssh/id_*.pub``)."""
    return list(hs.stack.base.deploy_user_keys) or remote.local_public_keys()


def render(hs: HostSettings) -> list[RenderedFile]:
    out = [
        RenderedFile(FIREWALL_FILE, template("base/firewall.nft.j2", hs, peers=firewall_peers(hs),
                                             data_store_ports=data_store_access(hs)[0],
                                             data_store_clients=data_store_access(hs)[1],
                                             local_only_ports=redis.local_only_ports(hs)),
                     "base", reactions=(UnitReload(FIREWALL_UNIT),)),
        RenderedFile(f"/etc/systemd/system/{FIREWALL_UNIT}", static("base/rsdeploy-firewall.service"),
                     "base", reactions=(UnitReload(FIREWALL_UNIT),)),
        RenderedFile("/etc/sudoers.d/rsdeploy-deploy", template("base/sudoers-deploy.j2", hs),
                     "base", mode="440"),
    ]
    if hardens_ssh(hs):
        out.append(RenderedFile(SSHD_DROP_IN, static("base/sshd-rsdeploy.conf"), "base",
                                reactions=(HostCommand("sshd -t && systemctl reload ssh"),)))
    if hs.stack.base.unattended_upgrades:
        out.append(RenderedFile("/etc/apt/apt.conf.d/20auto-upgrades", static("base/20auto-upgrades"),
                                "base"))
    out += [
        RenderedFile(f"{CA_DIR}/{name}.crt", pem, "base",
                     reactions=(HostCommand("update-ca-certificates"),))
        for name, pem in hs.trusted_ca_certificates().items()
    ]
    return out


def validate(tree: Path, hs: HostSettings) -> list[Verdict]:
    """nft's own check mode on the firewall, visudo on the sudoers drop-in."""
    firewall = tree / FIREWALL_FILE.lstrip("/")
    sudoers = tree / "etc/sudoers.d/rsdeploy-deploy"
    return [
        check_firewall(firewall),
        run_tool(["visudo", "-c", "-q", "-f", str(sudoers)], "/etc/sudoers.d/rsdeploy-deploy",
                 "visudo -c"),
    ]


#: What nft says when it may not ask the kernel (no CAP_NET_ADMIN: a CI job's container).
_NO_NETLINK = "cache initialization failed: Operation not permitted"


def check_firewall(local: Path) -> Verdict:
    """``nft -c`` on the rendered ruleset. nft checks against the kernel's netlink, which a
    container without CAP_NET_ADMIN (a CI job's) may not use: then the verdict is a skip that
    says so, and the host checks the ruleset before it loads it (the unit's ExecStartPre), a
    failed load leaving the rules it had."""
    verdict = run_tool(["nft", "-c", "-f", str(local)], FIREWALL_FILE, "nft -c")
    lines = [line for line in verdict.detail.splitlines() if line.strip()]
    if not verdict.ok and lines and all(_NO_NETLINK in line for line in lines):  # parsed fine
        return Verdict(FIREWALL_FILE, "nft -c", True, "skipped: nft may not use netlink here "
                       "(no CAP_NET_ADMIN); the host checks the rules before loading them",
                       skipped=True)
    return verdict


# --- deploy -----------------------------------------------------------------------------------


@deploy("Bootstrap the host")
def bootstrap(hs: HostSettings) -> None:
    """Everything a bare Debian/Ubuntu host needs before the stack. Example: ``bootstrap(hs)``"""
    install_packages(hs)
    create_directories(hs)
    rendered = render(hs)
    reactions = apply.remember_due(hs, apply.reactions(rendered, apply.upload(hs, rendered)))
    apply.react_on_host(reactions)
    apply.forget_due(hs, reactions)
    ensure_firewall(hs)
    enable_time_sync(hs)
    create_deploy_user(hs)


def ensure_firewall(hs: HostSettings) -> None:
    """The firewall is enabled and running on every run, changed or not (changed rules are
    reloaded by their ``UnitReload`` reaction). Example: ``ensure_firewall(hs)``
    """
    systemd.service(name="Enable and start the firewall", service=FIREWALL_UNIT,
                    running=True, enabled=True)


@deploy("Install base packages")
def install_packages(hs: HostSettings) -> None:
    apt.packages(
        name="Install base packages",
        packages=BASE_PACKAGES + hs.stack.base.extra_packages,
        update=True, cache_time=3600, no_recommends=True,
    )


@deploy("Enable time sync")
def enable_time_sync(hs: HostSettings) -> None:
    files.link(
        name=f"Set the time zone to {hs.stack.base.timezone}",
        path="/etc/localtime", target=f"/usr/share/zoneinfo/{hs.stack.base.timezone}",
    )
    # Enabled only: its package starts it, and systemd skips it inside containers (the sandbox),
    # where a "start" would be retried on every run.
    systemd.service(name="Enable systemd-timesyncd", service="systemd-timesyncd.service",
                    running=None, enabled=True)


@deploy("Create the deploy user")
def create_deploy_user(hs: HostSettings) -> None:
    server.user(
        name=f"Create deploy user {hs.stack.base.deploy_user}",
        user=hs.stack.base.deploy_user, shell="/bin/bash", create_home=True,
        groups=["sudo"], append=True, public_keys=deploy_user_keys(hs) or None,
    )


@deploy("Create the stack's directories")
def create_directories(hs: HostSettings) -> None:
    paths = hs.stack.paths
    # config_dir: others may pass through to the files they own (PostgreSQL its secrets).
    for path, mode in ((paths.base_dir, "755"), (paths.data_dir, "755"), (paths.config_dir, "751")):
        files.directory(name=f"Create {path}", path=path, mode=mode, user="root", group="root")
    # Owned by whoever writes there (natively the app: roles.backend); here it only must exist.
    files.directory(name=f"Create {paths.log_dir}", path=paths.log_dir)
    login = apply.login_user()
    files.directory(name="Create the private staging directory", path=apply.staging_dir(hs),
                    mode="700", user=login, group=login)
