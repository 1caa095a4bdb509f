"""Rendering: a pure function from one host's settings to the files that host needs.

Nothing here touches a host. Deploys upload exactly what :func:`rsdeploy.stack.render_host`
returns (every role's files, made with the helpers here); ``rsdeploy render`` writes the same
files under ``OUT/<host>/<absolute path>``; tests call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from rsdeploy import TEMPLATES_DIR
from rsdeploy.escape import FILTERS

if TYPE_CHECKING:
    from rsdeploy.layout import Reaction
    from rsdeploy.settings import HostSettings


@dataclass(frozen=True)
class RenderedFile:
    """One file as it must exist on a host.

    ``reactions`` say what a change of this file asks for (reload or restart a service, recreate
    it, run a command, enable a timer: :mod:`rsdeploy.layout`); the owning role decides which.
    """

    path: str  # absolute destination on the host
    content: str
    role: str  # the role module that owns the file
    mode: str = "644"
    owner: str = "root"
    group: str = "root"
    secret: bool = False  # never shown in diffs or logs; mode must be 600
    reactions: tuple[Reaction, ...] = field(default=())

    def __post_init__(self):
        if not self.path.startswith("/"):
            raise ValueError(f"destination must be absolute: {self.path}")
        if self.secret and self.mode != "600":
            raise ValueError(f"secret file {self.path} must have mode 600, not {self.mode}")


@cache
def environment() -> jinja2.Environment:
    """The Jinja environment for every template: strict, no autoescape, format filters loaded."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(FILTERS)
    return env


def template(name: str, hs: HostSettings, **extra) -> str:
    """Render ``templates/<name>`` for one host.

    Templates see ``s`` (the host's StackSettings), ``secrets``, ``topology``, ``hs`` (the whole
    HostSettings, for helpers such as ``hs.endpoint("db")``) and any ``extra`` keywords.

    Example: ``template("nginx/site.conf.j2", hs)``
    """
    return environment().get_template(name).render(
        s=hs.stack, secrets=hs.secrets, topology=hs.topology, hs=hs, **extra
    )


def static(name: str) -> str:
    """The text of a file under ``templates/`` that is copied as it is (no Jinja)."""
    return (TEMPLATES_DIR / name).read_text()


def write_tree(files: list[RenderedFile], root: Path) -> list[Path]:
    """Write rendered files below ``root`` (``root/<absolute path>``) with their modes."""
    written = []
    for f in files:
        target = root / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.content)
        target.chmod(int(f.mode, 8))
        written.append(target)
    return written
