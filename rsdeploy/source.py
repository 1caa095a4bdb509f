"""The app's source at a release tag, read on the machine running rsdeploy (``app.source_repo``).

Hosts never need git, network access to the repository or its credentials: the deploy resolves
the tag here and uploads ``git archive`` of the parts it builds (docker layout, ``build``
delivery; later the systemd layout's releases). A URL is mirrored once into a local cache and
fetched again on each use; a path is used as it is.

Example::

    repo, commit = source.release(hs)              # the repository and hs.stack.version's commit
    tarball = source.archive(repo, commit, "backend")  # backend/ of that commit, as a tar file
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from pyinfra.operations import files

from rsdeploy import apply
from rsdeploy.errors import SettingsError, UserError

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: Mirrors of remote repositories and the archives made from them.
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rsdeploy" / "source"


class SourceError(UserError):
    """The app's repository or tag cannot be read."""


def _git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    if result.returncode:
        detail = (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise SourceError(f"git {args[0]}: {detail}")
    return result.stdout.strip()


def _is_url(location: str) -> bool:
    return "://" in location or (":" in location and "@" in location.split(":", 1)[0])


def needed(hs: HostSettings) -> bool:
    """Whether this host's deploy builds the release from source (its layout says when)."""
    return hs.layout.builds_from_source(hs) and hs.has_role("app")


def release(hs: HostSettings) -> tuple[Path, str]:
    """(local repository, commit of the release tag ``hs.stack.version``); a missing repository
    or tag is a settings error naming the inventory, host and key, raised before any host is
    contacted. Example: ``repo, commit = release(hs)``
    """
    try:
        repo = repository(hs)
        return repo, commit(repo, hs.stack.version)
    except SourceError as exc:
        raise SettingsError(hs.source, hs.name, "app.source_repo", str(exc)) from None


def repository(hs: HostSettings) -> Path:
    """A local repository holding ``app.source_repo``'s tags: the path itself (relative to the
    inventory), or a mirror of the URL under CACHE_DIR, fetched now.

    Example: ``repository(hs)`` -> ``Path("/srv/residency-scheduler")``
    """
    location = hs.stack.app.source_repo
    if not _is_url(location):
        path = Path(hs.source).parent / location
        if not path.is_dir():
            raise SourceError(f"{path} is not a directory")
        return path
    mirror = CACHE_DIR / (hashlib.sha256(location.encode()).hexdigest()[:16] + ".git")
    if mirror.is_dir():
        _git("--git-dir", str(mirror), "fetch", "--quiet", "--prune", "--tags", "--", location,
             "+refs/heads/*:refs/heads/*")
    else:
        mirror.parent.mkdir(parents=True, exist_ok=True)
        _git("clone", "--quiet", "--mirror", "--", location, str(mirror))
    return mirror


def commit(repo: Path, tag: str) -> str:
    """The commit a release tag names (annotated or lightweight); a branch name is refused, as
    the deploy must be reproducible. Example: ``commit(repo, "v1.0.0")`` -> ``"3f2a..."``
    """
    try:
        return _git("--git-dir", _git_dir(repo), "rev-parse", "--verify", "--quiet",
                    f"refs/tags/{tag}^{{commit}}")
    except SourceError:
        raise SourceError(f"{repo} has no tag {tag}") from None


def _git_dir(repo: Path) -> str:
    return str(repo / ".git") if (repo / ".git").exists() else str(repo)


def archive(repo: Path, revision: str, part: str) -> Path:
    """``part/`` (e.g. ``backend``) of ``revision`` as a tar file in CACHE_DIR (reused: a
    commit's content never changes). Example: ``archive(repo, commit, "frontend")``
    """
    tarball = CACHE_DIR / "archives" / f"{revision}-{part}.tar"
    if not tarball.is_file():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        _git("--git-dir", _git_dir(repo), "archive", "--format=tar", f"--output={partial}",
             revision, f"{part}/")
        partial.rename(tarball)
    return tarball


def upload(hs: HostSettings, repo: Path, revision: str, part: str) -> str:
    """Upload ``part/`` of ``revision`` as a tar file to the host's private staging directory
    (mode 0600); returns its path there, for the build to extract and remove.

    Example: ``staged = source.upload(hs, repo, commit, "backend")``
    """
    staged = f"{apply.staging_dir(hs)}/{part}-{revision[:12]}.tar"
    files.put(name=f"Upload the {part} source of {hs.stack.version} ({revision[:12]})",
              src=str(archive(repo, revision, part)), dest=staged, mode="600",
              add_deploy_dir=False)
    return staged
