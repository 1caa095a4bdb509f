"""The stack's settings model: the core's stack-wide settings plus every role's section, and the
checks that span hosts and sections. One source of truth for templates, deploys and verify.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import PositiveInt

from rsdeploy import roles
from rsdeploy.roles import (  # noqa: F401  (loaded here, used as roles.<name> below)
    alertmanager, backend, backup, base, docker_engine, exporters, flower, frontend, grafana,
    internal_tls, log_shipper, loki, nginx, postgres, prometheus, redis, status, tls,
)
from rsdeploy.errors import SettingsError
from rsdeploy.settings import ROLES, BaseStackSettings
from rsdeploy.stack.docker import project
from rsdeploy.types import Line

if TYPE_CHECKING:
    from types import ModuleType

    from rsdeploy.settings import HostSettings, SecretRules

#: Every role module, in rollout order.
ROLE_MODULES: tuple[ModuleType, ...] = (
    roles.base, roles.docker_engine, roles.internal_tls, roles.postgres, roles.redis, roles.backend, roles.frontend,
    roles.flower, roles.tls, roles.nginx, roles.prometheus, roles.alertmanager, roles.loki,
    roles.log_shipper, roles.grafana, roles.exporters, roles.backup, roles.status,
)
#: Roles one host carries at most: the app may run on several (nginx balances across them).
SINGLE_HOST_ROLES = tuple(role for role in ROLES if role != "app")


class StackSettings(BaseStackSettings):
    """Everything one host of the stack is configured from (pyinfra host data, validated)."""

    base: roles.base.Settings = roles.base.Settings()
    docker: roles.docker_engine.Settings = roles.docker_engine.Settings()
    compose: project.Settings = project.Settings()
    internal_tls: roles.internal_tls.Settings = roles.internal_tls.Settings()
    postgres: roles.postgres.Settings = roles.postgres.Settings()
    redis: roles.redis.Settings = roles.redis.Settings()
    backend: roles.backend.Settings = roles.backend.Settings()
    frontend: roles.frontend.Settings = roles.frontend.Settings()
    flower: roles.flower.Settings = roles.flower.Settings()
    tls: roles.tls.Settings  # how the site gets its certificate (certbot, provided, self-signed)
    nginx: roles.nginx.Settings = roles.nginx.Settings()
    prometheus: roles.prometheus.Settings = roles.prometheus.Settings()
    alertmanager: roles.alertmanager.Settings = roles.alertmanager.Settings()
    loki: roles.loki.Settings = roles.loki.Settings()
    log_shipper: roles.log_shipper.Settings = roles.log_shipper.Settings()
    grafana: roles.grafana.Settings = roles.grafana.Settings()
    exporters: roles.exporters.Settings = roles.exporters.Settings()
    backup: roles.backup.Settings = roles.backup.Settings()
    status: roles.status.Settings = roles.status.Settings()
    # deploys/maintenance.py only (rsdeploy maintenance, or --data maintenance=on): switch the
    # maintenance page on or off; other deploys ignore it
    maintenance: Literal["on", "off"] | None = None
    # deploys/maintenance.py: the page's text (rsdeploy maintenance --message); None: the default
    maintenance_message: Line | None = None
    # deploys/deploy.py: what the release history calls this switch (rsdeploy rollback says
    # "rollback"); the procedure is the same
    release_kind: Literal["deploy", "rollback"] = "deploy"
    # rsdeploy rollback --restore-backup: when the database cannot be downgraded, put back the
    # dump taken while the target release served (rows written since are lost)
    restore_backup: bool = False
    # app hosts switched at once (rsdeploy deploy/rollback --wave N), in inventory order; the
    # next wave starts once this one serves, and a wave with a refused host is the last
    release_wave: PositiveInt = 1


def for_host(hs: HostSettings) -> list[ModuleType]:
    """The role modules that apply to one host, in rollout order."""
    return [role for role in ROLE_MODULES if role.applies(hs)]


def check_roles(hosts: dict[str, HostSettings], rules: SecretRules) -> None:
    """Every role's own rules (its secrets, its cross-field settings) on each host it is on."""
    for hs in hosts.values():
        for role in for_host(hs):
            if hasattr(role, "check"):
                role.check(hs, rules)


def check_app_hosts(hosts: dict[str, HostSettings], rules: SecretRules) -> None:
    """Several app hosts are balanced by the web host over their private addresses: the web
    host then carries no app of its own (its instances would be reached by name instead)."""
    app_hosts = [hs for hs in hosts.values() if hs.has_role("app")]
    for hs in app_hosts if len(app_hosts) > 1 else ():
        if hs.has_role("web"):
            raise SettingsError(hs.source, hs.name, "roles",
                                f"carries web and app while {len(app_hosts)} hosts carry app: "
                                "with several app hosts, nginx balances across them from a web "
                                "host of its own (remove app or web from this host)")


def check_ports(hosts: dict[str, HostSettings], rules: SecretRules) -> None:
    """Two services on one port of one host are refused, naming both settings keys. Each role
    states the ports its services take on a host it applies to (``ports(hs)``).

    Example error: ``inventories/x.py: host rs1: redis.port: 5432 is already postgres.port on
    this host``
    """
    for hs in hosts.values():
        claims = [claim for role in for_host(hs) if hasattr(role, "ports")
                  for claim in role.ports(hs).items()]
        taken: dict[int, str] = {}
        # Fixed ports (no settings key: no dot) first, so that a clash names the setting.
        for key, port in sorted(claims, key=lambda claim: "." in claim[0]):
            if port in taken:
                raise SettingsError(hs.source, hs.name, key,
                                    f"{port} is already {taken[port]} on this host")
            taken[port] = key
