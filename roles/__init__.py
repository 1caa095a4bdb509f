"""One module per component. Each role module has, top to bottom:

* ``Settings``: its section of the stack settings, every field with a default and a one-line meaning;
* ``applies(hs)``: whether the component belongs on a host (its roles, layout and switches);
* ``render(hs)``: the files it needs on that host (pure; no host contacted);
* optionally ``validate(tree, hs)``: run the real validator on the rendered files;
* pyinfra ``@deploy`` functions that install and configure it, and optionally
  ``react(hs, changed)``: reload or restart what reads its changed files (``changed`` maps a
  service to the upload operations of the files it reads, see ``rsdeploy.apply.readers``).

A role reads the shared settings model only; it never opens another role's files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

    from rsdeploy.settings import HostSettings


def all_roles() -> list[ModuleType]:
    """Every role module, in rollout order."""
    from roles import (
        alertmanager,
        backend,
        backup,
        base,
        compose,
        docker_engine,
        exporters,
        frontend,
        grafana,
        log_shipper,
        loki,
        nginx,
        postgres,
        prometheus,
        redis,
        status,
    )

    return [
        base, docker_engine, postgres, redis, backend, frontend, nginx, prometheus,
        alertmanager, loki, log_shipper, grafana, exporters, backup, status, compose,
    ]


def for_host(hs: HostSettings) -> list[ModuleType]:
    """The role modules that apply to one host."""
    return [role for role in all_roles() if role.applies(hs)]
