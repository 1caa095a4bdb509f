"""Rendering: a pure function from one host's settings to the files that host needs.

Nothing here touches a host. Deploys upload exactly what :func:`render_host` returns; ``rsdeploy
render`` writes the same files under ``OUT/<host>/<absolute path>``; tests call it directly.
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
    from rsdeploy.settings import HostSettings


@dataclass(frozen=True)
class RenderedFile:
    """One file as it must exist on a host.

    ``restarts`` names the services (Compose services in the docker layout, systemd units or PM2
    apps in the systemd layout) that read this file and must be restarted or reloaded when it
    changes; the owning role decides which of the two.
    """

    path: str  # absolute destination on the host
    content: str
    role: str  # the role module that owns the file
    mode: str = "644"
    owner: str = "root"
    group: str = "root"
    secret: bool = False  # never shown in diffs or logs; mode must be 600
    restarts: tuple[str, ...] = field(default=())

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


def render_host(hs: HostSettings) -> list[RenderedFile]:
    """Every file one host needs, from every role that applies to it, sorted by path.

    Example: ``files = render_host(load_inventory("inventories/example_docker.py")["rs1"])``
    """
    import roles

    files: list[RenderedFile] = []
    for role in roles.for_host(hs):
        files.extend(role.render(hs))
    seen: dict[str, str] = {}
    for f in files:
        if f.path in seen:
            raise ValueError(f"{f.path} is rendered by both {seen[f.path]} and {f.role}")
        seen[f.path] = f.role
    return sorted(files, key=lambda f: f.path)


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
