"""Short commands on a host from where rsdeploy runs, over the system's OpenSSH client.

pyinfra carries out deploys; the rsdeploy command itself needs a few things around them: hold a
host's deploy lock for the length of a run (:mod:`rsdeploy.lock`), read the release history,
copy a backup off the host. Those use the inventory's connection settings, as pyinfra does.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: Exit codes of ``ssh`` itself (not of the command) and of a command the host does not have.
SSH_FAILED, NOT_FOUND = 255, 127
#: Inventory connection keys and the OpenSSH options they become.
SSH_OPTIONS = (("ssh_port", "Port"), ("ssh_user", "User"), ("ssh_key", "IdentityFile"),
               ("ssh_known_hosts_file", "UserKnownHostsFile"))


#: The private keys SSH clients look for in ~/.ssh when none is named.
SSH_KEY_NAMES = ("id_ed25519", "id_ecdsa", "id_rsa")


def connection_options(connection: dict) -> list[tuple[str, str]]:
    """OpenSSH options reaching a host as pyinfra does: the inventory's ``ssh_*`` data, else
    pyinfra's defaults, which are under ``$HOME/.ssh`` (OpenSSH's own are under the passwd
    entry's home: a CI job puts its key in a home of its own), strict host keys, no prompts.

    Example: ``connection_options({"ssh_port": 2222})`` -> ``[("Port", "2222"), ...]``
    """
    options = [(option, str(connection[key])) for key, option in SSH_OPTIONS
               if connection.get(key)]
    home_ssh = Path(os.path.expanduser("~/.ssh"))
    if not connection.get("ssh_key"):
        options += [("IdentityFile", str(home_ssh / name)) for name in SSH_KEY_NAMES
                    if (home_ssh / name).exists()]
    if not connection.get("ssh_known_hosts_file"):
        options.append(("UserKnownHostsFile", str(home_ssh / "known_hosts")))
    strict = connection.get("ssh_strict_host_key_checking", "yes")
    return [*options, ("StrictHostKeyChecking", str(strict)), ("BatchMode", "yes")]


def ssh_options(connection: dict) -> list[str]:
    """:func:`connection_options` as ``ssh -o`` arguments, with keep-alives.

    Example: ``ssh_options({"ssh_port": 2222})`` -> ``["-o", "Port=2222", ..., "-o", "BatchMode=yes"]``
    """
    options = [*connection_options(connection), ("ServerAliveInterval", "15"),
               ("ServerAliveCountMax", "4")]
    return [arg for option, value in options for arg in ("-o", f"{option}={value}")]


def ssh_argv(hs: HostSettings, command: str) -> list[str]:
    """The argv of ``ssh`` running ``command`` (a shell line) on the host, as root (through
    ``sudo -n`` when the inventory logs in as another user).

    Example: ``subprocess.run(ssh_argv(hs, "cat /var/lib/x/version"), capture_output=True)``
    """
    c = hs.connection
    if hs.login_user != "root":
        command = f"sudo -n sh -c {shlex.quote(command)}"
    return ["ssh", *ssh_options(c), c.get("ssh_hostname", hs.name), command]


def run(hs: HostSettings, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a shell line on the host; the result's stdout and stderr are text.

    Example: ``run(hs, "cat /var/lib/residency-scheduler/version").stdout``
    """
    return subprocess.run(ssh_argv(hs, command), capture_output=True, text=True, timeout=timeout)


def local_public_keys(agent_socket: str | None = None, home: Path | None = None) -> list[str]:
    """The SSH public keys of whoever runs rsdeploy: the running ssh-agent's, else
    ``~/.ssh/id_*.pub``. Example: ``local_public_keys()`` -> ``["ssh-ed25519 AAAA... ana@laptop"]``
    """
    socket = agent_socket if agent_socket is not None else os.environ.get("SSH_AUTH_SOCK")
    if socket:
        listed = subprocess.run(["ssh-add", "-L"], capture_output=True, text=True,
                                env={**os.environ, "SSH_AUTH_SOCK": socket})
        keys = [line.strip() for line in listed.stdout.splitlines()
                if line.startswith(("ssh-", "ecdsa-"))]
        if listed.returncode == 0 and keys:
            return keys
    ssh = (home or Path.home()) / ".ssh"
    return [(ssh / f"{name}.pub").read_text().strip() for name in SSH_KEY_NAMES
            if (ssh / f"{name}.pub").is_file()]
