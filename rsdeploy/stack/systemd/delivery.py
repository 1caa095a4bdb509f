"""The systemd layout's releases: the tag's source built on the host, once per commit.

``<base_dir>/releases/<tag>-<commit>/`` holds ``backend/`` and ``frontend/`` of the tag (``git
archive``, uploaded: hosts need no git and no repository credentials), ``venv/`` (``pip
install -r backend/requirements.txt``) and the frontend's standalone build (``npm ci && npm run
build``), both run as the app user, never as root, with the host's CA bundle when extra CAs are
trusted and with shared download caches. ``.rsdeploy-built`` marks a complete build: such a
release is never built again (a moved tag is another commit, so another directory); one without
it (a failed or cut-off build) is removed and built again. Nothing serving is touched while a
release builds: ``<base_dir>/next`` then links the release the deploy brings, and the release
procedure starts it in a slot beside the serving one. The build runs at a low CPU and I/O
priority: it takes what the serving release leaves, so answers stay fast while it compiles.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import files, server

from rsdeploy.roles import backend, frontend
from rsdeploy import source

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: The file a complete build leaves in its release directory.
BUILT_MARKER = ".rsdeploy-built"
#: Characters of the commit id in a release directory's name.
COMMIT_CHARS = 12
#: The build's priority: behind the serving processes for CPU (nice) and disk (best-effort, last).
BUILD_PRIORITY = ("nice", "-n", "10", "ionice", "-c", "2", "-n", "7")


def releases_dir(hs: HostSettings) -> str:
    return f"{hs.stack.paths.base_dir}/releases"


def next_link(hs: HostSettings) -> str:
    """The symlink to the release the deploy brings (the uploaded definition's release)."""
    return f"{hs.stack.paths.base_dir}/next"


def current_link(hs: HostSettings) -> str:
    """The symlink to the release serving, set once a switch is done (for people and tools)."""
    return f"{hs.stack.paths.base_dir}/current"


def release_name(version: str, commit: str) -> str:
    """A release directory's name. Example: ``release_name("v1.1.0", "3f2a...")`` -> ``"v1.1.0-3f2a0c1d9e8b"``"""
    return f"{version}-{commit[:COMMIT_CHARS]}"


def _build_step(env: dict[str, str], script: str) -> str:
    """``script`` as the app user with ``env``, behind the serving processes (BUILD_PRIORITY)."""
    return shlex.join([*BUILD_PRIORITY, "runuser", "-u", backend.APP_USER, "--", "env",
                       *(f"{k}={v}" for k, v in sorted(env.items())), "sh", "-euc", script])


def build_commands(hs: HostSettings, path: str, staged: dict[str, str]) -> list[str]:
    """The shell lines that build a release in ``path`` from the uploaded ``staged`` archives."""
    q = shlex.quote(path)
    pip_env = backend.pip_environment(hs)
    user = backend.APP_USER
    return [
        f"rm -rf {q} && install -d -o {user} -g {user} -m 755 {q}",
        *(f"tar -x -C {q} -f {shlex.quote(tarball)} && rm -f {shlex.quote(tarball)}"
          for tarball in staged.values()),
        f"chown -R {user}:{user} {q}",
        _build_step(pip_env, f"python3 -m venv {q}/venv && {q}/venv/bin/pip install --quiet "
                              f"--requirement {q}/backend/requirements.txt && "
                              f"{q}/venv/bin/python -m compileall -q {q}/backend"),
        _build_step(frontend.npm_environment(hs),
                     f"cd {q}/frontend && npm ci --no-audit --no-fund && npm run build"),
        f"touch {q}/{BUILT_MARKER}",
    ]


@deploy("Build the release on the host")
def build_release(hs: HostSettings, point_next: bool = True) -> list:
    """Build ``hs.stack.version`` into its release directory unless it is built, and point
    ``next`` at it (not when ``point_next`` is false: built ahead of its deploy). Returns the
    operations, to tell the release procedure something changed.

    Example: ``changed = delivery.build_release(hs)``
    """
    repo, commit = source.release(hs)
    path = f"{releases_dir(hs)}/{release_name(hs.stack.version, commit)}"
    operations = []
    if host.get_fact(File, path=f"{path}/{BUILT_MARKER}") is None:
        staged = {part: source.upload(hs, repo, commit, part) for part in ("backend", "frontend")}
        operations.append(server.shell(
            name=f"Build {hs.stack.version} ({commit[:COMMIT_CHARS]}) in {path}: virtualenv "
                 "(pip) and frontend (npm ci, next build), as the app user",
            commands=build_commands(hs, path, staged)))
    else:
        host.noop(f"{path} is built")
    if point_next:
        operations.append(files.link(name=f"Point {next_link(hs)} at {path}", path=next_link(hs),
                                     target=path))
    return operations
