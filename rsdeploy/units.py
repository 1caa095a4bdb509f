"""Systemd units the stack writes itself: where they go, what their files may name, the sizes
and shares they limit, and ``systemd-analyze verify`` on the rendered ones.

Shared by the roles that render units (the app's services, PM2, the backup timer); imports no role.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rsdeploy.validate import Verdict, systemd_verify

if TYPE_CHECKING:
    from pathlib import Path

    from rsdeploy.types import Resources, Size

UNIT_DIR = "/etc/systemd/system"

_UNIT_SAFE_PATH = re.compile(r"/[A-Za-z0-9/._+-]*")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3,
               "gb": 1024**3}
_NOT_INSTALLED_YET = re.compile(r"^(\S+): Command (/\S+) is not executable: No such file or directory$")


def unit_safe_path(path: str) -> str:
    """Refuse a path that unit files cannot carry unquoted (spaces, ``%``, quotes, ``$``)."""
    if not _UNIT_SAFE_PATH.fullmatch(path):
        raise ValueError(f"{path!r}: systemd-layout paths may only hold letters, digits and /._+-")
    return path


def memory_bytes(size: Size) -> int:
    """A Docker-style size (``512m``, ``1g``; binary units) in bytes. Example: ``memory_bytes("1g")``"""
    digits = size.rstrip("bBkKmMgG")
    return int(digits) * _SIZE_UNITS[size[len(digits):].lower()]


def cpu_quota(resources: Resources) -> str:
    """systemd ``CPUQuota=`` for a share in cores. Example: ``cpu_quota(Resources(cpus=0.5))`` -> ``"50%"``"""
    return f"{round(resources.cpus * 100)}%"


@dataclass(frozen=True)
class AppUnit:
    """What one unit running the app's own code needs (see templates/systemd/_app_unit.j2 and
    pm2-residency.service.j2): its command, limits, user and sandbox paths."""

    name: str
    description: str
    exec_start: list[str]
    resources: Resources
    resources_key: str  # the settings key of ``resources``, named in the unit's comment
    user: str
    uid: int
    type: str = "exec"
    stop_timeout: int = 30
    state_dir: str = ""  # StateDirectory= below /var/lib, where the unit keeps one
    env_file: str = ""
    slot_env_file: str = ""  # the release slot's own variables (``%i``: the unit's instance)
    workdir: str = ""
    log_dir: str = ""
    multiproc_dir: str | None = None
    home_dir: str = ""  # HOME: an empty tmpfs per unit and start (TemporaryFileSystem=)
    cache_dir: str = ""  # a directory of the host it may write (ReadWritePaths=)
    after: tuple[str, ...] = ()

    @property
    def memory_max(self) -> int:
        return memory_bytes(self.resources.memory)

    @property
    def cpu_quota(self) -> str:
        return cpu_quota(self.resources)


def verify_units(tree: Path, paths: list[str], installed_later: tuple[str, ...]) -> list[Verdict]:
    """``systemd-analyze verify`` on rendered units (host paths ``paths`` under ``tree``).

    Verify also checks that each ``ExecStart`` binary exists. Binaries the deploy installs
    later (paths starting with one of ``installed_later``: the release's venv, npm's pm2, our
    own scripts) cannot exist on the machine that renders: exactly that message is tolerated
    for exactly those paths; every other line verify prints fails the unit.
    Example: ``verify_units(tree, ["/etc/systemd/system/x.service"], ("/opt/x/current/",))``
    """
    verdicts = []
    for path in paths:
        verdict = systemd_verify(tree / path.lstrip("/"), path)
        problems = [line for line in verdict.detail.splitlines()
                    if not _installed_later(line, installed_later)]
        tolerated = "" if verdict.ok or problems else "binaries installed by the deploy: " + \
            ", ".join(sorted({m.group(2) for m in map(_NOT_INSTALLED_YET.match,
                                                       verdict.detail.splitlines()) if m}))
        verdicts.append(Verdict(path, verdict.tool, not problems, "\n".join(problems) or tolerated))
    return verdicts


def _installed_later(line: str, prefixes: tuple[str, ...]) -> bool:
    match = _NOT_INSTALLED_YET.match(line.strip())
    return bool(match) and match.group(2).startswith(prefixes)
