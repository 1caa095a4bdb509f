"""The systemd layout's rollout: the distribution's services (PostgreSQL, Redis, nginx, the
monitoring) and the PM2 daemon enabled and running, then the reactions of the stack's services
to what changed (restart, reload, a command as the service's user). The app's own units are left
to the release procedure, which starts them per release slot.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from pyinfra.api import deploy
from pyinfra.operations import server, systemd
from pyinfra.operations.util import any_changed

from rsdeploy.layout import Exec, Reaction, Recreate, Reload, Restart

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings


@deploy("Bring the host's services up")
def roll_out(hs: HostSettings, wanted: dict[Reaction, list], delivered: list,
             released: frozenset[str] = frozenset()) -> None:
    """Reload systemd when a unit changed, enable and start every service of the host but the
    ``released`` ones, then restart or reload those whose files changed (nothing runs when
    nothing changed and all is up).

    Example: ``roll_out(hs, apply.reactions(rendered, metas), delivered, {"residency-backend", ...})``
    """
    units = [unit for unit in hs.layout.services(hs) if unit not in released
             and not unit.endswith(".timer")]  # timers: apply.enable_timers
    unit_gates = [gate for reaction, gates in wanted.items() if isinstance(reaction, Recreate)
                  for gate in gates]
    systemd.daemon_reload(name="Reload systemd (units changed)", _if=any_changed(*unit_gates))
    for unit in units:
        systemd.service(name=f"Enable and start {unit}", service=unit, running=True, enabled=True)
    for reaction, gates in wanted.items():
        if reaction.target not in released:
            react(hs, reaction, gates)


def react(hs: HostSettings, reaction: Reaction, gates: list) -> None:
    """One service reaction as a systemd (or runuser) command, gated on the uploads that asked.

    Example: ``react(hs, Restart("redis-server.service"), [meta])``
    """
    changed = any_changed(*gates)
    if isinstance(reaction, Exec):
        server.shell(name=f"{reaction.summary} (its files changed)",
                     commands=[shlex.join(["runuser", "-u", reaction.user, "--", *reaction.argv])],
                     _chdir="/", _if=changed)
    elif isinstance(reaction, Reload):
        systemd.service(name=f"Reload {reaction.target} (its files changed)",
                        service=reaction.target, reloaded=True, _if=changed)
    elif isinstance(reaction, (Restart, Recreate)):  # host reactions: rsdeploy.apply
        systemd.service(name=f"Restart {reaction.target} (its files changed)",
                        service=reaction.target, restarted=True, _if=changed)
