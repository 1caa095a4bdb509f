"""``rsdeploy diagnose``: the operations guide's troubleshooting checks, run for you on every host,
each finding with what to do about it in one line.

Each host runs ``rs-status --porcelain`` (services, health, endpoints, certificate, backups,
disk) and ``rs-diagnose`` (restarts and OOM kills, the database: accepting connections, the
app's database present, connections against ``max_connections``, slow queries; Redis memory
against ``maxmemory``; the clock) over one SSH connection, all hosts at once. This module judges
what they report: pure functions from their output to findings, testable without a host.

Example::

    findings = diagnose.collect(hosts, inventory="inventories/prod.py")
    print(diagnose.table(findings)); sys.exit(1 if diagnose.problems(findings) else 0)
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from rsdeploy import remote, status

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: Levels of a finding, best first: ``problem`` makes the command exit 1.
LEVELS = ("ok", "warn", "problem")
#: In use of ``max_connections`` (PostgreSQL) or ``maxmemory`` (Redis): a warning, a problem.
WARN_SHARE, PROBLEM_SHARE = 0.80, 0.95
#: Seconds a host's clock may be off from this machine's (beyond the SSH round trip).
CLOCK_TOLERANCE = 5
#: Seconds allowed for one host's checks.
HOST_TIMEOUT = 120


@dataclass(frozen=True)
class Finding:
    """One check on one host. Example: ``Finding("rs1", "db", "problem", "not accepting
    connections", "rsdeploy start db --host rs1 -i inv.py")``"""

    host: str
    check: str
    level: str
    detail: str
    remedy: str = ""


class Advisor:
    """The remedies for one host, as commands the operator can paste (its inventory and name)."""

    def __init__(self, hs: HostSettings, inventory: str):
        self.hs, self.where = hs, f"--host {shlex.quote(hs.name)} -i {shlex.quote(inventory)}"

    def rsdeploy(self, *words: str) -> str:
        return f"rsdeploy {' '.join(words)} {self.where}"

    def service(self, name: str) -> str:
        """The service (its Compose name) a status check or unit name stands for."""
        for service, control in self.hs.layout.controls(self.hs).items():
            template = control.target.replace("@.", "@")
            if name in (service, control.target) or (
                    control.kind == "slots" and re.sub(r"@[^.]+\.", "@", name) == template) or (
                    control.kind == "pm2" and name.startswith(control.target + "-")):
                return service
        return name

    def start(self, service: str) -> str:
        return (f"start it: {self.rsdeploy('start', service)}; if it stops again, read why: "
                f"{self.rsdeploy('logs', service, '--tail', '100')}")


def from_status(check: status.Check, advise: Advisor) -> Finding:
    """A finding from one of rs-status's checks, with the remedy for its section."""
    level = {"ok": "ok", "warn": "warn"}.get(check.verdict, "problem")
    name, section, detail = check.name, check.section, check.detail or check.verdict
    if section in ("Containers", "Units", "PM2") or section.startswith("Release slot"):
        service = advise.service(name)
        return Finding(check.host, service, level, detail, advise.start(service))
    if section == "App endpoints":
        remedy = f"read the backend's errors: {advise.rsdeploy('logs', 'backend', '--since', '30m')}"
    elif name == "certificate":
        remedy = ("renew it: a deploy runs certbot renew (tls.mode certbot), or install a new "
                  "one (tls.mode provided) and deploy")
    elif section == "Through nginx":
        remedy = f"see what nginx could not reach: {advise.rsdeploy('logs', 'nginx', '--grep', 'upstream', '--since', '30m')}"
    elif section == "Backups":
        remedy = f"take one now: {advise.rsdeploy('db', 'backup')} (and see why rs-backup.timer did not)"
    elif section == "Disk":
        remedy = ("free space: docker image prune (docker layout), fewer dumps "
                  "(backup.retention_days), old logs; or grow the disk")
    elif name == "deploy lock":
        remedy = "wait for that run (--lock-wait), or --break-lock if it hung"
    elif name == "deployed":
        remedy = f"deploy a release: {advise.rsdeploy('deploy')}"
    else:  # the host itself: SSH, or no rs-status
        remedy = f"check SSH to the host; then {advise.rsdeploy('deploy')} (it installs rs-status)"
    return Finding(check.host, name, level, detail, remedy)


def _share(used: int, limit: int) -> str:
    return "ok" if limit <= 0 or used < WARN_SHARE * limit else \
        "warn" if used < PROBLEM_SHARE * limit else "problem"


def from_fact(host: str, fields: list[str], advise: Advisor, clock_offset: float) -> Finding | None:
    """A finding from one rs-diagnose record (``fields`` after its ``fact`` tag), or None for
    one that says nothing wrong and nothing worth a line."""
    name, values = fields[0], fields[1:] + [""] * 5
    if name == "clock":
        if abs(clock_offset) > CLOCK_TOLERANCE:
            return Finding(host, "clock", "problem", f"{clock_offset:+.0f} s off this machine's clock",
                           "synchronise it: systemctl enable --now systemd-timesyncd (or chrony)")
        if values[1] == "unsynced":
            return Finding(host, "clock", "warn", "not synchronised by NTP",
                           "systemctl enable --now systemd-timesyncd (or chrony)")
        kind = "the container host's clock" if values[1] == "container" else "synchronised"
        return Finding(host, "clock", "ok", f"{kind}, {clock_offset:+.0f} s off this machine's")
    if name == "service":
        service, restarts, oom = values[0], int(values[1] or 0), values[2] == "yes"
        if oom:
            return Finding(host, service, "problem", "killed for lack of memory (OOM)",
                           f"raise its memory limit in the settings ({service}'s resources; the "
                           "backend needs about 700 MB a worker) or lower backend.workers; deploy")
        if restarts:
            return Finding(host, service, "warn", f"restarted {restarts} time(s) since it was created",
                           f"read why: {advise.rsdeploy('logs', service, '--since', '1h')}")
        return None
    if name == "db_ready":
        if values[0] == "yes":
            return Finding(host, "db", "ok", "accepting connections")
        return Finding(host, "db", "problem", f"not accepting connections ({values[1] or 'no answer'})",
                       advise.start("db"))
    if name == "db_present":
        database = advise.hs.stack.postgres.database
        if values[0] == "yes":
            return Finding(host, "db", "ok", f"database {database} present")
        return Finding(host, "db", "problem", f"the app's database {database} is missing",
                       f"restore the newest dump: {advise.rsdeploy('db', 'restore')} "
                       f"({advise.rsdeploy('db', 'backups')} lists them)")
    if name == "db_connections":
        used, limit = int(values[0]), int(values[1])
        return Finding(host, "db connections", _share(used, limit), f"{used} of max_connections {limit}",
                       "" if used < WARN_SHARE * limit else
                       "look for a leak (idle sessions in pg_stat_activity) or too many app "
                       "workers (backend.workers x app hosts); raise postgres.max_connections")
    if name == "slow_query":
        pid, seconds, user, query = values[:4]
        return Finding(host, "slow query", "warn", f"running {seconds} s (pid {pid}, {user}): {query}",
                       f"if it must stop: SELECT pg_cancel_backend({pid}); then look at its plan "
                       "(EXPLAIN) and indexes")
    if name == "redis_ready":
        return Finding(host, "redis", "problem", f"not answering ({values[1] or 'no answer'})",
                       advise.start("redis"))
    if name == "redis_memory":
        used, limit = int(values[0] or 0), int(values[1] or 0)
        detail = f"{used / 2**20:.1f} MiB used" + (f" of maxmemory {limit / 2**20:.0f} MiB" if limit else "")
        return Finding(host, "redis memory", _share(used, limit), detail,
                       "" if limit <= 0 or used < WARN_SHARE * limit else
                       "a Celery backlog? rsdeploy celery inspect reserved; then raise redis.maxmemory")
    return Finding(host, name, "warn", f"unknown fact from rs-diagnose: {' '.join(fields)}")


def parse(advise: Advisor, output: str, clock_offset: float) -> list[Finding]:
    """The findings of one host from its rs-status and rs-diagnose output."""
    host = advise.hs.name
    found = [from_status(check, advise) for check in status.parse(host, output)]
    for line in output.splitlines():
        tag, *fields = line.split("\t")
        if tag == "fact" and fields:
            try:
                finding = from_fact(host, fields, advise, clock_offset)
            except ValueError:
                finding = Finding(host, fields[0], "warn", f"unreadable: {' '.join(fields)}")
            if finding is not None:
                found.append(finding)
    return found


def read_host(hs: HostSettings, inventory: str, status_path: str, diagnose_path: str) -> list[Finding]:
    """One host's findings; an unreachable host, or one without the scripts, is one problem."""
    advise = Advisor(hs, inventory)
    command = f"{shlex.quote(status_path)} --porcelain; {shlex.quote(diagnose_path)}"
    asked = time.time()
    try:
        proc = remote.run(hs, command, timeout=HOST_TIMEOUT)
    except subprocess.TimeoutExpired:
        return [Finding(hs.name, "host", "problem", f"no answer within {HOST_TIMEOUT} s",
                        "check the host's load and SSH")]
    answered = time.time()
    host_clock = next((float(line.split("\t")[2]) for line in proc.stdout.splitlines()
                       if line.startswith("fact\tclock\t")), None)
    # Off by more than the round trip can explain, in either direction.
    offset = 0.0 if host_clock is None else \
        max(0.0, host_clock - answered - 1) or min(0.0, host_clock - asked + 1)
    findings = parse(advise, proc.stdout, offset)
    if findings:
        return findings
    why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    if proc.returncode == remote.NOT_FOUND:
        why = f"{status_path} or {diagnose_path} not found"
    return [Finding(hs.name, "host", "problem", why,
                    f"check SSH to the host; then {advise.rsdeploy('deploy')} (it installs the checks)")]


def collect(hosts: dict[str, HostSettings], inventory: str, status_path: str,
            diagnose_path: str) -> list[Finding]:
    """Every host's findings, read at once, in inventory order."""
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(hosts)))) as pool:
        found = pool.map(lambda hs: read_host(hs, inventory, status_path, diagnose_path),
                         hosts.values())
        return [finding for findings in found for finding in findings]


def problems(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "problem"]


def table(findings: list[Finding]) -> str:
    """What needs attention, worst first, each with its remedy; then a summary line."""
    attention = sorted((f for f in findings if f.level != "ok"),
                       key=lambda f: (-LEVELS.index(f.level), f.host))
    lines = [f"{f.level.upper():<8} {f.host}  {f.check}: {f.detail}\n         -> {f.remedy}"
             for f in attention]
    hosts = len(dict.fromkeys(f.host for f in findings))
    ok = sum(f.level == "ok" for f in findings)
    counts = {level: sum(f.level == level for f in findings) for level in ("problem", "warn")}
    lines.append(f"{counts['problem']} problem(s), {counts['warn']} warning(s), {ok} check(s) ok "
                 f"on {hosts} host(s)")
    return "\n".join(lines)


def as_json(findings: list[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]
