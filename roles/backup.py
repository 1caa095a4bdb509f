"""Scheduled PostgreSQL backups (pg_dump, custom format) with retention, and their restore
(role ``db``).

``/usr/local/sbin/rs-backup`` writes ``<directory>/<db>-<UTC timestamp>-<version>.dump``, checks
it with ``pg_restore --list`` and deletes dumps older than ``retention_days``; ``rs-backup.timer``
runs it. Each run, good or failed, is published in the node-exporter textfile directory
(:data:`METRICS_FILE`): the alerts BackupFailed and BackupStale
(``templates/prometheus/rules/backup.yml``) read it. ``/usr/local/sbin/rs-restore DUMP`` puts
one back (``rsdeploy db restore``). No
password is involved: pg_dump runs inside the db container over its socket (docker
layout) or as the postgres superuser with peer authentication (systemd layout).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from rsdeploy.layout import EnableTimer
from rsdeploy.release import version_file
from rsdeploy.release_metrics import escape_label_value, metrics_dir, stack_label
from rsdeploy.render import RenderedFile, template
from rsdeploy.types import Section
from rsdeploy.units import UNIT_DIR, unit_safe_path, verify_units
from rsdeploy.validate import check_script, run_tool

if TYPE_CHECKING:
    from pathlib import Path

    from rsdeploy.settings import HostSettings
    from rsdeploy.validate import Verdict

SCRIPT = "/usr/local/sbin/rs-backup"
RESTORE_SCRIPT = "/usr/local/sbin/rs-restore"
#: The app's services that write to the database (stopped while a dump is restored).
WRITERS = (("backend", "residency-backend"), ("celery-worker", "residency-celery-worker"),
           ("celery-beat", "residency-celery-beat"))
SERVICE = "rs-backup.service"
TIMER = "rs-backup.timer"
#: What rs-backup publishes for Prometheus (in ``release_metrics.metrics_dir``).
METRICS_FILE = "rsdeploy_backup.prom"


class Settings(Section):
    enabled: bool = True  # run scheduled backups on the db host
    on_calendar: str = "*-*-* 02:30:00 UTC"  # systemd OnCalendar= expression
    retention_days: int = Field(default=14, ge=1, le=3650)  # delete dumps older than this
    directory: str = "/var/lib/residency-scheduler/backups"  # where dumps are kept on the db host

    @field_validator("on_calendar")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9 *:,./~_+-]+", value):
            raise ValueError(f"{value!r} is not a systemd OnCalendar= expression "
                             "(e.g. '*-*-* 02:30:00 UTC' or 'daily')")
        return value

    @field_validator("directory")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not re.fullmatch(r"/[A-Za-z0-9/._+-]*[A-Za-z0-9._+-]", value):
            raise ValueError(f"{value!r} must be an absolute path of letters, digits and /._+-")
        return value


def applies(hs: HostSettings) -> bool:
    return hs.has_role("db") and hs.stack.backup.enabled


def metrics_labels(hs: HostSettings) -> str:
    """The labels of every sample rs-backup publishes, in the exposition format.

    Example: ``metrics_labels(hs)`` -> ``'stack="scheduler.example.org",kind="dump"'``
    """
    return f'stack="{escape_label_value(stack_label(hs))}",kind="dump"'


def render(hs: HostSettings) -> list[RenderedFile]:
    s = hs.stack
    script = template("backup/rs-backup.sh.j2", hs, database=s.postgres.database,
                      db_user=s.postgres.user, version_file=version_file(hs),
                      metrics_dir=metrics_dir(hs), metrics_file=METRICS_FILE,
                      metrics_labels=metrics_labels(hs),
                      max_age_seconds=s.status.backup_max_age_hours * 3600,
                      **hs.layout.script_context(hs))
    restore = template("backup/rs-restore.sh.j2", hs, database=s.postgres.database,
                       db_user=s.postgres.user, backup_script=SCRIPT,
                       writers=[hs.layout.service(c, u) for c, u in WRITERS],
                       **hs.layout.script_context(hs))
    service = template("backup/rs-backup.service.j2", hs, script=unit_safe_path(SCRIPT),
                       after=hs.layout.unit_after("db"))
    timer = template("backup/rs-backup.timer.j2", hs)
    return [
        RenderedFile(SCRIPT, script, "backup", mode="755"),
        RenderedFile(RESTORE_SCRIPT, restore, "backup", mode="755"),
        RenderedFile(f"{UNIT_DIR}/{SERVICE}", service, "backup"),
        RenderedFile(f"{UNIT_DIR}/{TIMER}", timer, "backup", reactions=(EnableTimer(TIMER),)),
    ]


def validate(tree: Path, hs: HostSettings) -> list[Verdict]:
    """bash -n / shellcheck on rs-backup; systemd-analyze calendar + verify on the timer pair
    (rs-backup itself is in the rendered tree, not yet on this machine: tolerated by path).
    """
    calendar = run_tool(["systemd-analyze", "calendar", hs.stack.backup.on_calendar],
                        f"{UNIT_DIR}/{TIMER}", "systemd-analyze calendar")
    units = verify_units(tree, [f"{UNIT_DIR}/{SERVICE}", f"{UNIT_DIR}/{TIMER}"], (SCRIPT,))
    return [*check_script(tree, SCRIPT), *check_script(tree, RESTORE_SCRIPT), calendar, *units]
