"""The periodic resilience tasks (stand-ins: they check dependencies and log what they did)."""

from __future__ import annotations

import logging

from app.core.celery_app import celery_app
from app.core.resilience import assess

log = logging.getLogger(__name__)


@celery_app.task
def periodic_health_check() -> dict:
    report = assess()
    log.info("periodic health check: %s", report["status"])
    return report


@celery_app.task
def run_contingency_analysis() -> str:
    log.info("contingency analysis (stand-in): nothing to analyse")
    return "done"


@celery_app.task
def generate_utilization_forecast() -> str:
    log.info("utilization forecast (stand-in): nothing to forecast")
    return "done"


@celery_app.task
def precompute_fallback_schedules() -> str:
    log.info("fallback schedules (stand-in): nothing to precompute")
    return "done"
