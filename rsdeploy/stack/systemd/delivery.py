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

A release is built once per machine that deploys and host platform (``app.release_cache``):
after a build, the release is kept where rsdeploy runs (``~/.cache/rsdeploy/releases``, a
gzipped tar named by the release and a fingerprint of the host's OS, architecture, Python,
Node.js, app user, paths and build environment); an app host of the same fingerprint that lacks
the release gets that file, unpacked beside the others, instead of building again (another app
host, or production after staging from one CI runner). App hosts that lack it in the same run
each build it (they run at once).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.facts.server import Command
from pyinfra.operations import files, python, server

from rsdeploy.roles import backend, frontend
from rsdeploy import apply, source

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: The file a complete build leaves in its release directory.
BUILT_MARKER = ".rsdeploy-built"
#: Characters of the commit id in a release directory's name.
COMMIT_CHARS = 12
#: The build's priority: behind the serving processes for CPU (nice) and disk (best-effort, last).
BUILD_PRIORITY = ("nice", "-n", "10", "ionice", "-c", "2", "-n", "7")
#: Built releases kept where rsdeploy runs, and how many of them (the newest by use).
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rsdeploy" / "releases"
CACHE_KEEP = 12
#: What a built release depends on besides its source, as the host tells it.
PLATFORM = (". /etc/os-release && echo \"$ID $VERSION_ID $(uname -m)\" && python3 -V && "
            f"(node --version || true) && id {backend.APP_USER}")


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


def cached_build(hs: HostSettings, name: str) -> Path:
    """Where this machine keeps the build of release ``name`` for this host's platform (a fact
    read from the host) and build settings.

    Example: ``cached_build(hs, "v1.1.0-3f2a0c1d9e8b")`` -> ``~/.cache/rsdeploy/releases/v1.1.0-...``
    """
    platform = host.get_fact(Command, command=PLATFORM) or ""
    inputs = json.dumps([platform, hs.stack.paths.base_dir, backend.pip_environment(hs),
                         frontend.npm_environment(hs)], sort_keys=True)
    return CACHE_DIR / f"{name}-{hashlib.sha256(inputs.encode()).hexdigest()[:16]}.tar.gz"


@deploy("Build the release on the host")
def build_release(hs: HostSettings, point_next: bool = True) -> list:
    """Build ``hs.stack.version`` into its release directory unless it is built (or unpack this
    machine's build of it, see the module docstring), and point ``next`` at it (not when
    ``point_next`` is false: built ahead of its deploy). Returns the operations, to tell the
    release procedure something changed.

    Example: ``changed = delivery.build_release(hs)``
    """
    repo, commit = source.release(hs)
    name = release_name(hs.stack.version, commit)
    path = f"{releases_dir(hs)}/{name}"
    cached = cached_build(hs, name) if hs.stack.app.release_cache else None
    operations = []
    if host.get_fact(File, path=f"{path}/{BUILT_MARKER}") is not None:
        host.noop(f"{path} is built")
    elif cached is not None and cached.is_file():
        operations += unpack_build(hs, cached, path)
    else:
        staged = {part: source.upload(hs, repo, commit, part) for part in ("backend", "frontend")}
        operations.append(server.shell(
            name=f"Build {hs.stack.version} ({commit[:COMMIT_CHARS]}) in {path}: virtualenv "
                 "(pip) and frontend (npm ci, next build), as the app user",
            commands=build_commands(hs, path, staged)))
        if cached is not None:
            python.call(name=f"Keep the build of {name} on this machine for other app hosts",
                        function=keep_build, path=path, cached=cached,
                        staging=apply.staging_dir(hs), sudo=hs.login_user != "root")
    if point_next:
        operations.append(files.link(name=f"Point {next_link(hs)} at {path}", path=next_link(hs),
                                     target=path))
    return operations


def unpack_build(hs: HostSettings, cached: Path, path: str) -> list:
    """Upload this machine's build of a release and unpack it as ``path`` (beside the serving
    release; it appears whole or not at all, its marker with it)."""
    staged = f"{apply.staging_dir(hs)}/{cached.name}"
    q, part = shlex.quote(path), shlex.quote(f"{path}.part")
    upload = files.put(name=f"Upload this machine's build of {Path(path).name}", src=str(cached),
                       dest=staged, mode="600", add_deploy_dir=False)
    unpack = server.shell(
        name=f"Unpack the build of {Path(path).name} (made on another host of this platform)",
        commands=[f"rm -rf {part} && mkdir -p {part} && tar -xzf {shlex.quote(staged)} -C {part}"
                  f" --strip-components=1 && test -e {part}/{BUILT_MARKER} && rm -rf {q} && "
                  f"mv {part} {q} && rm -f {shlex.quote(staged)}"])
    return [upload, unpack]


def keep_build(path: str, cached: Path, staging: str, sudo: bool) -> None:
    """(A ``python.call`` after a build.) Pack the built release on the host and keep it in
    this machine's cache (written whole, then renamed); the oldest beyond CACHE_KEEP go.
    ``sudo``: the login is not root (the host's commands and the copy go through sudo)."""
    packed = shlex.quote(f"{staging}/{cached.name}")
    parent, name = shlex.quote(str(Path(path).parent)), shlex.quote(Path(path).name)
    ok, output = host.run_shell_command(f"tar -czf {packed} -C {parent} {name}", _sudo=sudo)
    if not ok:
        raise RuntimeError(f"packing {path} failed: {output.stderr}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f".{cached.name}.{os.getpid()}")
    try:
        if not host.get_file(f"{staging}/{cached.name}", str(partial), _sudo=sudo):
            raise RuntimeError(f"copying {staging}/{cached.name} here failed")
        partial.replace(cached)
    finally:
        partial.unlink(missing_ok=True)
        host.run_shell_command(f"rm -f {packed}", _sudo=sudo)
    for old in sorted(CACHE_DIR.glob("*.tar.gz"), key=lambda p: p.stat().st_mtime)[:-CACHE_KEEP]:
        old.unlink(missing_ok=True)
