"""Glue between rendered files and pyinfra: the current host's settings, uploads that report
whether they changed anything, and restarts gated on those changes.

Deploy scripts and role ``@deploy`` functions use this module; nothing else in the core imports
pyinfra's operation machinery.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.files import Sha256File
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from rsdeploy.errors import SettingsError
from rsdeploy.facts import FileOwnership
from rsdeploy.render import RenderedFile
from rsdeploy.secrets import load_secrets

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: Set by the rsdeploy CLI for the pyinfra process: the inventory file, for relative paths and
#: messages (plain ``pyinfra`` runs fall back to "inventory").
INVENTORY_ENV = "RS_INVENTORY"

_loaded: dict[int, dict[str, HostSettings]] = {}


def current() -> HostSettings:
    """The validated settings of the host pyinfra is preparing operations for.

    Every host of the inventory is validated once per run (topology needs all of them).
    Example (in a deploy file): ``hs = apply.current()``
    """
    from pyinfra import inventory

    from rsdeploy.settings import settings_for_inventory  # settings imports the roles, which import us

    key = id(inventory)
    if key not in _loaded:
        try:
            secrets, sources = load_secrets()
            _loaded[key] = settings_for_inventory(
                inventory, os.environ.get(INVENTORY_ENV, "inventory"), secrets, sources
            )
        except SettingsError as exc:
            raise PyinfraError(f"rsdeploy: {exc}") from None
    return _loaded[key][host.name]


def login_user() -> str:
    """The user pyinfra logs in as on the current host (owner of the staging directory)."""
    from pyinfra.facts.server import User

    return host.get_fact(User)


def staging_dir(hs: HostSettings) -> str:
    """A private (0700) directory on the host where secret files are staged before install."""
    return f"{hs.stack.paths.data_dir}/.staging"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@operation()
def secret_file(content: str, dest: str, user: str, group: str, staging: str):
    """
    Install a secret file with mode 600, never readable by others, never shown in diffs.

    + content: the file's text
    + dest: absolute path on the host
    + user: owner (name or numeric id)
    + group: group (name or numeric id)
    + staging: a 0700 directory owned by the SSH user (see ``staging_dir``)

    The text is uploaded into the private staging directory, then installed under ``umask 077``
    and renamed into place, so no other user can read it at any moment.

    **Example:**

    .. code:: python

        secret_file(name="Install the Redis password", content=pw, dest="/x/secrets/redis",
                    user="999", group="999", staging="/var/lib/residency-scheduler/.staging")
    """
    remote = host.get_fact(FileOwnership, path=dest)
    if remote is None or host.get_fact(Sha256File, path=dest) != _sha256(content):
        staged = f"{staging}/{_sha256(dest)[:16]}"
        yield FileUploadCommand(StringIO(content), staged, remote_temp_filename=staged + ".part")
        yield StringCommand(
            "umask 077 && mkdir -p", str(Path(dest).parent),
            "&& install -m 600 -o", user, "-g", group, staged, f"{dest}.rsdeploy-new",
            "&& mv -f", f"{dest}.rsdeploy-new", dest, "&& rm -f", staged,
        )
        return
    owner_ok = str(user) in (remote["uid"], remote["user"]) and str(group) in (
        remote["gid"], remote["group"])
    if remote["mode"] == "600" and owner_ok:
        host.noop(f"secret {dest} is up to date")
        return
    yield StringCommand("chmod 600", dest, "&& chown", f"{user}:{group}", dest)


def upload(hs: HostSettings, rendered: Iterable[RenderedFile]) -> dict[str, object]:
    """Upload rendered files; returns each path's OperationMeta for change-gated reactions.

    Example: ``metas = apply.upload(hs, nginx.render(hs))``
    """
    metas = {}
    for f in rendered:
        if f.secret:
            metas[f.path] = secret_file(
                name=f"Install secret {f.path}", content=f.content, dest=f.path,
                user=f.owner, group=f.group, staging=staging_dir(hs),
            )
        else:
            metas[f.path] = files.put(
                name=f"Upload {f.path}", src=StringIO(f.content), dest=f.path,
                user=f.owner, group=f.group, mode=f.mode,
            )
    return metas


def readers(rendered: Iterable[RenderedFile], metas: dict) -> dict[str, list]:
    """For each service, the upload operations of the files it reads.

    Gate a restart on them with ``_if=any_changed(*found)``.
    Example: ``for service, found in apply.readers(files, metas).items(): ...``
    """
    found: dict[str, list] = {}
    for f in rendered:
        for service in f.restarts:
            found.setdefault(service, []).append(metas[f.path])
    return dict(sorted(found.items()))


def enable_timers(changed: dict[str, list]) -> None:
    """Enable and start every timer among ``changed``'s services; restart those whose unit
    files changed (after a daemon-reload). Example: ``apply.enable_timers(apply.readers(...))``
    """
    for timer, gates in changed.items():
        if not timer.endswith(".timer"):
            continue
        systemd.daemon_reload(name=f"Reload systemd ({timer} changed)", _if=any_changed(*gates))
        systemd.service(name=f"Enable and start {timer}", service=timer, running=True, enabled=True)
        systemd.service(name=f"Restart {timer} (its units changed)", service=timer, restarted=True,
                        _if=any_changed(*gates))


def record_version(hs: HostSettings) -> object:
    """Write the deployed version to ``<data_dir>/version`` (rs-status and verify read it)."""
    from roles.status import version_file  # rs-status shows it

    return files.put(name=f"Record the deployed version {hs.stack.version}",
                     src=StringIO(hs.stack.version + "\n"), dest=version_file(hs), mode="644")


def changed_operations(pyinfra_output: str) -> int:
    """How many operations changed something, from pyinfra's summary (its "Success" column).

    Example: ``changed_operations(run.stdout)`` -> ``0`` for a no-op re-run
    """
    import re

    found = re.search(r"Grand total\s+\d+\s+(\d+|-)\s+(?:\d+|-)\s+(?:\d+|-)", pyinfra_output)
    if not found:
        raise ValueError("no pyinfra summary in the output")
    return 0 if found.group(1) == "-" else int(found.group(1))


def fail(message: str) -> None:
    """Stop this host's deploy with a clear message (used for facts that rule out a deploy)."""
    raise OperationError(message)
