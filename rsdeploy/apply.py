"""Glue between rendered files and pyinfra: uploads that report whether they changed anything,
the reactions those changes ask for, and the host's own reactions gated on them.

Deploy scripts, layouts and role ``@deploy`` functions use this module; in the core only it and
the release record (:mod:`rsdeploy.release`) run pyinfra operations.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.api.command import FileUploadCommand, QuoteString, StringCommand
from pyinfra.facts.files import Directory, File, FindFiles, Sha256File
from pyinfra.facts.server import User
from pyinfra.operations import apt, files, python, server, systemd
from pyinfra.operations.util import any_changed

from rsdeploy.facts import FileOwnership
from rsdeploy.layout import EnableTimer, HostCommand, Reaction, UnitReload, UnitRestart
from rsdeploy.render import RenderedFile

if TYPE_CHECKING:
    from pyinfra.api import Host, State

    from rsdeploy.settings import HostSettings

def connector_arguments(host: Host) -> dict:
    """How the running operation reaches its host (sudo and the like), for the commands a
    pyinfra callback runs itself. Example: ``host.run_shell_command(c, **connector_arguments(host))``
    """
    return {key: value for key, value in host.current_op_global_arguments.items()
            if key in CONNECTOR_ARGUMENT_KEYS}


def login_user() -> str:
    """The user pyinfra logs in as on the current host (owner of the staging directory), also
    when its operations run as root through sudo."""
    return host.get_fact(User, _sudo=False)


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
        # Directories made here (the missing parents too, e.g. /etc/prometheus where no package
        # made it): 0711, so each reader passes through to its own file (no listing); existing
        # ones keep their mode.
        parent = str(Path(dest).parent)
        yield StringCommand(
            "{ [ -d", parent, "] || ( umask 066 && mkdir -p", parent, ") ; } && umask 077",
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


@operation()
def owned_directory(path: str, uid: int, mode: str = "750"):
    """
    A directory owned by a user and group given by number (a container's uid, which may have
    another name on the host, or none), made with its parents when missing.

    + path: absolute path on the host
    + uid: owner and group, by number
    + mode: the directory's mode

    **Example:**

    .. code:: python

        owned_directory(name="Create the app's cache", path="/var/cache/rs/app", uid=1001)
    """
    found = host.get_fact(FileOwnership, path=path)
    if found is not None and (found["uid"], found["gid"], found["mode"]) == (str(uid), str(uid), mode):
        host.noop(f"directory {path} is owned by {uid}")
        return
    yield StringCommand("mkdir -p", path, "&& chown", f"{uid}:{uid}", path, "&& chmod", mode, path)


@operation()
def file_in_one_step(content: str, dest: str, mode: str = "644"):
    """
    Put a text file in place in one step: its readers find the old file or the new one, never
    a part of it, and no file before it is whole.

    + content: the file's text
    + dest: absolute path on the host (its directory exists)
    + mode: the file's mode

    The text is uploaded beside ``dest`` (``<dest>.rsdeploy-new``, on the same filesystem) and
    renamed over it. Nothing changes when ``dest`` holds ``content`` with ``mode`` already.

    **Example:**

    .. code:: python

        file_in_one_step(name="Switch maintenance mode on", content=page,
                         dest="/var/lib/residency-scheduler/maintenance/maintenance.html")
    """
    remote = host.get_fact(File, path=dest)
    if remote and remote["mode"] == int(mode) and \
            host.get_fact(Sha256File, path=dest) == _sha256(content):
        host.noop(f"{dest} is up to date")
        return
    staged = f"{dest}.rsdeploy-new"
    yield FileUploadCommand(StringIO(content), staged)
    yield StringCommand("chmod", mode, QuoteString(staged), "&& mv -f", QuoteString(staged),
                        QuoteString(dest))


def upload(hs: HostSettings, rendered: Iterable[RenderedFile]) -> dict[str, object]:
    """Upload rendered files; returns each path's OperationMeta for change-gated reactions.

    Example: ``metas = apply.upload(hs, nginx.render(hs))``
    """
    # Plain files, then secrets: one order on every host (hosts with other roles interleave the
    # two kinds differently, and pyinfra orders an operation by its position in the code).
    rendered = list(rendered)
    metas = {}
    for f in (f for f in rendered if not f.secret):
        metas[f.path] = files.put(
            name=f"Upload {f.path}", src=StringIO(f.content), dest=f.path,
            user=f.owner, group=f.group, mode=f.mode,
        )
    for f in (f for f in rendered if f.secret):
        metas[f.path] = secret_file(
            name=f"Install secret {f.path}", content=f.content, dest=f.path,
            user=f.owner, group=f.group, staging=staging_dir(hs),
        )
    return metas


@operation()
def only_rendered(directory: str, keep: list[str]):
    """
    Remove the files directly in ``directory`` that are no longer rendered.

    + directory: a directory whose files one role renders entirely (e.g. Prometheus' rules/)
    + keep: the absolute paths rendered into it now

    **Example:**

    .. code:: python

        only_rendered(name="Remove rule files no longer rendered",
                      directory="/opt/residency-scheduler/config/prometheus/rules",
                      keep=["/opt/residency-scheduler/config/prometheus/rules/host.yml"])
    """
    if host.get_fact(Directory, path=directory) is None:
        host.noop(f"{directory} does not exist yet")
        return
    stale = sorted(set(host.get_fact(FindFiles, path=directory, maxdepth=1)) - set(keep))
    if not stale:
        host.noop(f"{directory} holds only rendered files")
        return
    yield StringCommand("rm", "-f", "--", *stale)


def prune(owned: dict[str, tuple[Reaction, ...]], rendered: Iterable[RenderedFile]
          ) -> dict[Reaction, list]:
    """Remove what the roles' own directories hold but no longer render (a rule file of a
    switched-off component, a dropped dashboard); returns the reactions a removal asks for,
    gated on it, to merge with :func:`reactions`.

    ``owned`` maps each directory to the reactions of its readers (``stack.owned_dirs``).
    Example: ``wanted = apply.reactions(...) | apply.prune(stack.owned_dirs(hs), rendered)``
    """
    paths = [f.path for f in rendered]
    found: dict[Reaction, list] = {}
    for directory, readers in sorted(owned.items()):
        removal = only_rendered(name=f"Remove files {directory} no longer renders",
                                directory=directory,
                                keep=[p for p in paths if p.rpartition("/")[0] == directory])
        for reaction in readers:
            found.setdefault(reaction, []).append(removal)
    return found


def reactions(rendered: Iterable[RenderedFile], metas: dict) -> dict[Reaction, list]:
    """Every reaction the files ask for, with the upload operations that ask for it: gate each
    on them with ``_if=any_changed(*gates)``. The one loop over every role's reactions.

    Example: ``wanted = apply.reactions(rendered, apply.upload(hs, rendered))``
    """
    found: dict[Reaction, list] = {}
    for f in rendered:
        for reaction in f.reactions:
            found.setdefault(reaction, []).append(metas[f.path])
    return dict(sorted(found.items(), key=lambda item: (type(item[0]).__name__, item[0])))


class LeftDue:
    """A gate that is on: an earlier run asked for its reaction and stopped before carrying it
    out (see :func:`remember_due`). Gates are read like pyinfra's ``OperationMeta``."""

    def did_change(self) -> bool:
        return True


def due_dir(hs: HostSettings) -> str:
    """A private (0700) directory on the host with one empty file per reaction asked for and
    not yet carried out."""
    return f"{hs.stack.paths.data_dir}/.due"


def _due_marker(hs: HostSettings, key: object) -> str:
    name = re.sub(r"[^A-Za-z0-9.@_-]+", "_", getattr(key, "target", str(key)))[:60]
    return f"{due_dir(hs)}/{type(key).__name__}-{name}-{_sha256(repr(key))[:8]}"


def due_markers(hs: HostSettings, keys: Iterable[object]) -> list[str]:
    """The files that note ``keys`` as due (see :func:`remember_due`), to clear where they are
    carried out. Example: ``apply.due_markers(hs, [Recreate("backend")])``"""
    return [_due_marker(hs, key) for key in keys]


def forget_command(markers: list[str]) -> str:
    """The shell line that clears ``markers`` (from :func:`due_markers`)."""
    return StringCommand("rm", "-f", *(QuoteString(m) for m in markers)).get_raw_value()


def _note_due(state: State, host: Host, hs: HostSettings, wanted: dict) -> None:
    """A pyinfra callback: the markers of the reactions whose gates changed in this run."""
    markers = due_markers(hs, [key for key, gates in wanted.items() if any_changed(*gates)()])
    ok, output = host.run_shell_command(StringCommand(
        "umask 077 && mkdir -p", QuoteString(due_dir(hs)), "&& touch",
        *(QuoteString(m) for m in markers)), **connector_arguments(host))
    if not ok:
        raise OperationError(f"could not note the reactions due: {output.stderr}")


def remember_due(hs: HostSettings, wanted: dict[object, list]) -> dict[object, list]:
    """Note on the host which reactions this run's changes ask for, before any is carried out,
    and gate on the ones an earlier run noted and never carried out: a run cut off between a
    change and its reaction (a failed step, a dropped connection, another host failing under
    ``--fail-percent 0``) has it carried out by the next run, whose files no longer change.
    :func:`forget_due` clears the notes once the run is through. ``wanted``: reactions (or any
    key with a readable ``repr``, e.g. ``"delivery"``) with their gates.

    Example: ``reactions = apply.remember_due(hs, apply.reactions(rendered, metas))``
    """
    left = set(host.get_fact(FindFiles, path=due_dir(hs), maxdepth=1))
    python.call(name="Note what the changed files ask for, until it is done",
                function=_note_due, hs=hs, wanted=wanted,
                _if=any_changed(*(gate for gates in wanted.values() for gate in gates)))
    return {key: [*gates, LeftDue()] if _due_marker(hs, key) in left else list(gates)
            for key, gates in wanted.items()}


def forget_due(hs: HostSettings, *wanted: dict[object, list], done_by: str = "this run") -> None:
    """Clear the notes of :func:`remember_due` for ``wanted``, placed after the steps that carry
    them out (pyinfra stops a host at its first failure, so reaching here says they ran).

    Example: ``apply.forget_due(hs, reactions, {"delivery": delivered})``
    """
    keys = [key for found in wanted for key in found]
    server.shell(name=f"Clear the notes of what {done_by} carried out",
                 commands=[forget_command(due_markers(hs, keys))],
                 _if=any_changed(*(gate for found in wanted for gates in found.values()
                                   for gate in gates)))


def react_on_host(wanted: dict[Reaction, list]) -> None:
    """Carry out the host's own reactions (any layout): rebuild the CA store, reload or restart
    host units. Timers wait for :func:`enable_timers`; stack services for the layout's rollout.

    Example: ``apply.react_on_host(apply.reactions(rendered, metas))``
    """
    # One kind after the other: the same order of operations on hosts with other reactions.
    kinds = (HostCommand, UnitReload, UnitRestart)
    for reaction, gates in sorted(((r, g) for r, g in wanted.items() if isinstance(r, kinds)),
                                  key=lambda item: kinds.index(type(item[0]))):
        changed = any_changed(*gates)
        if isinstance(reaction, HostCommand):
            server.shell(name=f"Run {reaction.target} (its files changed)",
                         commands=[reaction.target], _if=changed)
        elif isinstance(reaction, UnitReload):
            systemd.daemon_reload(name=f"Reload systemd ({reaction.target} changed)", _if=changed)
            systemd.service(name=f"Reload {reaction.target} (its files changed)",
                            service=reaction.target, reloaded=True, _if=changed)
        elif isinstance(reaction, UnitRestart):
            systemd.service(name=f"Restart {reaction.target} (its files changed)",
                            service=reaction.target, restarted=True, _if=changed)


def enable_timers(wanted: dict[Reaction, list]) -> None:
    """Enable and start every timer among the reactions; restart those whose unit files
    changed (after a daemon-reload). Example: ``apply.enable_timers(apply.reactions(...))``
    """
    for reaction, gates in wanted.items():
        if not isinstance(reaction, EnableTimer):
            continue
        timer = reaction.target
        systemd.daemon_reload(name=f"Reload systemd ({timer} changed)", _if=any_changed(*gates))
        systemd.service(name=f"Enable and start {timer}", service=timer, running=True, enabled=True)
        systemd.service(name=f"Restart {timer} (its units changed)", service=timer, restarted=True,
                        _if=any_changed(*gates))


def changed_operations(pyinfra_output: str) -> int:
    """How many operations changed something, from pyinfra's summary (its "Success" column).

    Example: ``changed_operations(run.stdout)`` -> ``0`` for a no-op re-run
    """
    found = re.search(r"Grand total\s+\d+\s+(\d+|-)\s+(?:\d+|-)\s+(?:\d+|-)", pyinfra_output)
    if not found:
        raise ValueError("no pyinfra summary in the output")
    return 0 if found.group(1) == "-" else int(found.group(1))


def install_packages(name: str, packages: list[str], **arguments) -> None:
    """Debian packages a native component needs (package lists refreshed at most hourly).

    Example: ``apply.install_packages("Install Redis", ["redis-server"])``
    """
    apt.packages(name=name, packages=packages, no_recommends=True, update=True, cache_time=3600,
                 **arguments)


#: Grafana Labs' apt repository and its signing key: Grafana, Loki, Alloy and Promtail have no
#: Debian package.
GRAFANA_REPOSITORY = "https://apt.grafana.com stable main"
GRAFANA_KEY_URL = "https://apt.grafana.com/gpg.key"
GRAFANA_KEYRING = "/etc/apt/keyrings/grafana.gpg"


def install_grafana_packages(name: str, packages: list[str]) -> None:
    """Packages from Grafana Labs' apt repository (added once, signed-by its key).

    Example: ``apply.install_grafana_packages("Install Loki", ["loki"])``
    """
    files.directory(name="Create /etc/apt/keyrings", path="/etc/apt/keyrings", mode="755")
    key = files.download(name="Download Grafana's apt signing key", src=GRAFANA_KEY_URL,
                         dest=f"{GRAFANA_KEYRING}.asc", mode="644")
    server.shell(name="Dearmor Grafana's apt signing key", _if=key.did_change,
                 commands=[f"gpg --batch --yes --dearmor -o {GRAFANA_KEYRING} {GRAFANA_KEYRING}.asc"])
    repo = apt.repo(name="Add Grafana's apt repository", filename="grafana",
                    src=f"deb [signed-by={GRAFANA_KEYRING}] {GRAFANA_REPOSITORY}")
    apt.update(name="Refresh package lists for Grafana's repository", _if=repo.did_change)
    apt.packages(name=name, packages=packages, no_recommends=True)


def fail(message: str) -> None:
    """Stop this host's deploy with a clear message (used for facts that rule out a deploy)."""
    raise OperationError(message)
