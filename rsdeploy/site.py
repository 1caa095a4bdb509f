"""A site repository: a team's own repository of inventories, secrets and CI pipelines
(``rsdeploy init`` makes one). Its ``rsdeploy.yml`` names each environment's inventory and
secrets file, so that inside it commands need no ``-i``:

    rsdeploy deploy --version v1.1.0                # the default environment (staging)
    rsdeploy deploy --env production --version v1.1.0
    RSDEPLOY_ENV=production rsdeploy status

``rsdeploy.yml`` is looked for in the current directory and its parents. ``-i INVENTORY``
always wins over it; ``--secrets FILE`` and ``RS_SECRETS_FILE`` win over its secrets file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from rsdeploy.errors import SettingsError, UserError
from rsdeploy.secrets import FILE_ENV
from rsdeploy.types import Line, Name

#: The site file's name, at the top of a site repository.
SITE_FILE = "rsdeploy.yml"
#: Picks the environment when ``--env`` is not given.
ENV_VAR = "RSDEPLOY_ENV"


class EnvironmentFiles(BaseModel):
    """One environment's files, relative to the site file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inventory: Line  # the pyinfra inventory file, e.g. inventories/staging.py
    secrets: Line | None = None  # its secrets file (mode 0600, outside git), e.g. secrets/staging.yml


class SiteFile(BaseModel):
    """What ``rsdeploy.yml`` holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_env: Name  # the environment commands use without --env
    environments: dict[Name, EnvironmentFiles]


@dataclass(frozen=True)
class Target:
    """Where a command's hosts and secrets come from."""

    inventory: str
    secrets: str | None
    environment: str | None = None  # the site's environment, when a site file chose it


def find_site_file(start: Path) -> Path | None:
    """The nearest ``rsdeploy.yml`` in ``start`` or a parent, or None.

    Example: ``find_site_file(Path.cwd())`` -> ``Path("/home/ana/residency-ops/rsdeploy.yml")``
    """
    for directory in (start, *start.parents):
        candidate = directory / SITE_FILE
        if candidate.is_file():
            return candidate
    return None


def read_site_file(path: Path) -> SiteFile:
    """``rsdeploy.yml`` validated; a broken one is a SettingsError naming the key."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SettingsError(str(path), None, None, f"cannot read the site file: {exc}") from None
    try:
        site = SiteFile.model_validate(data if data is not None else {})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or None
        raise SettingsError(str(path), None, key, error["msg"].removeprefix("Value error, "))
    if site.default_env not in site.environments:
        raise SettingsError(str(path), None, "default_env",
                            f"{site.default_env!r} is not one of environments "
                            f"({', '.join(site.environments)})")
    return site


def resolve(inventory: str | None, secrets: str | None, environment: str | None,
            start: Path | None = None) -> Target:
    """The inventory and secrets file a command works on.

    ``-i`` wins; else the site file found from ``start`` (the current directory) picks them for
    ``environment`` (``--env``, else ``$RSDEPLOY_ENV``, else its ``default_env``).
    Example: ``resolve(None, None, "production")`` -> ``Target("/site/inventories/production.py", ...)``
    """
    if inventory is not None:
        if environment is not None:
            raise UserError("--env picks an environment of the site file: give it or -i, not both")
        return Target(inventory, secrets)
    found = find_site_file(start or Path.cwd())
    if found is None:
        raise UserError(f"no inventory: give -i INVENTORY, or run inside a site repository "
                        f"(a directory with {SITE_FILE}; rsdeploy init makes one)")
    site = read_site_file(found)
    name = environment or os.environ.get(ENV_VAR) or site.default_env
    if name not in site.environments:
        raise UserError(f"{found}: no environment {name!r} (environments: "
                        f"{', '.join(site.environments)})")
    files = site.environments[name]
    own_secrets = str(found.parent / files.secrets) if files.secrets else None
    return Target(str(found.parent / files.inventory),
                  secrets or os.environ.get(FILE_ENV) or own_secrets, name)
