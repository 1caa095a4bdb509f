"""Resilience status and gauges, standing in for the real scheduler's resilience framework.

The real app measures staff utilisation; the stand-in reports a fixed utilisation and turns
``degraded`` when PostgreSQL or Redis does not answer, which is what deploy checks look at.

Example::

    report = assess()      # {"status": "operational", "components": [...], "checks": {...}}
"""

from __future__ import annotations

import redis
from prometheus_client import Gauge

from app.core.config import get_settings
from app.core.database import database_answers

COMPONENTS = ["utilization_monitor", "defense_in_depth", "contingency_analyzer", "fallback_scheduler"]

#: Stand-in utilisation per staff group (the real app computes it from schedules).
UTILIZATION = {"faculty": 0.55, "residents": 0.6}

#: Upper bounds of the levels GREEN, YELLOW, ORANGE, RED; anything above is BLACK (4).
LEVEL_BOUNDS = (0.7, 0.8, 0.9, 0.95)

# "mostrecent": with several uvicorn workers the scrape shows the latest value any worker set.
UTILIZATION_RATE = Gauge("resilience_utilization_rate", "Utilisation per staff group (0..1)",
                         ["component"], multiprocess_mode="mostrecent")
UTILIZATION_LEVEL = Gauge("resilience_utilization_level", "0 GREEN, 1 YELLOW, 2 ORANGE, 3 RED, 4 BLACK",
                          multiprocess_mode="mostrecent")
DEFENSE_LEVEL = Gauge("resilience_defense_level", "Active defense-in-depth level (1..5)",
                      multiprocess_mode="mostrecent")

REDIS_TIMEOUT = 3


def utilization_level(rate: float) -> int:
    """0 (GREEN) .. 4 (BLACK) for a utilisation rate, e.g. ``utilization_level(0.85) == 2``."""
    return sum(rate >= bound for bound in LEVEL_BOUNDS)


def redis_answers() -> bool:
    """True when Redis answers PING with the configured password."""
    settings = get_settings()
    try:
        client = redis.Redis.from_url(settings.redis_url, password=settings.redis_password or None,
                                      socket_timeout=REDIS_TIMEOUT,
                                      socket_connect_timeout=REDIS_TIMEOUT)
        with client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def assess() -> dict:
    """Check the dependencies, update the gauges and return the /health/resilience body."""
    checks = {"database": database_answers(), "redis": redis_answers()}
    operational = all(checks.values())
    for group, rate in UTILIZATION.items():
        UTILIZATION_RATE.labels(component=group).set(rate)
    UTILIZATION_LEVEL.set(utilization_level(max(UTILIZATION.values())))
    DEFENSE_LEVEL.set(1 if operational else 2)
    return {
        "status": "operational" if operational else "degraded",
        "components": COMPONENTS,
        "checks": {name: "ok" if ok else "unreachable" for name, ok in checks.items()},
    }
