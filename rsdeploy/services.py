"""Which of the services people name each selected host runs: the names are the Compose
services' in either layout (``backend``, ``db``, ``nginx``); each layout says what a host runs
(:meth:`rsdeploy.layout.Layout.log_sources`, :meth:`~rsdeploy.layout.Layout.controls`).

Example: ``by_host(hosts, ["db"], lambda hs: hs.layout.controls(hs))`` -> ``{"db1": ["db"]}``
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from rsdeploy.errors import UserError

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: The operations guide's names of services, as people type them (its container names, dev
#: and prod, and the manual layout's unit and PM2 names): the Compose service each stands for.
GUIDE_NAMES = {
    "residency-scheduler-db": "db", "residency-scheduler-backend": "backend",
    "residency-scheduler-frontend": "frontend", "rs-redis-prod": "redis",
    "rs-celery-prod": "celery-worker", "residency-backend": "backend",
    "residency-frontend": "frontend", "postgresql": "db",
}

#: The order services start in across hosts: a host's place is that of its first role here.
START_ORDER = ("db", "redis", "app", "monitoring", "web")


def by_host(hosts: dict[str, HostSettings], wanted: Iterable[str],
            offered: Callable[[HostSettings], Iterable[str]]) -> dict[str, list[str]]:
    """For each host, those of ``wanted`` it runs (every one it runs when none is named), in
    its own order; hosts running none are left out. The guide's names (:data:`GUIDE_NAMES`)
    stand for their services. UserError for a name no host runs."""
    wanted = [GUIDE_NAMES.get(service, service) for service in wanted]
    running = {name: list(offered(hs)) for name, hs in hosts.items()}
    everywhere = sorted({service for services in running.values() for service in services})
    unknown = [service for service in wanted if service not in everywhere]
    if unknown:
        raise UserError(f"no selected host runs {unknown[0]} (services: {', '.join(everywhere)})")
    picked = {name: [s for s in services if not wanted or s in wanted]
              for name, services in running.items()}
    return {name: services for name, services in picked.items() if services}


def start_order(hosts: dict[str, HostSettings]) -> list[str]:
    """The hosts in the order their services start (data stores first, web last); stopping
    goes the other way. Example: ``start_order(hosts)`` -> ``["db1", "app1", "web1"]``"""
    def place(name: str) -> int:
        return min((START_ORDER.index(role) for role in START_ORDER if hosts[name].has_role(role)),
                   default=len(START_ORDER))
    return sorted(hosts, key=place)
