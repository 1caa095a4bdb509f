"""Releases: what a host records about the releases deployed on it, and what a release is made of.

A host keeps its own account of its releases under ``<data_dir>``:

- ``version``: the tag of the release it serves (rs-status shows it, rs-backup names each dump
  after it, ``rsdeploy verify`` checks it);
- ``releases/history.jsonl``: every release attempt, one JSON object per line, oldest first
  (:class:`Attempt`): ``rsdeploy releases`` prints it, ``rsdeploy rollback`` picks its default
  target from it.

A release is switched unit by unit (:class:`ReleaseUnit`): each long-running service of the app
says how its new instance replaces the old one (:data:`SERVE`, :data:`OVERLAP`, :data:`SINGLE`)
and how it proves itself ready (:class:`HttpProbe`, :class:`CommandProbe`). The roles declare
their units; the stack's release procedure (:mod:`rsdeploy.stack.release`) carries them out
through the layout, the same in every layout.
"""

from __future__ import annotations

import getpass
import json
import os
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
        reaches the instance's port): ``("ok" | "no answer" | "bad", detail)``; "bad" is a
        definite wrong answer (another HTTP status), shown with the start of its body.

        Example: ``HttpProbe(8000, "/health").ask(shell, "172.18.0.5:8000", 10)``
        """
        url = f"http://{address}{self.path}"
        _, output = shell(
            f"curl --silent --max-time {timeout} --output /tmp/rs-probe.$$ "
            f"--write-out '%{{http_code}}' {shlex.quote(url)}; echo; "
            "head -c 300 /tmp/rs-probe.$$ 2>/dev/null; rm -f /tmp/rs-probe.$$")
        status, _, body = output.partition("\n")
        if status.strip() in ("", "000"):
            return "no answer", "no answer"
        if status.strip() == "200":
            return "ok", ""
        return "bad", f"{self.path} answered {status.strip()} ({' '.join(body.split())[:200]})"


@dataclass(frozen=True)
class CommandProbe:
    """Ready when ``argv`` exits 0 inside the instance. ``what`` names it in messages."""

    argv: tuple[str, ...]
    what: str

    def describe(self) -> str:
        return self.what

    def ask(self, execute: Callable[[list[str]], tuple[bool, str]], timeout: int) -> tuple[str, str]:
        """Run the command through ``execute`` (in the instance), at most ``timeout`` seconds:
        ``("ok", "")`` or ``("bad", its last line)``.

        Example: ``probe.ask(lambda argv: rh.exec(instance, argv), 10)``
        """
        ok, output = execute(["timeout", str(timeout), *self.argv])
        return ("ok", "") if ok else ("bad", last_line(output))


def last_line(output: str) -> str:
    """The last line of a command's output that says something (300 characters at most)."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


@dataclass(frozen=True)
class ReleaseUnit:
    """One long-running service of the app and how a release replaces it.

    Example: ``ReleaseUnit("backend", SERVE, HttpProbe(8000, "/health"), grace=30, traffic="backend")``
    """

    service: str  # the layout's name for it (hs.layout.service)
    strategy: str  # SERVE, OVERLAP or SINGLE
    probe: HttpProbe | CommandProbe
    grace: int  # seconds it gets to finish its work when stopped
    traffic: str | None = None  # SERVE: which proxy target of the web server it is


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


def report_outcome(host: str, version: str, result: str, reason: str | None) -> None:
    """Tell the rsdeploy command how a host's release went (nothing under plain pyinfra).

    Example: ``report_outcome("rs1", "v1.2.0-broken", FAILED, "/health answered 503")``
    """
    path = os.environ.get(OUTCOME_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"host": host, "version": version, "result": result,
                                  "reason": reason}) + "\n")
