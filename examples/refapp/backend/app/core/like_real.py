"""Switches that make the stand-in behave like the real backend where a deploy feels it.

The real backend (measured: the deployment contract, "Measured on the real backend") is
heavy and slow: torch loads at import, so every uvicorn worker holds 560-670 MB and Celery beat
about 233 MiB; it takes 65-70 s to answer /health on 2 cores; it serves /metrics only with
``ENABLE_METRICS=true``; and some upstream commits cannot migrate. The stand-in is light and
fast, so a deploy that works with it can still fail with the real app. These switches, read
from the environment (rsdeploy's ``backend.extra_env`` puts them in app.env for backend, worker
and beat), bring those traits back:

========================== ========= ==========================================================
variable                   LIKE_REAL effect
========================== ========= ==========================================================
REFAPP_LIKE_REAL=1         -         every switch below on, with the measured figure
REFAPP_WORKER_MEMORY_MB    600       each uvicorn worker holds this many MiB from import on
REFAPP_BEAT_MEMORY_MB      230       Celery beat holds this many MiB from its start on
REFAPP_CELERY_MEMORY_MB    0         the Celery worker likewise (nothing was measured: 0)
REFAPP_STARTUP_DELAY       65        seconds each uvicorn worker spends importing, not serving
REFAPP_METRICS_NEED_ENABLE 1         /metrics only with ENABLE_METRICS=true (404 otherwise)
REFAPP_FAIL_MIGRATION      0         1: ``alembic upgrade`` fails in a data step (fail_migration)
REFAPP_BEAT_DELAY          30        seconds Celery beat spends before it writes its schedule
REFAPP_HOME_WRITES         1         each process writes under HOME and its cache directory at
                                     start, as matplotlib and the model caches do (write_home)
REFAPP_METRICS_CRASH       0         1: with ENABLE_METRICS=true every uvicorn worker fails at
                                     start-up, its master starting new ones (fail_late_middleware)
========================== ========= ==========================================================

Without any of them the app behaves as it always did (light, quick, metrics always on).
Each variable set explicitly wins over the LIKE_REAL figure (``REFAPP_STARTUP_DELAY=5`` with
``REFAPP_LIKE_REAL=1`` is a 5 s start). Memory figures are the process's whole resident set, as
measured on the real app: the process is topped up to that figure, not given it on top.

This module uses the standard library only (tests import it without the app's dependencies).

Example::

    switches = from_environment(os.environ)
    hold_resident(switches.worker_memory_mb, "uvicorn worker")
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("app.like_real")

#: The figures REFAPP_LIKE_REAL=1 applies (APP_CONTRACT.md, "Measured on the real backend").
LIKE_REAL_DEFAULTS = {
    "REFAPP_WORKER_MEMORY_MB": "600",   # "each uvicorn worker holds about 560-670 MB resident"
    "REFAPP_BEAT_MEMORY_MB": "230",     # "Celery beat sits at about 233 MiB"
    "REFAPP_CELERY_MEMORY_MB": "0",     # no figure measured for the Celery worker
    "REFAPP_STARTUP_DELAY": "65",       # "about 65-70 s from container start to a healthy /health"
    "REFAPP_METRICS_NEED_ENABLE": "1",  # "/metrics exists only when ENABLE_METRICS=true"
    "REFAPP_FAIL_MIGRATION": "0",       # a failing migration is asked for, never implied
    "REFAPP_BEAT_DELAY": "30",          # "beat writes its schedule file 27 s after its start"
    "REFAPP_HOME_WRITES": "1",          # "mkdir -p failed for path /home/appuser/.config/matplotlib"
    "REFAPP_METRICS_CRASH": "0",        # only "some upstream versions" crash with metrics on
}

MIB = 1024 * 1024


@dataclass(frozen=True)
class Switches:
    like_real: bool
    worker_memory_mb: int     # MiB resident per uvicorn worker (0: as light as it is)
    beat_memory_mb: int       # MiB resident for Celery beat
    celery_memory_mb: int     # MiB resident for the Celery worker's main process (its pool shares it)
    startup_delay: float      # seconds each uvicorn worker waits at import before it can serve
    metrics_need_enable: bool  # /metrics only when ENABLE_METRICS is "true" (upstream's rule)
    fail_migration: bool      # `alembic upgrade` fails with a PostgreSQL error when it has work
    beat_delay: float         # seconds before Celery beat opens (and writes) its schedule file
    home_writes: bool         # write under HOME and the cache directory at each process start
    metrics_crash: bool       # with metrics on, each uvicorn worker fails at start-up


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _number(name: str, raw: str, kind=int):
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {raw!r}")
    return value


def from_environment(env: Mapping[str, str] = os.environ) -> Switches:
    """The switches in ``env``; ValueError (naming the variable) for a value that is no number.

    Example: ``from_environment({"REFAPP_LIKE_REAL": "1"}).startup_delay`` -> ``65.0``
    """
    like_real = _flag(env.get("REFAPP_LIKE_REAL", ""))

    def raw(name: str) -> str:  # set explicitly, else the LIKE_REAL figure, else off
        return env.get(name, "").strip() or (LIKE_REAL_DEFAULTS[name] if like_real else "0")

    return Switches(
        like_real=like_real,
        worker_memory_mb=_number("REFAPP_WORKER_MEMORY_MB", raw("REFAPP_WORKER_MEMORY_MB")),
        beat_memory_mb=_number("REFAPP_BEAT_MEMORY_MB", raw("REFAPP_BEAT_MEMORY_MB")),
        celery_memory_mb=_number("REFAPP_CELERY_MEMORY_MB", raw("REFAPP_CELERY_MEMORY_MB")),
        startup_delay=_number("REFAPP_STARTUP_DELAY", raw("REFAPP_STARTUP_DELAY"), float),
        metrics_need_enable=_flag(raw("REFAPP_METRICS_NEED_ENABLE")),
        fail_migration=_flag(raw("REFAPP_FAIL_MIGRATION")),
        beat_delay=_number("REFAPP_BEAT_DELAY", raw("REFAPP_BEAT_DELAY"), float),
        home_writes=_flag(raw("REFAPP_HOME_WRITES")),
        metrics_crash=_flag(raw("REFAPP_METRICS_CRASH")),
    )


# --- memory -----------------------------------------------------------------------------------

#: What this process holds on purpose; referenced for the process's lifetime.
_held: list[bytearray] = []


def resident_mib() -> float:
    """This process's resident set (VmRSS) in MiB; 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def hold_resident(target_mib: int, what: str) -> None:
    """Grow this process to at least ``target_mib`` MiB resident and keep it, as torch does when
    it loads: allocate the difference and write every page (untouched pages would not count).

    Under a memory limit too small for it, this is where the kernel OOM-kills the process.
    Example: ``hold_resident(600, "uvicorn worker")``
    """
    if target_mib <= 0:
        return
    missing = int((target_mib - resident_mib()) * MIB)
    if missing > 0:
        log.info("%s: allocating %d MiB (like the real app's imports, to %d MiB resident)",
                 what, missing // MIB, target_mib)
        ballast = bytearray(missing)
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        ballast[::page] = b"\x01" * len(range(0, missing, page))  # every page written, non-zero
        _held.append(ballast)
    log.warning("%s holds %.0f MiB resident (REFAPP memory switch: %d MiB)",
                what, resident_mib(), target_mib)


# --- start-up ---------------------------------------------------------------------------------


def slow_start(seconds: float, what: str, switch: str = "REFAPP_STARTUP_DELAY") -> None:
    """Spend ``seconds`` more at import, as the real backend's imports do: meanwhile the worker
    serves nothing (one worker: the port is not open yet; several: connections wait unanswered),
    beat writes no schedule. ``switch``: the variable that asked for it, named in the log.
    """
    if seconds <= 0:
        return
    log.warning("%s: starting slowly like the real backend, ready in %.0f s (%s)",
                what, seconds, switch)
    time.sleep(seconds)


# --- a library that writes under HOME ------------------------------------------------------------


def write_home(what: str, env: Mapping[str, str] = os.environ) -> None:
    """Write what the real app's libraries write when it starts: a settings directory under
    HOME (matplotlib's ``~/.config/matplotlib``) and a file in the cache directory
    (``$XDG_CACHE_HOME``, else ``~/.cache``: matplotlib's font cache, sentence-transformers'
    models). Where the file system refuses, log matplotlib's own warning and go on, as it does.

    Example: ``write_home("uvicorn worker")``
    """
    home = Path(env.get("HOME") or os.path.expanduser("~"))
    for directory in (Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "matplotlib",
                      Path(env.get("XDG_CACHE_HOME") or home / ".cache") / "matplotlib"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=directory)  # replaced whole: no torn file
            with os.fdopen(handle, "w") as out:
                out.write(f"written by the {what} (REFAPP_HOME_WRITES)\n")
            os.replace(temporary, directory / "like-real.txt")
        except OSError as error:
            log.warning("mkdir -p failed for path %s: %s", directory, error)


# --- a start-up that fails under a live master -----------------------------------------------


def fail_late_middleware(app, instrument) -> None:
    """Fail as upstream versions do with ENABLE_METRICS=true: ``instrument(app)`` adds its
    middleware once the app has built its middleware stack, and Starlette refuses with
    ``RuntimeError: Cannot add middleware after an application has started``.

    Upstream fails so in its lifespan start-up, under an uvicorn whose master starts a new
    worker for each one that exits (every 5 s, forever). The uvicorn here stops its master
    when a worker's lifespan fails (exit code 3), so the stand-in fails while uvicorn imports
    it: the worker exits 1, and its master starts new ones, as measured.
    """
    log.warning("REFAPP_METRICS_CRASH=1 and ENABLE_METRICS=true: adding the metrics middleware "
                "after the app has started, as upstream versions do")
    app.middleware_stack = app.build_middleware_stack()  # what the first ASGI call does
    instrument(app)


# --- migrations -------------------------------------------------------------------------------

#: The data step a broken migration runs: notes.body is NOT NULL in every release.
FAILING_DATA_STEP = "INSERT INTO notes (body, created_at) SELECT NULL, now()"


def fail_migration(connection) -> None:
    """Run a data step that PostgreSQL refuses (NOT NULL violation) on ``connection`` (a
    SQLAlchemy connection inside the migration transaction): the error propagates, Alembic
    prints it and exits 1, and the transaction (the schema changes too) is rolled back.
    """
    log.warning("REFAPP_FAIL_MIGRATION=1: running a data step that violates a NOT NULL constraint, "
                "as broken upstream migrations do; this upgrade is rolled back")
    connection.exec_driver_sql(FAILING_DATA_STEP)
