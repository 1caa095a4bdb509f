"""Short commands on a host from where rsdeploy runs, over the system's OpenSSH client.

pyinfra carries out deploys; the rsdeploy command itself needs a few things around them: hold a
host's deploy lock for the length of a run (:mod:`rsdeploy.lock`), read the release history,
copy a backup off the host. Those use the inventory's connection settings, as pyinfra does.
"""

from __future__ import annotations

import shlex
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: Exit codes of ``ssh`` itself (not of the command) and of a command the host does not have.
SSH_FAILED, NOT_FOUND = 255, 127
#: Inventory connection keys and the OpenSSH options they become.
SSH_OPTIONS = (("ssh_port", "Port"), ("ssh_user", "User"), ("ssh_key", "IdentityFile"),
               ("ssh_known_hosts_file", "UserKnownHostsFile"))


def ssh_options(connection: dict) -> list[str]:
    """``-o`` options reaching a host as pyinfra does (keys, known hosts, no prompts).

    Example: ``ssh_options({"ssh_port": 2222})`` -> ``["-o", "Port=2222", ..., "-o", "BatchMode=yes"]``
    """
    options = []
    for key, option in SSH_OPTIONS:
        if connection.get(key):
            options += ["-o", f"{option}={connection[key]}"]
    strict = connection.get("ssh_strict_host_key_checking", "yes")
    return [*options, "-o", f"StrictHostKeyChecking={strict}", "-o", "BatchMode=yes",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]


def ssh_argv(hs: HostSettings, command: str) -> list[str]:
    """The argv of ``ssh`` running ``command`` (a shell line) on the host, as root (through
    ``sudo -n`` when the inventory logs in as another user).

    Example: ``subprocess.run(ssh_argv(hs, "cat /var/lib/x/version"), capture_output=True)``
    """
    c = hs.connection
    if c.get("ssh_user", "root") != "root":
        command = f"sudo -n sh -c {shlex.quote(command)}"
    return ["ssh", *ssh_options(c), c.get("ssh_hostname", hs.name), command]


def run(hs: HostSettings, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a shell line on the host; the result's stdout and stderr are text.

    Example: ``run(hs, "cat /var/lib/residency-scheduler/version").stdout``
    """
    return subprocess.run(ssh_argv(hs, command), capture_output=True, text=True, timeout=timeout)
