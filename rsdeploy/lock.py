"""The deploy lock: one deploy, rollback or restore per host at a time.

The lock is a kernel lock (``flock``) on ``/run/rsdeploy/<project>.lock``, held on the host by a
shell that lives exactly as long as the rsdeploy command's SSH connection: it ends when rsdeploy
ends, is interrupted (Ctrl-C) or loses its connection, and the kernel frees the lock with it. So
a lock is never left behind by a run that is gone. Beside it, ``<project>.holder`` says who holds
it (who, version, message, since, the holding shell's pid). A holder file without a held lock is
stale (its run was cut off before it could tidy up): it is reported and replaced. A lock whose
holder hangs (a connection nobody closes) can be broken on purpose: ``--break-lock`` stops the
holding shell first.

Example::

    with HostLock(hs, holder={"who": "ana@laptop", "version": "v1.1.0"}, wait=0):
        subprocess.run(["pyinfra", ...])          # HostLocked when someone else holds it
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from typing import TYPE_CHECKING

from pyinfra import host
from pyinfra.api import FactBase

from rsdeploy.apply import fail
from rsdeploy.errors import CommandFailed, UserError
from rsdeploy.release import now
from rsdeploy.remote import ssh_argv

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: Exit code of a command refused because another run holds a host's lock.
LOCK_HELD = 4
LOCK_DIR = "/run/rsdeploy"
#: Set by the rsdeploy command for its pyinfra process: the token of the locks it holds, so a
#: deploy file knows the lock it finds held is its own.
TOKEN_ENV = "RSDEPLOY_LOCK_TOKEN"


class HostLocked(UserError):
    """Another run holds the host's deploy lock (exit code :data:`LOCK_HELD`)."""

    exit_code = LOCK_HELD


class LockUnreachable(CommandFailed):
    """The lock could not be taken at all (the host does not answer): the run failed (exit 1)."""


def paths(hs: HostSettings) -> tuple[str, str]:
    """The lock file and the holder file of the host's stack."""
    base = f"{LOCK_DIR}/{hs.stack.compose.project}"
    return f"{base}.lock", f"{base}.holder"


def _script(hs: HostSettings, holder: dict, wait: float, break_lock: bool) -> str:
    """The shell that takes the lock and holds it until its stdin closes."""
    lock, info = (shlex.quote(p) for p in paths(hs))
    take = f"flock -w {wait:g} 9" if wait > 0 else "flock -n 9"
    breaking = (f'pid=$(sed -n \'s/.*"pid": \\([0-9]*\\).*/\\1/p\' {info} 2>/dev/null); '
                f'[ -n "$pid" ] && kill "$pid" 2>/dev/null && sleep 1; ') if break_lock else ""
    record = shlex.quote(json.dumps(holder)[:-1])  # the pid is added by the shell itself
    return (
        f"mkdir -p {LOCK_DIR} && exec 9>>{lock} || exit 1; {breaking}"
        f"if ! {take}; then printf 'held %s\\n' \"$(cat {info} 2>/dev/null)\"; exit 0; fi; "
        f"if [ -s {info} ]; then printf 'stale %s\\n' \"$(cat {info})\"; fi; "
        f"printf '%s, \"pid\": %s}}\\n' {record} $$ > {info}.$$ && mv -f {info}.$$ {info}; "
        f"echo locked; cat >/dev/null 9>&-; rm -f {info}"
    )


def describe(holder_json: str) -> str:
    """A holder record in words. Example: ``"ana@laptop since 2026-11-30T15:40:07Z,
    deploying v1.1.0 ('hotfix')"``"""
    try:
        holder = json.loads(holder_json)
    except json.JSONDecodeError:
        return "an unknown holder"
    message = f" ({holder['message']!r})" if holder.get("message") else ""
    return (f"{holder.get('who', '?')} since {holder.get('since', '?')}, "
            f"{holder.get('action', 'deploying')} {holder.get('version', '?')}{message}")


class HostLock:
    """Hold one host's deploy lock for the length of a ``with`` block (see the module docstring).

    ``wait``: seconds to wait for a held lock (0: refuse at once); ``break_lock``: stop the
    current holder first. ``notes`` collects what is worth telling (a stale record replaced).
    """

    def __init__(self, hs: HostSettings, holder: dict, wait: float = 0, break_lock: bool = False):
        self.hs, self.wait, self.break_lock = hs, wait, break_lock
        self.holder = {**holder, "since": now(), "token": os.environ.get(TOKEN_ENV, "")}
        self.notes: list[str] = []
        self._shell: subprocess.Popen | None = None

    def __enter__(self) -> HostLock:
        argv = ssh_argv(self.hs, _script(self.hs, self.holder, self.wait, self.break_lock))
        self._shell = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
        for line in self._shell.stdout:
            word, _, rest = line.rstrip("\n").partition(" ")
            if word == "locked":
                return self
            if word == "stale":
                self.notes.append(f"{self.hs.name}: replaced a stale lock record of a run that "
                                  f"ended without releasing it: {describe(rest)}")
            elif word == "held":
                self._close()
                waited = f" (waited {self.wait:g} s)" if self.wait else ""
                raise HostLocked(f"{self.hs.name}: another run holds the deploy lock{waited}: "
                                 f"{describe(rest)}; wait with --lock-wait SECONDS, or break a "
                                 "hung holder with --break-lock")
        error = self._shell.stderr.read().strip().splitlines()[-1:] or ["no answer"]
        self._close()
        raise LockUnreachable(f"{self.hs.name}: cannot take the deploy lock over SSH: {error[0]}")

    def __exit__(self, *exc) -> None:
        self._close()

    def _close(self) -> None:
        if self._shell and self._shell.poll() is None:
            self._shell.stdin.close()  # the holding shell's `cat` ends: lock file freed
            try:
                self._shell.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._shell.kill()


class LockHolder(FactBase):
    """
    The holder record of a host's deploy lock while another process holds it, else ``None``.

    .. code:: python

        host.get_fact(LockHolder, lock="/run/rsdeploy/x.lock", info="/run/rsdeploy/x.holder")
    """

    def command(self, lock: str, info: str) -> str:
        lock, info = shlex.quote(lock), shlex.quote(info)
        return (f"[ -e {lock} ] && exec 9<{lock} && ! flock -n 9 && cat {info} 2>/dev/null; "
                "true")

    def process(self, output):
        text = "\n".join(output).strip()
        return text or None


def refuse_if_held_by_another(hs: HostSettings) -> None:
    """Stop this host's run when another run holds its deploy lock: a plain pyinfra run holds
    none itself (``rsdeploy deploy`` does), but never runs beside one that does.

    Example (first step of a deploy file): ``lock.refuse_if_held_by_another(hs)``
    """
    lock, info = paths(hs)
    holder = host.get_fact(LockHolder, lock=lock, info=info)
    if holder is None:
        return
    try:
        token = json.loads(holder).get("token")
    except json.JSONDecodeError:
        token = None
    if not token or token != os.environ.get(TOKEN_ENV):
        fail(f"another run holds the deploy lock: {describe(holder)}")
