"""``rsdeploy logs``: the services' logs of every selected host, merged, from each host's rs-logs.

Each host runs ``rs-logs --porcelain`` over SSH, all at once, for the services it runs of those
asked for. A record is ``SERVICE<TAB>LINE``, the line as its source wrote it: the containers'
output (Docker's time first), the journal (ISO 8601 first), or a file (PostgreSQL's, PM2's,
nginx's or Redis' own format). Lines are merged by that time across hosts and services (a line
without one, such as a traceback's, keeps the time of the line before it); ``--since`` is applied
here too, since a host reads files by their last lines. Hosts' clocks are taken as synchronized
(the base role runs timesyncd) and a time without a zone as UTC (the hosts' zone). ``--follow``
prints lines as they arrive, until interrupted.

Example::

    lines = logs.read(hosts, logs.Query(services=("backend",), since="1h"))
    print("\\n".join(logs.render(lines)))
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from rsdeploy import remote, services
from rsdeploy.errors import UserError

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: ``--since``: a number and a unit (what rs-logs accepts too).
SINCE = re.compile(r"^(\d+)([smhd])$")
SECONDS_PER = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
#: Where a line's time is, by source format; the first that matches wins.
#: Docker, the journal, PM2 (``time: true``), PostgreSQL: 2026-12-01T04:00:00.123456789Z,
#: 2026-12-01T04:00:00.123456+00:00, 2026-12-01T04:00:00:, 2026-12-01 04:00:00.123 UTC
ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
                 r"(?: ?(Z|UTC|[+-]\d{2}:?\d{2}))?")
#: nginx's error log: 2026/12/01 04:00:00 [error] ...
NGINX_ERROR = re.compile(r"^(\d{4})/(\d{2})/(\d{2}) (\d{2}):(\d{2}):(\d{2})")
#: nginx's access log (anywhere in the line): [01/Dec/2026:04:00:00 +0000]
NGINX_ACCESS = re.compile(r"\[(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2}) ([+-]\d{4})\]")
#: Redis: 1234:M 01 Dec 2026 04:00:00.123 * Ready to accept connections
REDIS = re.compile(r"^\d+:[A-Z] (\d{2}) ([A-Z][a-z]{2}) (\d{4}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?")


@dataclass(frozen=True)
class Query:
    """What to read. Example: ``Query(services=("nginx",), since="10m", grep="/api/")``"""

    services: tuple[str, ...] = ()  # none: every service
    since: str | None = None  # e.g. "1h"
    tail: int | None = None  # lines per source
    grep: str | None = None  # lines containing this (any case)
    follow: bool = False

    def argv(self, services: list[str]) -> list[str]:
        """rs-logs' arguments for one host (``services``: those it runs of the asked ones)."""
        argv = ["--porcelain"]
        for flag, value in (("--since", self.since), ("--tail", self.tail), ("--grep", self.grep)):
            if value is not None:
                argv += [flag, str(value)]
        return argv + (["--follow"] if self.follow else []) + services


@dataclass(frozen=True)
class Line:
    """One log line. Example: ``Line("rs1", "nginx", datetime(...), "10.0.0.9 - - [01/Dec...")``"""

    host: str
    service: str
    time: datetime | None
    text: str


def since_seconds(since: str) -> int:
    """``--since`` in seconds; UserError when it is not a number and s, m, h or d.

    Example: ``since_seconds("2h")`` -> ``7200``
    """
    match = SINCE.match(since)
    if not match:
        raise UserError(f"--since {since}: expected a number and s, m, h or d (for example 1h)")
    return int(match[1]) * SECONDS_PER[match[2]]


def line_time(text: str) -> datetime | None:
    """The time a log line starts with (nginx's access log: in brackets), as UTC; None when
    it has none. Example: ``line_time("2026/12/01 04:00:00 [error] 7#7: ...")``"""
    if match := ISO.match(text):
        *fields, fraction, zone = match.groups()
        return _utc(*map(int, fields), fraction, zone)
    if match := NGINX_ERROR.match(text):
        return _utc(*map(int, match.groups()), None, None)
    if match := NGINX_ACCESS.search(text):
        day, month, year, hour, minute, second, zone = match.groups()
        return _utc(int(year), MONTHS[month], int(day), int(hour), int(minute), int(second),
                    None, zone)
    if match := REDIS.match(text):
        day, month, year, hour, minute, second, fraction = match.groups()
        return _utc(int(year), MONTHS[month], int(day), int(hour), int(minute), int(second),
                    fraction, None)
    return None


def _utc(year: int, month: int, day: int, hour: int, minute: int, second: int,
         fraction: str | None, zone: str | None) -> datetime | None:
    offset = timedelta(0)
    if zone and zone not in ("Z", "UTC"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        return datetime(year, month, day, hour, minute, second, micro, timezone.utc) - offset
    except ValueError:  # digits that only looked like a time
        return None


def parse(host: str, output: str) -> list[Line]:
    """The lines of one host's ``rs-logs --porcelain`` output, each with its time (or the time
    of the line before it from the same service). Example: ``parse("rs1", "db\\t2026-...")``"""
    lines, last = [], {}
    for record in output.splitlines():
        service, tab, text = record.partition("\t")
        if not tab:
            continue
        time = line_time(text) or last.get(service)
        last[service] = time
        lines.append(Line(host, service, time, text))
    return lines


def merge(lines: list[Line], since: str | None = None, now: datetime | None = None) -> list[Line]:
    """Every line in time order (lines without a time first, stably), those older than
    ``since`` dropped. Example: ``merge(parse("rs1", a) + parse("rs2", b), "1h")``"""
    if since:
        cutoff = (now or datetime.now(timezone.utc)) - timedelta(seconds=since_seconds(since))
        lines = [line for line in lines if line.time is None or line.time >= cutoff]
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    return sorted(lines, key=lambda line: line.time or oldest)


def render(lines: list[Line]) -> Iterator[str]:
    """Lines for people: host and service, then the line as its source wrote it."""
    width = max((len(line.host) for line in lines), default=0)
    for line in lines:
        yield _for_people(line.host, line.service, line.text, width)


def _for_people(host: str, service: str, text: str, width: int) -> str:
    return f"{host:<{width}}  {service:<14} | {text}"


def services_by_host(hosts: dict[str, HostSettings], query: Query) -> dict[str, list[str]]:
    """For each host, the services to read there (see :func:`rsdeploy.services.by_host`)."""
    return services.by_host(hosts, query.services, lambda hs: hs.layout.log_sources(hs))


def _command(logs_path: str, query: Query, services: list[str]) -> str:
    return shlex.join([logs_path, *query.argv(services)])


def read(hosts: dict[str, HostSettings], query: Query, logs_path: str,
         timeout: float = 300) -> tuple[list[Line], dict[str, str]]:
    """Every selected host's lines, merged; and the hosts that failed, with why.

    Example: ``lines, failed = read(hosts, Query(since="1h"), "/usr/local/bin/rs-logs")``
    """
    wanted = services_by_host(hosts, query)

    def one(name: str) -> tuple[str, subprocess.CompletedProcess | str]:
        try:
            return name, remote.run(hosts[name], _command(logs_path, query, wanted[name]), timeout)
        except subprocess.TimeoutExpired:
            return name, f"no answer within {timeout:.0f} s"

    lines, failed = [], {}
    with ThreadPoolExecutor(max_workers=min(16, len(wanted) or 1)) as pool:
        for name, result in pool.map(one, wanted):
            if isinstance(result, str):
                failed[name] = result
            elif result.returncode != 0:
                failed[name] = _why(result)
            else:
                lines += parse(name, result.stdout)
    return merge(lines, query.since), failed


def _why(result: subprocess.CompletedProcess) -> str:
    """What went wrong, in one line (ssh's own failure, a host without rs-logs, or its error)."""
    last = (result.stderr.strip().splitlines() or [""])[-1]
    if result.returncode == remote.SSH_FAILED:
        return f"not reached over SSH: {last}"
    if result.returncode == remote.NOT_FOUND:
        return "no rs-logs there yet (deploy the host first)"
    return f"rs-logs exited {result.returncode}: {last}"


def follow(hosts: dict[str, HostSettings], query: Query, logs_path: str,
           out=sys.stdout) -> dict[str, str]:
    """Print every selected host's new lines as they come, until interrupted (Ctrl-C); then
    close each host's standard input, which ends its rs-logs. Returns the hosts that stopped
    on their own (not reached, no rs-logs), with why."""
    wanted = services_by_host(hosts, query)
    width = max(len(name) for name in wanted)
    printing = threading.Lock()
    processes = {name: subprocess.Popen(
        remote.ssh_argv(hosts[name], _command(logs_path, query, services)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, services in wanted.items()}

    failed: dict[str, str] = {}
    stopping = threading.Event()

    def pump(name: str, process: subprocess.Popen) -> None:
        for record in process.stdout:
            service, tab, text = record.rstrip("\n").partition("\t")
            if tab:
                with printing:
                    print(_for_people(name, service, text, width), file=out, flush=True)
        result = subprocess.CompletedProcess([], process.wait(), "", process.stderr.read())
        if stopping.is_set():
            return
        with printing:  # it stopped before we did: not reached, or no rs-logs there
            failed[name] = _why(result) if result.returncode else "stopped following"
            print(f"rsdeploy logs: {name}: {failed[name]}", file=sys.stderr, flush=True)

    threads = [threading.Thread(target=pump, args=item, daemon=True) for item in processes.items()]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    finally:
        stopping.set()
        for process in processes.values():
            if process.poll() is None:
                process.stdin.close()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
    return failed
