"""First contact with bare hosts, before ``rsdeploy bootstrap`` runs pyinfra on them.

A bare host knows no deploy user yet: bootstrap logs in as the initial user (root, or a user
with passwordless sudo), which makes the deploy user with the site's keys; once a login as the
deploy user is proven, the next pass switches root's and password logins off. Each host's SSH key
is pinned on first use, shown, and checked strictly from then on.

    note = pin_host_key(hs)                 # "rs1: pinned ED25519 SHA256:... in known_hosts"
    if not logs_in(hs):                     # the inventory's login does not work yet
        check_initial_user(hs, "root")      # CommandFailed naming the host and the fix
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from rsdeploy import remote
from rsdeploy.errors import CommandFailed

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: Seconds a first contact's probe may take (a fresh host's sshd answers within a second).
PROBE_SECONDS = 30


def known_hosts_file(hs: HostSettings) -> Path:
    """Where the host's key is pinned: the inventory's ``ssh_known_hosts_file``, else
    ``~/.ssh/known_hosts``."""
    configured = hs.connection.get("ssh_known_hosts_file")
    return Path(configured) if configured else Path(os.path.expanduser("~/.ssh/known_hosts"))


def _known_hosts_name(hs: HostSettings) -> str:
    """The host as known_hosts names it: ``name``, or ``[name]:port`` off port 22."""
    name, port = hs.connection.get("ssh_hostname", hs.name), int(hs.connection.get("ssh_port", 22))
    return name if port == 22 else f"[{name}]:{port}"


def pin_host_key(hs: HostSettings) -> str | None:
    """Pin the host's SSH keys in its known_hosts file unless one is there; returns what was
    pinned, for the operator to compare (None when the host was known already).

    Example: ``pin_host_key(hs)`` -> ``"10.0.0.5: pinned ED25519 SHA256:u7I... in known_hosts"``
    """
    path = known_hosts_file(hs)
    entry = _known_hosts_name(hs)
    if path.is_file() and subprocess.run(["ssh-keygen", "-F", entry, "-f", str(path)],
                                         capture_output=True).returncode == 0:
        return None
    scan = subprocess.run(
        ["ssh-keyscan", "-T", "10", "-p", str(hs.connection.get("ssh_port", 22)),
         "-t", "ed25519,ecdsa,rsa", hs.connection.get("ssh_hostname", hs.name)],
        capture_output=True, text=True, timeout=PROBE_SECONDS)
    lines = [line for line in scan.stdout.splitlines() if line and not line.startswith("#")]
    if not lines:
        raise CommandFailed(f"{hs.name}: no SSH host key could be read from "
                            f"{entry} ({scan.stderr.strip() or 'no answer'}): is sshd running there?")
    # ssh-keyscan names the host as it was asked; known_hosts must name it as ssh will look it up.
    pinned = [f"{entry} {line.split(None, 1)[1]}" for line in lines]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write("".join(f"{line}\n" for line in pinned))
    return f"{hs.name}: pinned {', '.join(_fingerprints(pinned))} in {path}"


def _fingerprints(lines: list[str]) -> list[str]:
    """``ED25519 SHA256:...`` for each known_hosts line."""
    shown = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input="\n".join(lines) + "\n",
                           capture_output=True, text=True)
    return [f"{parts[-1].strip('()')} {parts[1]}" for parts in
            (line.split() for line in shown.stdout.splitlines()) if len(parts) >= 3]


def as_user(hs: HostSettings, user: str) -> HostSettings:
    """``hs`` logging in as ``user`` instead of the inventory's login."""
    return replace(hs, connection={**hs.connection, "ssh_user": user})


def _probe(hs: HostSettings, command: str) -> subprocess.CompletedProcess:
    """``command`` as the login user itself (no sudo of ours), with the inventory's options."""
    argv = ["ssh", *remote.ssh_options(hs.connection), hs.connection.get("ssh_hostname", hs.name),
            command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_SECONDS)


def logs_in(hs: HostSettings) -> bool:
    """Whether the inventory's own login works and can act as root (sudo without a password
    when it is not root): the host needs no first contact."""
    return _probe(hs, _as_root_check(hs.login_user)).returncode == 0


def _as_root_check(user: str) -> str:
    return "true" if user == "root" else "sudo -n true"


def check_initial_user(hs: HostSettings, user: str) -> None:
    """The initial user logs in and can act as root, or CommandFailed names the host and what
    to fix. Example: ``check_initial_user(hs, "admin")``"""
    result = _probe(as_user(hs, user), f"{_as_root_check(user)} && echo rsdeploy-can-act-as-root")
    if "rsdeploy-can-act-as-root" in result.stdout:
        return
    if result.returncode == remote.SSH_FAILED:
        why = (result.stderr.strip().splitlines() or ["no answer"])[-1]
        raise CommandFailed(f"{hs.name}: cannot log in as the initial user {user} ({why}): "
                            f"give {user} one of your SSH keys, or bootstrap with "
                            "--initial-user USER")
    raise CommandFailed(f"{hs.name}: the initial user {user} cannot sudo without a password: "
                        f"add '{user} ALL=(ALL) NOPASSWD: ALL' to /etc/sudoers.d/{user} on the "
                        "host, or bootstrap as root (--initial-user root)")


def prove_login(hs: HostSettings) -> None:
    """After the first pass: the inventory's login (the deploy user) works and can sudo, or
    CommandFailed says so (root's and password logins are then left on)."""
    result = _probe(hs, _as_root_check(hs.login_user))
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise CommandFailed(
            f"{hs.name}: bootstrapped, but {hs.login_user} cannot log in and sudo ({why}); "
            "root and password logins stay on: check base.deploy_user_keys against your key, "
            "then run bootstrap again")
