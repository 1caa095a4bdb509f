"""``rsdeploy status``: every host at a glance, from each host's own ``rs-status``.

Each selected host runs ``rs-status --porcelain`` over SSH, all at once: one tab-separated
record per check (service state and health, CPU, memory and since when it runs, the release,
the deploy lock's holder, disk use, the certificate's days left, the newest backup and its age),
with a verdict: ``ok``, ``warn`` or ``down``. A host that does not answer, or has no rs-status
yet, is one ``down`` record. The records become one table for people or JSON for scripts; any
``down`` makes the command exit 1, so it serves as a check.

Example::

    checks = status.collect(hosts, "/usr/local/bin/rs-status")
    print(status.table(checks)); sys.exit(0 if status.healthy(checks) else 1)
"""

from __future__ import annotations

import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from rsdeploy import lock, remote

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: Verdicts, best first.
VERDICTS = ("ok", "warn", "down")
#: Fields of a porcelain record after its "check" tag.
FIELDS = ("section", "name", "verdict", "detail", "cpu", "memory", "since")


@dataclass(frozen=True)
class Check:
    """One check on one host. Example: ``Check("rs1", "Containers", "backend", "ok",
    "running, healthy", "1.2%", "180MiB", "2 hours ago")``"""

    host: str
    section: str
    name: str
    verdict: str
    detail: str
    cpu: str = ""
    memory: str = ""
    since: str = ""


def parse(host: str, output: str) -> list[Check]:
    """The checks in ``rs-status --porcelain`` output (other lines are ignored).

    Example: ``parse("rs1", "check\\tRelease\\tdeployed\\tok\\tv1.0.0\\t\\t\\t\\n")``
    """
    checks = []
    for line in output.splitlines():
        tag, *fields = line.split("\t")
        if tag != "check" or len(fields) != len(FIELDS):
            continue
        check = Check(host, **dict(zip(FIELDS, fields)))
        # The section's heading without its details ("Containers (--project-name ...)").
        check = replace(check, section=check.section.split(" (")[0])
        if check.verdict not in VERDICTS:
            check = replace(check, verdict="down", detail=f"unknown verdict {check.verdict}")
        checks.append(_lock_in_words(check))
    return checks


def _lock_in_words(check: Check) -> Check:
    if check.name == "deploy lock" and check.detail.startswith("held: "):
        return replace(check, detail="held by " + lock.describe(check.detail[6:]))
    return check


def read_host(hs: HostSettings, command: str, timeout: float = 60) -> list[Check]:
    """The host's checks, or one ``down`` check saying why there are none."""
    try:
        proc = remote.run(hs, f"{shlex.quote(command)} --porcelain", timeout=timeout)
    except subprocess.TimeoutExpired:
        return [Check(hs.name, "Host", "rs-status", "down", f"no answer within {timeout:g} s")]
    checks = parse(hs.name, proc.stdout)
    if checks:
        return checks
    if proc.returncode == remote.SSH_FAILED:
        why = (proc.stderr.strip().splitlines() or ["no answer"])[-1]
        return [Check(hs.name, "Host", "ssh", "down", why)]
    if proc.returncode == remote.NOT_FOUND:
        return [Check(hs.name, "Host", "rs-status", "down", f"{command} not found: deploy first")]
    why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return [Check(hs.name, "Host", "rs-status", "down", f"no checks reported: {why}")]


def collect(hosts: dict[str, HostSettings], command: str) -> list[Check]:
    """Every host's checks, read at once, in inventory order."""
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(hosts)))) as pool:
        found = pool.map(lambda hs: read_host(hs, command), hosts.values())
        return [check for checks in found for check in checks]


def healthy(checks: list[Check]) -> bool:
    """Whether no check is down (warnings do not count)."""
    return all(check.verdict != "down" for check in checks)


def table(checks: list[Check]) -> str:
    """The checks as an aligned table, a blank line between hosts, and a summary line."""
    header = ("HOST", "SECTION", "CHECK", "STATE", "CPU", "MEMORY", "SINCE", "DETAIL")
    rows = [(c.host, c.section, c.name, c.verdict.upper() if c.verdict == "down" else c.verdict,
             c.cpu or "-", c.memory or "-", c.since or "-", c.detail) for c in checks]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines, previous = [], None
    for row in [header, *rows]:
        if previous not in (None, "HOST") and row[0] != previous:
            lines.append("")
        previous = row[0]
        lines.append("  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(row[:-1]))
                     + "  " + row[-1])
    down = [c for c in checks if c.verdict == "down"]
    warned = sum(c.verdict == "warn" for c in checks)
    hosts = len(dict.fromkeys(c.host for c in checks))
    summary = (f"{len(down)} down: " + ", ".join(f"{c.host} {c.name}" for c in down)
               if down else "all up")
    return "\n".join([*lines, "", f"{hosts} host(s), {len(checks)} checks, {summary}"
                      + (f", {warned} warning(s)" if warned else "")])


def as_json(checks: list[Check]) -> dict:
    """``{host: {"healthy": bool, "checks": [{section, name, verdict, ...}]}}``"""
    found: dict[str, dict] = {}
    for check in checks:
        entry = found.setdefault(check.host, {"healthy": True, "checks": []})
        entry["checks"].append({k: v for k, v in asdict(check).items() if k != "host"})
        entry["healthy"] = entry["healthy"] and check.verdict != "down"
    return found
