"""Releases: what a host records about the releases deployed on it, and what a release is made of.

A host keeps its own account of its releases under ``<data_dir>``:

- ``version``: the tag of the release it serves (rs-status shows it, rs-backup names each dump
  after it, ``rsdeploy verify`` checks it);
- ``releases/history.jsonl``: every release attempt, one JSON object per line, oldest first
  (:class:`Attempt`): ``rsdeploy releases`` prints it, ``rsdeploy rollback`` picks its default
  target from it.

A release is switched unit by unit (:class:`ReleaseUnit`): each long-running service of the app
says how its new instance replaces the old one (:data:`SERVE`, :data:`OVERLAP`, :data:`SINGLE`),
how it proves itself ready (:class:`HttpProbe`, :class:`CommandProbe`: ready, not yet or
wrong) and how long it may take to start (its start period, see :class:`Readiness`); a new
instance whose processes fail again and again is a crash loop (:func:`crash_loop`). The roles
declare their units; the stack's release procedure (:mod:`rsdeploy.stack.release`) carries them
out through the layout, the same in every layout.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from io import StringIO
from typing import TYPE_CHECKING

from pyinfra.operations import files

from rsdeploy import __version__

if TYPE_CHECKING:
    from collections.abc import Callable

    from rsdeploy.settings import HostSettings

# --- what a release is made of ----------------------------------------------------------------

#: Serves requests: the new instance starts beside the old one, passes its probe, then traffic
#: moves to it (graceful reload) and the old one is drained.
SERVE = "serve"
#: Consumes work (a Celery worker): the new instance starts and answers before the old one gets
#: its warm shutdown, so a queue is never without a consumer and no task is lost.
OVERLAP = "overlap"
#: Must never run twice (Celery beat): the old instance is paused while the new one proves
#: itself, then removed (or resumed when the new one fails).
SINGLE = "single"


#: What a probe says of a starting instance: ready; not yet (nothing answers yet, no schedule
#: file yet, no Celery node replied yet); wrong (a started app answers wrongly, or the probe
#: command fails otherwise). See :class:`Readiness` for how they count.
READY, NOT_YET, WRONG = "ready", "not yet", "wrong"

#: curl's exit codes when nothing answered (``curl(1)``), as a reader wants them.
_CURL_NO_ANSWER = {7: "connection refused", 28: "no answer in time", 52: "empty reply",
                   56: "connection reset"}


@dataclass(frozen=True)
class HttpProbe:
    """Ready when ``GET http://127.0.0.1:<port><path>`` inside the instance answers 200."""

    port: int
    path: str

    def describe(self) -> str:
        return self.path

    def ask(self, shell: Callable[[str], tuple[bool, str]], address: str,
            timeout: int) -> tuple[str, str]:
        """``GET http://<address><path>`` with curl on the host (``address``: where the host
        reaches the instance's port): ``(READY | NOT_YET | WRONG, detail)``. Nothing answering
        (connection refused, no answer in time) is not yet; another HTTP status is wrong,
        shown with the start of its body.

        Example: ``HttpProbe(8000, "/health").ask(shell, "172.18.0.5:8000", 10)``
        """
        url = f"http://{address}{self.path}"
        _, output = shell(
            f"curl --silent --max-time {timeout} --output /tmp/rs-probe.$$ "
            f"--write-out '%{{http_code}}' {shlex.quote(url)}; echo \" $?\"; "
            "head -c 300 /tmp/rs-probe.$$ 2>/dev/null; rm -f /tmp/rs-probe.$$")
        first, _, body = output.partition("\n")
        status, _, code = first.strip().partition(" ")
        if status in ("", "000"):
            exit_code = int(code) if code.isdigit() else 0
            return NOT_YET, _CURL_NO_ANSWER.get(exit_code, f"no answer (curl exit {exit_code})")
        if status == "200":
            return READY, ""
        return WRONG, f"{self.path} answered {status} ({' '.join(body.split())[:200]})"


#: The exit code of ``timeout(1)`` when the command ran out of time: not yet.
TIMED_OUT = 124


@dataclass(frozen=True)
class CommandProbe:
    """Ready when ``argv`` exits 0 inside the instance; an exit code in ``not_yet`` (or the
    probe running out of time) means not yet, any other wrong. ``what`` names it in messages.

    Example: ``CommandProbe(("sh", "-c", "ls /run/celerybeat/schedule*"), "its schedule file",
    not_yet=(2,))``: ``ls`` exits 2 while the file is missing.
    """

    argv: tuple[str, ...]
    what: str
    not_yet: tuple[int, ...] = ()

    def describe(self) -> str:
        return self.what

    def ask(self, execute: Callable[[list[str]], tuple[bool, str]], timeout: int) -> tuple[str, str]:
        """Run the command through ``execute`` (in the instance), at most ``timeout`` seconds:
        ``(READY | NOT_YET | WRONG, its last line)``.

        Example: ``probe.ask(lambda argv: rh.exec(instance, argv), 10)``
        """
        # The exit code travels as the last line: every layout's exec passes the output on.
        _, output = execute(["sh", "-c", 'timeout "$0" "$@" 2>&1; echo "exit $?"', str(timeout),
                             *self.argv])
        said, _, status = output.rstrip().rpartition("exit ")
        code = int(status) if status.isdigit() else None
        if code == 0:
            return READY, ""
        if code == TIMED_OUT:
            return NOT_YET, f"no answer in {timeout} s"
        detail = last_line(said if code is not None else output)  # None: exec itself failed
        return (NOT_YET if code in self.not_yet else WRONG), detail


def last_line(output: str) -> str:
    """The last line of a command's output that says something (300 characters at most)."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


@dataclass(frozen=True)
class ReleaseUnit:
    """One long-running service of the app and how a release replaces it.

    Example: ``ReleaseUnit("backend", SERVE, HttpProbe(8000, "/health"), grace=30,
    start_period=120, traffic="backend")``
    """

    service: str  # the layout's name for it (hs.layout.service)
    strategy: str  # SERVE, OVERLAP or SINGLE
    probe: HttpProbe | CommandProbe
    grace: int  # seconds it gets to finish its work when stopped
    start_period: int  # seconds it may take to start: "not yet" counts as a failure after it
    traffic: str | None = None  # SERVE: which proxy target of the web server it is


@dataclass
class Readiness:
    """How a new instance fares on its way to ready, probe after probe. Not yet counts as a
    failure only once its ``start_period`` has passed; a wrong answer counts at once, since an
    app that answers has started (its start period is over); ``retries`` failures in a row
    fail it, a ready answer ends the wait.

    Example::

        gate = Readiness(start_period=120, retries=3)
        gate.failed(NOT_YET, seconds=30)   # -> False: still starting
        gate.failed(WRONG, seconds=31)     # -> False: one failure; two more in a row fail it
    """

    start_period: float
    retries: int
    failures: int = 0
    started: bool = False  # it gave a definite answer: its start period is over

    def failed(self, verdict: str, seconds: float) -> bool:
        """Whether the instance has failed after ``verdict``, ``seconds`` after it started."""
        self.started = self.started or verdict == WRONG
        counts = verdict != READY and (self.started or seconds >= self.start_period)
        self.failures = self.failures + 1 if counts else 0
        return self.failures >= self.retries


# --- crash loops -------------------------------------------------------------------------------

#: The line a program ends with when it fails: ``module.Error: ...`` (Python's last traceback
#: line, Node's ``Error: ...``).
EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Violation|Failure)\b[^:]*: ")
#: Lines that name why a process failed: an exception line, or uvicorn's words for a start-up
#: that failed.
_FAILURE_LINE = re.compile(EXCEPTION_LINE.pattern
                           + r"|^Application startup failed|^Error loading ASGI app")
#: How the app's own supervisors say one of their processes died and was replaced: uvicorn's
#: master, Celery's prefork pool.
_CHILD_DIED = re.compile(r"Child process \[\d+\] died|Process '[\w-]+' pid:\d+ exited with")
#: What a log line starts with before its message: a time stamp (PM2's ``2026-02-20T10:00:00:``,
#: Celery's ``[2026-02-20 10:00:00,123: ERROR/MainProcess]``) and a level (uvicorn's ``ERROR:``).
_LINE_PREFIX = re.compile(r"^(\d{4}-\d\d-\d\d[T ][\d:.,]+:?\s*)?(\[[^\]]*\]\s*)?"
                          r"((DEBUG|INFO|WARNING|ERROR|CRITICAL):\s+)?")
#: Failures that make a crash loop: a process restarted this often since the instance started,
#: or the same failure line logged this often.
CRASH_REPEATS = 3
#: Log lines of a starting instance a layout reads for signs of a crash loop.
CRASH_LOG_LINES = 400


def message_of(line: str) -> str:
    """A log line without its time stamp and level. Example: ``message_of("ERROR:    Application
    startup failed. Exiting.")`` -> ``"Application startup failed. Exiting."``"""
    return _LINE_PREFIX.sub("", line.strip(), count=1)


def repeated_failure(log: str) -> tuple[str, int] | None:
    """The failure line ``log`` repeats most (numbers aside: process ids, addresses), as last
    logged, and how often; an exception line wins over uvicorn's "startup failed". None when
    the log names no failure.

    Example: ``repeated_failure(uvicorn_log)`` -> ``("RuntimeError: Cannot add middleware
    after an application has started", 4)``
    """
    counts: dict[str, list] = {}
    for message in map(message_of, log.splitlines()):
        if _FAILURE_LINE.match(message):
            seen = counts.setdefault(re.sub(r"\d+", "N", message), [0, message])
            seen[0], seen[1] = seen[0] + 1, message
    if not counts:
        return None
    count, line = max(counts.values(),
                      key=lambda seen: (seen[0], bool(EXCEPTION_LINE.match(seen[1]))))
    return line[:300], count


def crash_loop(restarts: int, log: str, seconds: float) -> str | None:
    """Why an instance is in a crash loop, or None: in the ``seconds`` since it started, its
    processes restarted :data:`CRASH_REPEATS` times (``restarts``: its supervisor's own count,
    Docker's, systemd's or PM2's, plus the children its master replaced, from ``log``), or
    ``log`` repeats one failure line that often. The reason names the repeated failure line.

    Example: ``crash_loop(0, uvicorn_log, 14)`` -> ``"crash loop: RuntimeError: Cannot add
    middleware after an application has started (4 times in the 14 s since it started)"``
    """
    restarts += len(_CHILD_DIED.findall(log))
    failure = repeated_failure(log)
    since = f"in the {seconds:.0f} s since it started"
    if failure is not None and (failure[1] >= CRASH_REPEATS or restarts >= CRASH_REPEATS):
        return f"crash loop: {failure[0]} ({failure[1]} times {since})"
    if restarts >= CRASH_REPEATS:
        return f"crash loop: its processes restarted {restarts} times {since}"
    return None


# --- the host's records -------------------------------------------------------------------------


def version_file(hs: HostSettings) -> str:
    """Where the deploy records the deployed version: ``<data_dir>/version``."""
    return f"{hs.stack.paths.data_dir}/version"


def history_file(hs: HostSettings) -> str:
    """Every release attempt on the host, one JSON object per line: ``<data_dir>/releases/history.jsonl``."""
    return f"{hs.stack.paths.data_dir}/releases/history.jsonl"


def record_version(hs: HostSettings) -> object:
    """Write the deployed version to :func:`version_file` (rs-status, rs-backup and verify read it).

    Example (last step of a deploy): ``release.record_version(hs)``
    """
    return files.put(name=f"Record the deployed version {hs.stack.version}",
                     src=StringIO(hs.stack.version + "\n"), dest=version_file(hs), mode="644")


#: Results of an attempt.
OK, FAILED = "ok", "failed"


@dataclass
class Attempt:
    """One release attempt on one host, as ``history.jsonl`` keeps it."""

    version: str
    kind: str  # "deploy" or "rollback"
    who: str
    started: str
    commit: str = ""
    images: dict[str, str] = field(default_factory=dict)  # image -> id (digest) on the host
    previous: str | None = None  # the release that served before
    revision_before: str | None = None  # Alembic revision of the database
    revision_after: str | None = None
    backup: str | None = None  # the dump taken before migrating
    ended: str | None = None
    result: str | None = None  # OK or FAILED
    reason: str | None = None  # why it failed, one line
    rsdeploy_version: str = __version__  # the rsdeploy that made the attempt

    def finish(self, result: str, reason: str | None = None) -> Attempt:
        self.result, self.reason, self.ended = result, reason, now()
        return self

    def line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def now() -> str:
    """The time as history records it. Example: ``"2026-11-30T15:40:07Z"``"""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def who(environ: dict[str, str] | None = None) -> str:
    """Who deploys: the CI job from the CI's own variables, else user@machine.

    Example: ``who({"GITLAB_CI": "true", "CI_PROJECT_PATH": "ops/rs", "CI_JOB_ID": "42",
    "GITLAB_USER_LOGIN": "ana"})`` -> ``"gitlab ops/rs job 42 (ana)"``
    """
    env = os.environ if environ is None else environ
    if env.get("GITHUB_ACTIONS") == "true":
        return (f"github {env.get('GITHUB_REPOSITORY', '?')} run {env.get('GITHUB_RUN_ID', '?')} "
                f"({env.get('GITHUB_ACTOR', '?')})")
    if env.get("GITLAB_CI") == "true":
        return (f"gitlab {env.get('CI_PROJECT_PATH', '?')} job {env.get('CI_JOB_ID', '?')} "
                f"({env.get('GITLAB_USER_LOGIN', '?')})")
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def append_command(hs: HostSettings, attempt: Attempt) -> str:
    """A shell command appending ``attempt`` to the host's history (mode 0644: no secrets in it).

    Example: ``host.run_shell_command(append_command(hs, attempt), _sudo=True)``
    """
    path = history_file(hs)
    return (f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0])} && "
            f"printf '%s\\n' {shlex.quote(attempt.line())} >> {shlex.quote(path)}")


def parse_history(text: str) -> list[dict]:
    """The attempts of a ``history.jsonl``, oldest first. An attempt is written when it begins
    and again when it ends: the last line of each counts (one never ended stays unfinished,
    ``result`` None); a torn line is skipped.

    Example: ``parse_history(ssh_output)[-1]["result"]`` -> ``"ok"``
    """
    attempts: dict[tuple, dict] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        key = (record.get("started"), record.get("version"), record.get("kind"))
        attempts.pop(key, None)  # re-inserted: ordered by its last line
        attempts[key] = record
    return list(attempts.values())


def previous_good(attempts: list[dict]) -> str | None:
    """The release to roll back to: the last successful one before the one serving now.

    Example: after v1.0.0 ok, v1.1.0 ok, v1.2.0-broken failed -> ``"v1.0.0"``
    """
    good = [a["version"] for a in attempts if a.get("result") == OK]
    if not good:
        return None
    current = good[-1]
    older = [version for version in good if version != current]
    return older[-1] if older else None


def table(attempts: list[dict], host: str) -> str:
    """The history as ``rsdeploy releases`` prints it, newest first.

    Example: ``print(table(parse_history(text), "rs1"))``
    """
    rows = [("HOST", "STARTED", "KIND", "VERSION", "RESULT", "SECONDS", "REVISION", "BY",
             "REASON")]
    for a in reversed(attempts):
        seconds = seconds_between(a.get("started"), a.get("ended"))
        revision = f"{a.get('revision_before') or '-'} -> {a.get('revision_after') or '-'}"
        rows.append((host, a.get("started", "?"), a.get("kind", "?"), a.get("version", "?"),
                     a.get("result") or "unfinished", seconds, revision, a.get("who", "?"),
                     a.get("reason") or ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]
                     for row in rows).rstrip()


def seconds_between(started: str | None, ended: str | None) -> str:
    """Whole seconds between two history times, "-" when one is missing."""
    if not started or not ended:
        return "-"
    parse = lambda text: datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    return str(int((parse(ended) - parse(started)).total_seconds()))


# --- what the deploy tells the rsdeploy command --------------------------------------------------

#: Set by the rsdeploy CLI for the pyinfra process: a local file where the release procedure
#: appends one JSON line per host whose release was refused (exit code 3, the summary's reason).
OUTCOME_ENV = "RSDEPLOY_OUTCOME"


def report_outcome(host: str, version: str, result: str, reason: str | None,
                   serving: str | None) -> None:
    """Tell the rsdeploy command how a host's release went (nothing under plain pyinfra);
    ``serving``: the release that serves there after it (None: nothing serves).

    Example: ``report_outcome("rs1", "v1.2.0-broken", FAILED, "/health answered 503", "v1.0.0")``
    """
    path = os.environ.get(OUTCOME_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"host": host, "version": version, "result": result,
                                  "reason": reason, "serving": serving}) + "\n")


def what_serves(host: str, serving: str | None) -> str:
    """What serves on ``host`` once a release was refused there: the release that served
    before, or nothing (the refused one was its first).

    Example: ``what_serves("rs1", None)`` -> ``"nothing serves on rs1: no release served there before"``
    """
    if serving is None:
        return f"nothing serves on {host}: no release served there before"
    return f"the previous release {serving} keeps serving on {host}"
