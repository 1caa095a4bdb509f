"""The stack: the roles composed into one deployable whole, behind one of two layouts.

Layers (imports only run downward; ``lint-imports`` checks it, see pyproject.toml)::

    deploys/*.py, rsdeploy.cli      entry points
    rsdeploy.stack                  this package: settings model, role order, layouts
    roles.*                         one module per component
    rsdeploy core                   settings loader, layout interface, rendering, pyinfra glue

Example::

    hosts = load_inventory("inventories/example_docker.py", "inventories/secrets.example.yml")
    files = render_host(hosts["rs1.example.org"])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyinfra import host, inventory
from pyinfra.api.exceptions import PyinfraError

from rsdeploy import settings as core_settings
from rsdeploy import source
from rsdeploy.errors import SettingsError
from rsdeploy.secrets import load_secrets
from rsdeploy.settings import StackModel, check_app_delivery
from rsdeploy.stack.docker import DockerLayout
from rsdeploy.stack.settings import (
    SINGLE_HOST_ROLES,
    StackSettings,
    check_app_hosts,
    check_ports,
    check_roles,
    for_host,
)
from rsdeploy.stack.systemd import SystemdLayout
from rsdeploy.validate import parse_check

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings
    from rsdeploy.validate import Verdict

#: The stack as the core's loader sees it.
STACK = StackModel(
    settings=StackSettings,
    layouts={"docker": DockerLayout(), "systemd": SystemdLayout()},
    single_host_roles=SINGLE_HOST_ROLES,
    checks=(check_ports, check_app_hosts, check_roles, check_app_delivery),
)

#: Set by the rsdeploy CLI for the pyinfra process: the inventory file, for relative paths and
#: messages (plain ``pyinfra`` runs fall back to "inventory").
INVENTORY_ENV = "RS_INVENTORY"

_loaded: dict[int, dict[str, HostSettings]] = {}


def load_inventory(inventory_path: str, secrets_path: str | None = None,
                   override_data: dict[str, Any] | None = None,
                   env: dict[str, str] | None = None) -> dict[str, HostSettings]:
    """Load and validate every host of a pyinfra inventory file, without contacting any host.

    Example: ``hosts = load_inventory("inventories/example_docker.py", "secrets.yml")``
    """
    return core_settings.load_inventory(STACK, inventory_path, secrets_path, override_data, env)


def current() -> HostSettings:
    """The validated settings of the host pyinfra is preparing operations for.

    Every host of the inventory is validated once per run (topology needs all of them).
    Example (in a deploy file): ``hs = stack.current()``
    """
    key = id(inventory)
    if key not in _loaded:
        try:
            secrets, sources = load_secrets()
            _loaded[key] = core_settings.settings_for_inventory(
                STACK, inventory, os.environ.get(INVENTORY_ENV, "inventory"), secrets, sources)
        except SettingsError as exc:
            raise PyinfraError(f"rsdeploy: {exc}") from None
    hs = _loaded[key][host.name]
    if hs.login_user != "root":  # the deploy user (or bootstrap's initial user): as root by sudo
        host.data._sudo = True
    return hs


def preflight(hs: HostSettings) -> None:
    """What a deploy reads where rsdeploy runs, checked before any host is contacted: the
    release tag in app.source_repo (built from source) and the layout's own (the bundle
    manifest). Raises SettingsError. Example: ``preflight(hosts["rs1.example.org"])``
    """
    if source.needed(hs):
        source.release(hs)
    hs.layout.preflight(hs)


def render_host(hs: HostSettings) -> list[RenderedFile]:
    """Every file one host needs, from every role that applies to it and from its layout,
    sorted by path.

    Example: ``files = render_host(load_inventory("inventories/example_docker.py")["rs1"])``
    """
    files: list[RenderedFile] = []
    for role in for_host(hs):
        files.extend(role.render(hs))
    files.extend(hs.layout.render(hs))
    seen: dict[str, str] = {}
    for f in files:
        if f.path in seen:
            raise ValueError(f"{f.path} is rendered by both {seen[f.path]} and {f.role}")
        seen[f.path] = f.role
    return sorted(files, key=lambda f: f.path)


def install(hs: HostSettings) -> None:
    """Each role's own packages on this host (a role's ``install(hs)``: natively the
    distribution's, nothing in containers), before the files that belong to their users.

    Example (in a deploy file): ``stack.install(hs)``
    """
    for role in for_host(hs):
        if hasattr(role, "install"):
            role.install(hs)


def owned_dirs(hs: HostSettings) -> dict[str, tuple]:
    """Directories whose files one role renders entirely, with the reactions of their readers
    (a role's ``owned_dirs(hs)``): files the role no longer renders are removed from them.

    Example: ``owned_dirs(hs)`` -> ``{"/opt/.../config/prometheus/rules": (Reload("prometheus"),)}``
    """
    owned: dict[str, tuple] = {}
    for role in for_host(hs):
        if hasattr(role, "owned_dirs"):
            owned.update(role.owned_dirs(hs))
    return owned


def check_host(hs: HostSettings, files: list[RenderedFile], tree: Path) -> list[Verdict]:
    """Every verdict for one host: each role's real validators and the layout's, then a parse
    check for the rest."""
    verdicts: list[Verdict] = []
    for role in for_host(hs):
        if hasattr(role, "validate"):
            verdicts.extend(role.validate(tree, hs))
    verdicts.extend(hs.layout.validate(tree, hs))
    covered = {v.path for v in verdicts}
    verdicts.extend(parse_check(tree, f) for f in files if f.path not in covered)
    return verdicts
