"""Why a rollout failed: for each service of the Compose project that exited, is unhealthy or
restarts, its exit code, whether the kernel OOM-killed it, its memory limit, its last health
check and the last lines of its log, with every secret masked.

Compose alone says only ``service "migrate" didn't complete successfully: exit 1`` or
``container backend is unhealthy``; the reason is in the container's state and log. OOM kills
are read from the container's memory cgroup too: Docker 20.10 on cgroup v1 leaves
``State.OOMKilled`` false, and a uvicorn whose worker was killed keeps its container running.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pyinfra import logger
from pyinfra.operations import python

from rsdeploy import apply
from rsdeploy.secrets import masked
from rsdeploy.stack.docker.project import ONE_SHOT

if TYPE_CHECKING:
    from pyinfra.api import Host, State

    from rsdeploy.settings import HostSettings

#: Log lines shown per failing service.
LOG_LINES = 30
#: The memory cgroup's OOM-kill counter as a container sees it (cgroup v2, then v1).
OOM_COUNTERS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


@dataclass(frozen=True)
class Finding:
    """One service that keeps the stack from coming up, from ``docker inspect``."""

    service: str
    container: str
    status: str  # running, exited, restarting, ...
    exit_code: int
    oom_killed: bool
    restarts: int
    health: str | None  # healthy, unhealthy, starting; None without a health check
    health_output: str  # the last health check's output
    memory_limit: int  # bytes; 0 without a limit
    oom_kills: int = 0  # processes the kernel killed in its memory cgroup (while it runs)

    def reason(self) -> str:
        """One line: what is wrong. Example: ``"OOM-killed (memory limit 1024 MiB), exit 137"``"""
        parts = []
        if self.oom_killed or self.oom_kills:
            limit = f" (memory limit {self.memory_limit // 2**20} MiB)" if self.memory_limit else ""
            times = f" {self.oom_kills} times" if self.oom_kills > 1 else ""
            parts.append(f"OOM-killed{times}{limit}")
        if self.status != "running" or self.exit_code:
            parts.append(f"{self.status}, exit code {self.exit_code}")
        if self.restarts:
            parts.append(f"restarted {self.restarts} times")
        if self.health in ("unhealthy", "starting"):
            last = self.health_output.strip().splitlines()[-1:] or [""]
            parts.append(f"health check {self.health}" + (f": {last[0]}" if last[0] else ""))
        return "; ".join(parts)


def findings(inspected: list[dict]) -> list[Finding]:
    """The services that are not up, from ``docker inspect`` of the project's containers: not
    running (a one-shot that ended with exit 0 is fine), restarting, or not healthy.

    Example: ``findings(json.loads(docker_inspect_output))``
    """
    found = []
    for container in inspected:
        state, labels = container["State"], container["Config"].get("Labels") or {}
        service = labels.get("com.docker.compose.service", container["Name"].lstrip("/"))
        health = (state.get("Health") or {})
        finished_well = service in ONE_SHOT and state["Status"] == "exited" and not state["ExitCode"]
        up = state["Status"] == "running" and health.get("Status") in (None, "healthy")
        if finished_well or (up and not state.get("OOMKilled")):
            continue
        log = health.get("Log") or [{}]
        found.append(Finding(
            service=service, container=container["Name"].lstrip("/"), status=state["Status"],
            exit_code=state["ExitCode"], oom_killed=bool(state.get("OOMKilled")),
            restarts=container.get("RestartCount", 0), health=health.get("Status"),
            health_output=log[-1].get("Output", ""),
            memory_limit=container["HostConfig"].get("Memory") or 0))
    return sorted(found, key=lambda f: f.service)


def oom_kills(counters: str) -> int:
    """The ``oom_kill`` count from a memory cgroup's ``memory.events`` or ``memory.oom_control``.

    Example: ``oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")`` -> ``3``
    """
    found = re.search(r"^oom_kill (\d+)$", counters, re.MULTILINE)
    return int(found.group(1)) if found else 0


def oom_counters_command(container: str) -> str:
    """A shell command printing ``container``'s memory cgroup counters (``oom_kills`` reads
    them). The counters are never empty, so an empty answer is tried again: ``docker exec``
    now and then loses the output of a process that exits at once.

    Example: ``host.run_shell_command(oom_counters_command("stack-backend-1"))``
    """
    cat = shlex.join(["docker", "exec", container, "cat", *OOM_COUNTERS])
    return (f"for try in 1 2 3; do out=$({cat} 2>/dev/null); [ -n \"$out\" ] && break; "
            "sleep 0.5; done; printf '%s\\n' \"$out\"")


def explain(state: State, host: Host, hs: HostSettings, project: str) -> bool:
    """A pyinfra callback: print why the project's services are not up, then fail the host.

    Example: ``python.call(name="...", function=explain, hs=hs, project=project)``
    """
    connector = apply.connector_arguments(host)
    label = shlex.quote(f"label=com.docker.compose.project={project}")
    ok, output = host.run_shell_command(
        f"docker ps --all --quiet --filter {label} | xargs --no-run-if-empty docker inspect",
        **connector)
    report = [f"{hs.name}: the stack did not come up"]
    problems = findings(json.loads(output.stdout or "[]")) if ok else []
    for finding in problems:
        if finding.status == "running":
            _, counters = host.run_shell_command(oom_counters_command(finding.container),
                                                 **connector)
            finding = replace(finding, oom_kills=oom_kills(counters.stdout))
        report.append(f"{hs.name}: service {finding.service}: {finding.reason()}")
        _, log = host.run_shell_command(
            f"docker logs --tail {LOG_LINES} {shlex.quote(finding.container)} 2>&1", **connector)
        lines = masked(log.output, hs).splitlines()[-LOG_LINES:]
        report += [f"  last {len(lines)} lines of its log (secrets masked):",
                   *(f"  | {line}" for line in lines)]
    if ok and not problems:
        report.append(f"{hs.name}: every container is up now: see docker compose's message above")
    for line in report:
        host.log_styled(line, fg="red", log_func=logger.error)
    return False


def explain_if_failed(hs: HostSettings, up) -> None:
    """After ``up`` (run with ``_ignore_errors``): when it failed, say why and fail the host.

    Example: ``explain_if_failed(hs, server.shell(..., _ignore_errors=True))``
    """
    python.call(name="Explain why the stack did not come up", function=explain, hs=hs,
                project=hs.stack.compose.project, _if=up.did_error)
