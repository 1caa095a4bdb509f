"""The Celery app: ``celery -A app.core.celery_app worker|beat``; broker and results on Redis.

Example::

    celery -A app.core.celery_app worker -Q default,resilience,notifications,metrics,exports,security
    celery -A app.core.celery_app beat
    celery -A app.core.celery_app inspect ping -d celery@$HOSTNAME
"""

from __future__ import annotations

import logging
import os

from celery import Celery, signals
from celery.beat import PersistentScheduler
from celery.schedules import crontab
from kombu import Queue

from app.core import like_real
from app.core.config import get_settings

QUEUES = ["default", "resilience", "notifications", "metrics", "exports", "security"]

RESILIENCE_TASKS = "app.tasks.resilience"

#: The periodic tasks of the real app, at the same times (UTC).
BEAT_SCHEDULE = {
    "periodic-health-check": {
        "task": f"{RESILIENCE_TASKS}.periodic_health_check",
        "schedule": crontab(minute="*/15"),
    },
    "run-contingency-analysis": {
        "task": f"{RESILIENCE_TASKS}.run_contingency_analysis",
        "schedule": crontab(hour=2, minute=0),
    },
    "generate-utilization-forecast": {
        "task": f"{RESILIENCE_TASKS}.generate_utilization_forecast",
        "schedule": crontab(hour=6, minute=0),
    },
    "precompute-fallback-schedules": {
        "task": f"{RESILIENCE_TASKS}.precompute_fallback_schedules",
        "schedule": crontab(hour=3, minute=0, day_of_week="sunday"),
    },
}

settings = get_settings()

celery_app = Celery("residency_scheduler", broker=settings.celery_broker_url,
                    backend=settings.celery_result_backend, include=[RESILIENCE_TASKS])
celery_app.conf.update(
    timezone="UTC",
    enable_utc=True,
    task_queues=[Queue(name) for name in QUEUES],
    task_default_queue="default",
    task_routes={f"{RESILIENCE_TASKS}.*": {"queue": "resilience"}},
    beat_schedule=BEAT_SCHEDULE,
    # The image's /app is read-only for uid 1001: beat keeps its state file in a writable place.
    beat_schedule_filename=os.environ.get("CELERY_BEAT_SCHEDULE_FILE", "/tmp/celerybeat-schedule"),
    broker_connection_retry_on_startup=True,
)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _apply_log_level(logger: logging.Logger, **_) -> None:
    """CELERY_LOG_LEVEL wins over the command line's --loglevel (one place to set it)."""
    logger.setLevel(settings.celery_log_level)


class SlowStartScheduler(PersistentScheduler):
    """Beat's scheduler, opening its schedule file only after REFAPP_BEAT_DELAY seconds: the
    real beat imports the whole app (torch) first, and writes it 27 s after its start."""

    def setup_schedule(self) -> None:
        like_real.slow_start(like_real.from_environment().beat_delay, "celery beat",
                             "REFAPP_BEAT_DELAY")
        super().setup_schedule()


if like_real.from_environment().beat_delay > 0:
    celery_app.conf.beat_scheduler = f"{__name__}:SlowStartScheduler"


# REFAPP_BEAT_MEMORY_MB / REFAPP_CELERY_MEMORY_MB (app.core.like_real): grow like the real app's
# processes when they start, not at import (`celery inspect ping`, the health check, imports
# this module too). The worker's main process is grown before the prefork pool forks: its
# children share those pages, as they would share torch loaded by the main process.
@signals.beat_init.connect
def _beat_like_real(**_) -> None:
    switches = like_real.from_environment()
    like_real.hold_resident(switches.beat_memory_mb, "celery beat")
    if switches.home_writes:
        like_real.write_home("celery beat")


@signals.worker_init.connect
def _worker_like_real(**_) -> None:
    switches = like_real.from_environment()
    like_real.hold_resident(switches.celery_memory_mb, "celery worker")
    if switches.home_writes:
        like_real.write_home("celery worker")
