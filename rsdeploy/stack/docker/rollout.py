"""The docker layout's rollout: bring the Compose project's services up health-gated (all but
the app's, which the release procedure switches), then carry out the reactions of the stack's
services (reload, restart, run a command in a service).

Compose compares service definitions, not the content of bind-mounted files: a changed Compose
file, env file or image recreates its services through ``up``; a changed mounted config file or
secret asks its reader for a reload (SIGHUP) or a restart here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server
from pyinfra.operations.util import any_changed

from rsdeploy.facts import ComposeContainers
from rsdeploy.stack.docker.diagnose import explain_if_failed
from rsdeploy.layout import Exec, Reaction, Recreate, Reload, Restart
from rsdeploy.types import duration_seconds
from rsdeploy.stack.docker.project import compose_command, long_running

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings


def _down(container: dict | None) -> bool:
    return container is None or container["state"] != "running" or container["health"] == "unhealthy"


@deploy("Roll out the Compose project")
def roll_out(hs: HostSettings, wanted: dict[Reaction, list], delivered: list,
             released: frozenset[str] = frozenset()) -> None:
    """Bring the project's other services up (health-gated), then reload or restart each
    service whose mounted files changed. Nothing runs when nothing changed and all is healthy.

    ``wanted``: the reactions of every rendered file with their gates (a new certificate adds
    a ``Reload("nginx")``); ``delivered``: the operations of image delivery (new images
    recreate their services); ``released``: the services the release procedure replaces
    (:mod:`rsdeploy.stack.release`), left alone here.
    Example: ``roll_out(hs, apply.reactions(rendered, metas), delivered, {"backend", ...})``
    """
    services = [name for name in long_running(hs) if name not in released]
    containers = host.get_fact(ComposeContainers, project=hs.stack.compose.project)
    down = [name for name in services if _down(containers.get(name))]
    recreated = [gate for reaction, gates in wanted.items()
                 if isinstance(reaction, Recreate) and reaction.target in services for gate in gates]
    if services:
        # --no-deps: nginx's dependency on the app is the release procedure's business.
        # A failure is explained (exit codes, OOM kills, logs) before the host is failed.
        up = server.shell(
            name="Bring the stack's services up, waiting for health checks (docker compose up "
                 "--wait)" + (f": {', '.join(down)} not running or unhealthy" if down else ""),
            commands=[compose_command(hs, "up", "--detach", "--wait", "--wait-timeout",
                                      str(duration_seconds(hs.stack.backend.health.wait_timeout)),
                                      "--no-deps", "--remove-orphans", *services)],
            _chdir=hs.stack.paths.base_dir, _ignore_errors=True,
            **({} if down else {"_if": any_changed(*recreated, *delivered)}),
        )
        explain_if_failed(hs, up)
    # A service whose container did not exist yet was just created with the new files.
    existing = set(name for name in services if name in containers)
    for reaction, gates in wanted.items():
        if reaction.target in existing:
            react(hs, reaction, gates)


def react(hs: HostSettings, reaction: Reaction, gates: list) -> None:
    """One stack-service reaction as a Compose command, gated on the uploads that asked for it.

    Example: ``react(hs, Reload("prometheus"), [meta])``
    """
    if isinstance(reaction, Exec):
        command = compose_command(hs, "exec", "-T", reaction.target, *reaction.argv)
        verb = reaction.summary
    elif isinstance(reaction, Reload):
        # From inside: `docker kill --signal HUP` would mark the container as manually
        # stopped, and a reboot would then leave it down. PID 1 (init) passes HUP on.
        command = compose_command(hs, "exec", "-T", reaction.target, "sh", "-c", "kill -HUP 1")
        verb = f"Reload {reaction.target}"
    elif isinstance(reaction, Restart):
        command, verb = compose_command(hs, "restart", reaction.target), f"Restart {reaction.target}"
    else:  # Recreate: `up` above; host reactions: rsdeploy.apply
        return
    server.shell(name=f"{verb} (its files changed)", commands=[command],
                 _chdir=hs.stack.paths.base_dir, _if=any_changed(*gates))
