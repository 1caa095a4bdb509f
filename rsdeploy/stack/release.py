"""The release procedure: switch a host to a new release without dropping a request, or refuse
it and keep the old one serving. The same in every layout: the layout supplies the primitives
(``hs.layout.release_host``), the roles their release units (how each service is replaced and
proves itself ready).

The story of one switch, top to bottom:

1. tidy what an interrupted switch left (a second instance that never got traffic);
2. find what changes: each unit whose running definition differs from the uploaded one;
3. the database: read its Alembic revision and the new release's head; when the new release is
   ahead, back the database up and migrate while the old release serves (one transaction: a
   failed migration leaves the old revision); when the database is ahead (a rollback), it is
   downgraded after step 6, once the older code serves (it runs on the newer schema; the newer
   code would fail on the older one), with the newer release's own scripts, as the older code
   does not know them;
4. pin the web server to the old instances (graceful reload), start the new instances beside
   them and probe each, in the units' order, until it is ready: "not yet" counts only after
   the unit's start period, a wrong answer at once (:class:`rsdeploy.release.Readiness`);
   meanwhile every instance not ready yet is looked at each round, and one whose processes
   fail again and again is refused at once, naming the repeated failure
   (:func:`rsdeploy.release.crash_loop`);
5. move the traffic: pin the web server's targets to the new instances, graceful reload;
6. replace the singletons (beat): the old one stopped, the new one proved, the old one removed;
7. drain the old instances (each with its grace period), unpin where the layout's instances
   share their service's name (nginx finds the one left by that name again, so plain Compose
   commands keep working; release slots keep their pins), and record.

Anything failing before step 7 undoes the steps taken, in reverse: traffic back to the old
instances, new instances removed, the pins removed, the old beat started again, a migration of
this attempt downgraded (on a first release to ``base``: the empty database it found). The old
release keeps serving, or, on a first release, nothing does (the output says which), and the
attempt is recorded as failed with its reason.

Several app hosts (a web host of their own balances across them): they switch one at a time in
inventory order (:class:`Turns`), each moving its own pin files in the web host's upstreams
(over the web host's connection), so the others keep serving meanwhile. The first app host
migrates the database forward; on a rollback the last one downgrades it, once no newer code
runs anywhere. One refused stops the rollout: the hosts after it keep their release.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from gevent.event import Event
from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.files import FileContents
from pyinfra.operations import python
from pyinfra.operations.util import any_changed

from rsdeploy.roles import backend, backup, frontend, nginx
from rsdeploy import apply, release, release_metrics, source
from rsdeploy.errors import SettingsError
from rsdeploy.layout import Recreate, ReleaseHost
from rsdeploy.release import (
    EXCEPTION_LINE,
    FAILED,
    OK,
    OVERLAP,
    READY,
    SERVE,
    SINGLE,
    Attempt,
    Readiness,
    ReleaseUnit,
)
from rsdeploy.secrets import masked
from rsdeploy.types import duration_seconds

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyinfra.api import Host, State

    from rsdeploy.layout import Reaction
    from rsdeploy.settings import HostSettings

#: Seconds between two rounds of probes of the starting instances.
PROBE_INTERVAL = 3
#: The states of an instance that may still become ready (a restarting one: see crash loops).
ALIVE = ("running", "created", "restarting")
#: Lines of a failed command's output shown (migrations: the Alembic/PostgreSQL error).
ERROR_LINES = 25


def units(hs: HostSettings) -> list[ReleaseUnit]:
    """Every release unit of the app on this host, in the order they are replaced."""
    if not hs.has_role("app"):
        return []
    return backend.release_units(hs) + frontend.release_units(hs)


#: The release's delivery (images, a build) as a key of :func:`rsdeploy.apply.remember_due`.
DELIVERY = "delivery"


def released_services(hs: HostSettings) -> frozenset[str]:
    """The services the release procedure replaces (and the one-shot migration): the layout's
    rollout leaves them alone. Example: ``{"backend", "celery-worker", ..., "migrate"}``"""
    if not hs.has_role("app"):
        return frozenset()
    return frozenset([u.service for u in units(hs)] + [backend.migration_service(hs)])


@deploy("Switch the release")
def switch(hs: HostSettings, reactions: dict[Reaction, list], delivered: list,
           kind: str = "deploy") -> None:
    """Switch the host to ``hs.stack.version`` when something asks for it: the release's own
    files or images changed, the host serves another version, or an app service is down. A
    re-run with nothing changed does nothing.

    Example (after the layout's rollout): ``release.switch(hs, reactions, delivered)``
    """
    if not units(hs):
        return
    asking = [reaction for reaction in reactions
              if isinstance(reaction, Recreate) and reaction.target in released_services(hs)]
    gates = [gate for reaction in asking for gate in reactions[reaction]]
    serving = host.get_fact(FileContents, path=release.version_file(hs)) or []
    down = [u.service for u in units(hs) if not hs.layout.service_running(hs, u.service)]
    due = [f"{', '.join(down)} not running"] if down else []
    if [line.strip() for line in serving] != [hs.stack.version]:
        due.append(f"the host serves {serving[0].strip() if serving else 'no release'}")
    if any(isinstance(gate, apply.LeftDue) for gate in (*gates, *delivered)):
        due.append("an earlier run stopped before switching")
    runs = (lambda: True) if due else any_changed(*gates, *delivered)
    turns_of(host.state).runs[hs.name] = runs
    python.call(
        name=f"Switch the release to {hs.stack.version} (new instances beside the old, "
             "health-gated, then the traffic)" + (f": {'; '.join(due)}" if due else ""),
        function=switch_release, hs=hs, kind=kind,
        owed=apply.due_markers(hs, [*asking, DELIVERY]), **({} if due else {"_if": runs}))


class Turns:
    """Several app hosts switch in waves of ``release_wave`` hosts (one by default), in
    inventory order, while nginx keeps the others serving: a host waits for the hosts of the
    earlier waves whose switch runs; one refused makes its wave the last (the hosts after it
    keep the release they serve). ``active``: the hosts still in the run (``runs``, ``done``
    and ``refused`` by host name).

    Example: ``turns.wait(hs, active)`` -> None (go on), or the host that stopped the rollout
    """

    def __init__(self):
        self.runs: dict[str, Callable[[], bool]] = {}  # host -> whether its switch runs
        self.done: dict[str, Event] = {}
        self.refused: dict[str, str] = {}  # host -> why

    def wait(self, hs: HostSettings, active: set[str]) -> str | None:
        """Wait for this host's wave; the app host that stopped the rollout, if one did."""
        return self._wait_for(hs, self.earlier(hs), active)

    def wait_for_the_others(self, hs: HostSettings, active: set[str]) -> str | None:
        """Wait until every other app host has switched (or refused); the first that refused."""
        return self._wait_for(hs, [n for n in backend.app_hosts(hs) if n != hs.name], active)

    def earlier(self, hs: HostSettings) -> list[str]:
        """The app hosts of the waves before this host's."""
        hosts = backend.app_hosts(hs)
        size = hs.on(hosts[0]).stack.release_wave
        return hosts[:hosts.index(hs.name) // size * size]

    def _wait_for(self, hs: HostSettings, names: list[str], active: set[str]) -> str | None:
        for name in names:
            if name in active and self.runs.get(name, lambda: False)():
                self.event(name).wait()
        return next((name for name in names if name in self.refused), None)

    def event(self, name: str) -> Event:
        return self.done.setdefault(name, Event())


_turns: dict[int, Turns] = {}


def turns_of(state: State) -> Turns:
    """The app hosts' turns in one pyinfra run."""
    return _turns.setdefault(id(state), Turns())


class Refused(Exception):
    """The release cannot go on; the message says why, on one line (the details were logged)."""


@dataclass
class Switch:
    """One release switch on one host (see the module docstring): ``rh`` the layout's
    primitives, ``say(line, error=False)`` logs a line, ``undo`` the steps to take back."""

    hs: HostSettings
    rh: ReleaseHost  # the layout's release primitives
    say: Callable[..., None]
    attempt: Attempt
    web: WebServer | None = None  # nginx, where it reaches this host's app; None: no web server
    undo: list = field(default_factory=list)  # callables, most recent last

    # --- 1. leftovers --------------------------------------------------------------------------

    def tidy(self, pinned: set[str]) -> None:
        """Remove the extra instances an interrupted switch left: keep the pinned one of a
        served unit (``pinned``: the web server's targets), and of the others the one of the
        release that serves (started again if it was stopped)."""
        found = self.rh.instances()
        # Migrations run in one-off containers, removed after; older deploys left one behind.
        self.rh.remove(found.get(backend.migration_service(self.hs), []))
        # Cut off after the traffic moved (the pinned instances are the newest): the new
        # release serves, keep its worker and beat; before that, keep the old ones.
        doubled = [u for u in units(self.hs)
                   if u.strategy == SERVE and len(found.get(u.service, [])) > 1]
        switched = any(self.rh.proxy_target(found[u.service][-1], u.probe.port) in pinned
                       for u in doubled)
        for unit in units(self.hs):
            instances = found.get(unit.service, [])
            if len(instances) < 2:
                continue
            if unit.strategy == SERVE:
                keep = [i for i in instances if self.rh.proxy_target(i, unit.probe.port) in pinned]
            else:
                running = [i for i in instances if i.state == "running"] or instances
                keep = running[-1:] if switched else running[:1]
            keep = keep[:1] or instances[:1]
            extra = [i for i in instances if i not in keep]
            self.say(f"{unit.service}: removing {', '.join(i.name for i in extra)} "
                     "(left by an interrupted release)")
            self.rh.remove(extra)
            if keep[0].state != "running":
                self.rh.start_again(keep[0])

    # --- 3. database ---------------------------------------------------------------------------

    def api(self, live: dict):
        """The running instance of the app's API (it has Alembic and the database's address)."""
        return next((live.get(u.service) for u in units(self.hs) if u.traffic == "backend"), None)

    def revisions(self, live: dict) -> tuple[str | None, str | None, set[str]]:
        """(the database's revision, the new release's head, every revision it knows)."""
        service = backend.migration_service(self.hs)
        ok, output = self.rh.run_once(service, ["sh", "-c", "alembic heads && echo '--' && "
                                                            "alembic history"])
        if not ok:
            raise Refused(f"the new release cannot read its migrations: {_tail(output, 1)}")
        heads_text, _, history_text = output.partition("\n--\n")
        head = _revision(heads_text)
        known = set(re.findall(r"-> (\w+)", history_text))
        # The running release reads the database best (the new one may not know its
        # revision), unless it is older than the database itself (a release refused earlier).
        old = self.api(live)
        ok = False
        if old is not None and old.state == "running":
            ok, output = self.rh.exec(old, ["alembic", "current"])
        if not ok:
            ok, output = self.rh.run_once(service, ["alembic", "current"])
        return (_revision(output) if ok else None), head, known

    def migrate(self, live: dict) -> str | None:
        """Bring the database up to the new release's head while the old release serves (see
        the module docstring, step 3). Returns the head when the database is ahead of it
        instead: :meth:`step_down` takes it there once the older code serves."""
        current, head, known = self.revisions(live)
        self.attempt.revision_before = self.attempt.revision_after = current
        if head is None or current == head:
            return None
        app_hosts = backend.app_hosts(self.hs)
        if current is not None and current not in known:
            if app_hosts[-1] != self.hs.name:
                self.say(f"the database stays at {current} until {app_hosts[-1]} switches (the "
                         "last app host: no newer code runs then)")
                return None
            return head
        if app_hosts[0] != self.hs.name:
            raise Refused(f"the database is at {current or 'empty'}, behind {head}: the first app "
                          f"host, {app_hosts[0]}, migrates it (deploy there first)")
        self.backup()
        self.say(f"migrating the database {current or 'empty'} -> {head} "
                 "(the old release keeps serving)")
        ok, output = self.rh.run_once(backend.migration_service(self.hs),
                                      list(backend.MIGRATE_ARGV))
        if not ok:
            self.show(f"the migration to {head} failed; the database stays at "
                      f"{current or 'empty'} (one transaction)", output)
            raise Refused(f"its migration to {head} failed: {_tail(output, 1)}")
        self.attempt.revision_after = head
        self.undo.append(lambda: self.undo_migration(current))
        return None

    def step_down(self, head: str, live: dict) -> None:
        """Downgrade the database to the older release's ``head`` once that release serves (the
        older code runs on the newer schema, not the newer code on the older one), with the
        scripts of the newer release, still running but given no more traffic. A migration
        that cannot be downgraded refuses the rollback, unless --restore-backup was given."""
        current = self.attempt.revision_before
        self.backup()
        try:
            self.downgrade(head, "the newer release's scripts (the older one does not know "
                                 f"{current})", self.api(live))
        except Refused:
            if not self.hs.stack.restore_backup:
                raise Refused(f"the database cannot be downgraded from {current} to {head} (a "
                              "migration without a working downgrade); to go back anyway, "
                              "rollback --restore-backup puts back the dump taken before "
                              f"{self.attempt.version} was replaced (rows written since are "
                              "lost; a safety dump is taken first)") from None
            self.restore_dump_of(self.attempt.version)
        self.attempt.revision_after = head

    def downgrade(self, target: str, whose: str, instance) -> None:
        """``alembic downgrade target`` in ``instance`` (a running release that knows the
        revisions), or in a one-off container of the new release when None."""
        self.say(f"downgrading the database to {target} with {whose}")
        argv = ["alembic", "downgrade", target]
        ok, output = (self.rh.exec(instance, argv) if instance is not None
                      else self.rh.run_once(backend.migration_service(self.hs), argv))
        if not ok:
            self.show(f"the downgrade to {target} failed; the database is unchanged", output)
            raise Refused(f"the database cannot be downgraded to {target}: {_tail(output, 1)} "
                          "(a migration without a working downgrade)")

    def restore_dump_of(self, version: str) -> None:
        """Put back the newest dump taken while ``version`` served (rs-backup names dumps
        after the release serving): the database as that release left it."""
        directory = shlex.quote(self.hs.stack.backup.directory)
        _, names = self.rh.shell(f"cd {directory} && ls -1t -- *-{shlex.quote(version)}.dump "
                                 "2>/dev/null | head -1")
        if not backup.applies(self.hs) or not names.strip():
            raise Refused(f"no dump taken while {version} served is on {self.hs.name}")
        self.say(f"restoring {names.strip()} (the database as {version} left it; a safety dump "
                 "first)")
        ok, output = self.rh.shell(f"{backup.RESTORE_SCRIPT} {shlex.quote(names.strip())}")
        if not ok:
            self.show("the restore failed; the database is unchanged", output)
            raise Refused(f"the restore of {names.strip()} failed: {_tail(output, 1)}")

    def undo_migration(self, revision: str | None) -> None:
        """Take the database back to ``revision`` with the new release's scripts (they know
        both): the release that keeps serving expects it. None: the database was empty (a
        first release), and is again (``alembic downgrade base``), ready for any release."""
        self.downgrade(revision or "base", "the new release's own scripts", None)
        self.attempt.revision_after = revision

    def backup(self) -> None:
        """A dump of the database before migrating, named after the release serving now."""
        if not backup.applies(self.hs):
            self.say("no backup before migrating: this host keeps none (backup.enabled is off "
                     "or the database is elsewhere)")
            return
        ok, output = self.rh.shell(backup.SCRIPT)
        if not ok:
            self.show("the backup before migrating failed", output)
            raise Refused(f"the backup before migrating failed: {_tail(output, 1)}")
        found = re.search(r"wrote (\S+)", output)
        self.attempt.backup = found.group(1) if found else None
        self.say(f"backed up the database before changing its schema: {self.attempt.backup}")

    # --- 4. new instances ----------------------------------------------------------------------

    def start_beside(self, changing: list[ReleaseUnit], live: dict) -> dict:
        """Start one new instance of each changing unit beside its old one; wait until they
        are all ready."""
        counts = {u.service: (2 if u.service in live else 1) for u in changing}
        if not counts:
            return {}
        self.say(f"starting the new {', '.join(counts)} beside the old")
        started = time.monotonic()
        ok, output, instances = self.rh.start(counts)
        new = {u.service: instances.get(u.service) for u in changing}
        self.undo.append(lambda: self.remove_new(changing, new))
        if not ok:
            self.show("the new instances did not start", output)
            raise Refused(f"its services did not start: {_tail(output, 1)}")
        self.wait_ready(changing, new, started)
        return new

    def wait_ready(self, changing: list[ReleaseUnit], new: dict, started: float) -> None:
        """Wait until the new instances are ready, in the units' order (the frontend asks the
        API, so the API first), judged by :class:`rsdeploy.release.Readiness`; every round
        each instance not ready yet is checked too: one that stops or crash-loops refuses the
        release at once. ``started``: when they were started (``time.monotonic()``)."""
        retries = self.hs.stack.backend.health.retries
        gates = {u.service: Readiness(u.start_period, retries) for u in changing}
        waiting = list(changing)
        while waiting:
            seconds = time.monotonic() - started
            for unit in waiting:
                new[unit.service] = self.still_starting(unit, new[unit.service], seconds)
            first = waiting[0]
            if self.is_ready(first, new[first.service], gates[first.service], started):
                waiting.pop(0)
            else:
                time.sleep(PROBE_INTERVAL)

    def still_starting(self, unit: ReleaseUnit, instance, seconds: float):
        """``instance`` as it is now, ``seconds`` after it started; refuses the release when it
        did not start, stopped, or its processes fail again and again (a crash loop)."""
        instance = self.rh.refresh(instance) if instance is not None else None
        if instance is None:
            raise self.not_ready(unit, None, "it did not start")
        restarts, log = self.rh.since_start(instance)
        if instance.state not in ALIVE:
            failure = release.repeated_failure(log)
            raise self.not_ready(unit, instance, "it stopped" + (f": {failure[0]}" if failure else ""))
        looping = release.crash_loop(restarts, log, seconds)
        if looping is not None:
            raise self.not_ready(unit, instance, looping)
        return instance

    def is_ready(self, unit: ReleaseUnit, instance, gate: Readiness, started: float) -> bool:
        """Probe ``instance`` once (started at ``time.monotonic()`` ``started``): True when it
        is ready; refuses the release when it failed its gate. The times are the probe's own,
        not its round's: a loaded host's checks of the others take seconds."""
        seconds = time.monotonic() - started
        verdict, detail = self.rh.probe(instance, unit.probe, self.probe_timeout)
        if verdict == READY:
            # When it answered: the reported time is never earlier than the moment it was ready.
            self.say(f"{instance.name} is ready ({unit.probe.describe()}, "
                      f"after {time.monotonic() - started:.0f} s)")
            return True
        if gate.failed(verdict, seconds):
            raise self.not_ready(unit, instance, detail)
        return False

    @property
    def probe_timeout(self) -> int:
        """Seconds one probe may take (``backend.health.timeout``)."""
        return int(duration_seconds(self.hs.stack.backend.health.timeout))

    def not_ready(self, unit: ReleaseUnit, instance, detail: str) -> Refused:
        """The refusal for a new ``instance`` that is not ready, with the layout's view of it
        (OOM kills, exit code, restarts) and its last log lines shown first."""
        if instance is not None:
            why = self.rh.explain(instance)
            if why:  # the layout's view: OOM kills, exit code, restarts
                self.say(f"service {unit.service}: {why}", error=True)
                detail = f"{detail}; {why}"
            self.show(f"{instance.name} is not ready: {detail}; its last log lines",
                      self.rh.logs(instance, 20))
        return Refused(f"{self.attempt.version} failed its health check on {self.hs.name}: "
                       f"{unit.service}: {detail}")

    def remove_new(self, changing: list[ReleaseUnit], new: dict) -> None:
        """Undo :meth:`start_beside`: the new instances go (a worker gets its warm shutdown)."""
        for unit in changing:
            if new.get(unit.service) is not None:
                self.rh.stop([new[unit.service]], unit.grace if unit.strategy == OVERLAP else 5)
                self.rh.remove([new[unit.service]])
        self.say("removed the new release's instances")

    # --- 5. traffic ------------------------------------------------------------------------------

    def pin(self, targets: dict[str, str], reason: str) -> None:
        """Point the web server at ``targets`` and reload it gracefully."""
        ok, output = self.web.pin(targets)
        if not ok:
            self.show(f"nginx on {self.web.hs.name} did not take the new targets", output)
            raise Refused(f"nginx on {self.web.hs.name} refused the new targets: {_tail(output, 1)}")
        where = "" if self.web.hs.name == self.hs.name else f" (nginx on {self.web.hs.name})"
        self.say(f"traffic {reason}{where}: "
                 + ", ".join(f"{k} -> {v}" for k, v in sorted(targets.items())))

    def hold_traffic(self, serving: list[ReleaseUnit], live: dict) -> None:
        """Pin the web server to the old instances before new ones join the network (the
        service's name would soon resolve to both)."""
        old = {u.traffic: self.rh.proxy_target(live[u.service], u.probe.port)
               for u in serving if u.service in live}
        if old and self.web is not None:
            self.pin(old, "held on the serving release")
            self.undo.append(self.release_traffic)

    def switch_traffic(self, serving: list[ReleaseUnit], live: dict, new: dict) -> None:
        """Pin the web server to the new instances (the old ones finish what they serve)."""
        if not serving or self.web is None:
            return
        old_targets = {u.traffic: self.rh.proxy_target(live[u.service], u.probe.port)
                       for u in serving if u.service in live}
        targets = {u.traffic: self.rh.proxy_target(new.get(u.service) or live[u.service],
                                                   u.probe.port) for u in serving}
        self.pin(targets, "moved to the new release")
        if old_targets:
            self.undo.append(lambda: self.pin({**targets, **old_targets}, "back to the old release"))

    def release_traffic(self) -> None:
        """Remove the pins once one instance of each service is left: nginx goes back to the
        services' names, so the project stays usable with plain Compose commands. Where
        instances are reached by their own address (release slots), the pins stay."""
        if self.web is None or not self.rh.reached_by_name:
            return
        ok, output = self.web.unpin()
        if not ok:
            self.show("nginx did not reload without the pins", output)
            raise Refused(f"nginx did not reload without the pins: {_tail(output, 1)}")
        self.say("traffic by service name again (pins removed)")

    # --- 6. singletons ---------------------------------------------------------------------------

    def replace_singletons(self, singles: list[ReleaseUnit], live: dict) -> dict:
        """Stop the old instance first (never two at a time), then start and probe the new."""
        new = {}
        for unit in singles:
            old = live.get(unit.service)
            if old is not None:
                self.rh.stop([old], unit.grace)
                self.undo.append(lambda old=old: self.rh.start_again(old))
                self.say(f"stopped the old {old.name} (never two at a time)")
            new.update(self.start_beside([unit], live))
        return new

    # --- 7. drain and record ---------------------------------------------------------------------

    def quiesce(self, overlapping: list[ReleaseUnit], live: dict) -> None:
        """Stop the old instances of ``overlapping`` units (warm shutdown), kept for the undo."""
        for unit in overlapping:
            old = live.get(unit.service)
            if old is not None:
                self.say(f"stopping {old.name} (up to {unit.grace} s) before the downgrade")
                self.rh.stop([old], unit.grace)
                self.undo.append(lambda old=old: self.rh.start_again(old))

    def drain(self, changing: list[ReleaseUnit], live: dict) -> None:
        """Stop the old instances, each given its grace; an old singleton (already stopped) is
        removed."""
        singles = [live[u.service] for u in changing if u.strategy == SINGLE and u.service in live]
        self.rh.remove(singles)
        others = [u for u in changing if u.strategy != SINGLE]
        for grace in sorted({u.grace for u in others}):
            old = [live[u.service] for u in others if u.grace == grace and u.service in live]
            if old:
                self.say(f"draining {', '.join(i.name for i in old)} (up to {grace} s)")
                self.rh.stop(old, grace)
                self.rh.remove(old)

    def show(self, title: str, output: str) -> None:
        """A failure's output as one readable block, secrets masked."""
        lines = _readable(masked(output, self.hs))
        for line in [title + ":", *(f"  | {line}" for line in lines)]:
            self.say(line, error=True)

    def rollback(self) -> None:
        """Undo every step taken, most recent first; one failing does not stop the others."""
        for step in reversed(self.undo):
            try:
                step()
            except Refused as exc:
                self.say(f"could not undo a step: {exc}", error=True)
        self.undo.clear()


class WebServer:
    """nginx where it reaches one app host's instances: on that host, the traffic file of pins
    (variables); on the web host, the app host's own upstream pin files. ``rh``: the release
    primitives of the host nginx runs on (its shell, its graceful reload).

    Example: ``WebServer(web_hs, app_hs, rh).pin({"backend": "10.0.0.22:8001"})``
    """

    def __init__(self, hs: HostSettings, app: HostSettings, rh: ReleaseHost):
        self.hs, self.app, self.rh = hs, app, rh

    def _files(self, targets: dict[str, str]) -> dict[str, str]:
        if nginx.balances_app_hosts(self.hs):
            return {nginx.upstream_pin_file(self.hs, self.app.name, traffic): nginx.upstream_pin(target)
                    for traffic, target in targets.items()}
        return {f"{nginx.host_traffic_dir(self.hs)}/{nginx.TRAFFIC_FILE}": nginx.traffic_pins(targets)}

    def pinned(self) -> set[str]:
        """The targets nginx is pinned to for this app host now."""
        paths = self._files(dict.fromkeys(nginx.TRAFFIC, ""))
        _, text = self.rh.shell(f"cat {' '.join(shlex.quote(p) for p in paths)} 2>/dev/null || true")
        return nginx.pinned_targets(text)

    def pin(self, targets: dict[str, str]) -> tuple[bool, str]:
        """Write the pins (each file renamed into place), then reload nginx gracefully."""
        ok, output = True, ""
        for path, text in self._files(targets).items():
            quoted = shlex.quote(path)
            ok, output = self.rh.shell(f"printf '%s' {shlex.quote(text)} > {quoted}.new && "
                                       f"mv -f {quoted}.new {quoted}")
            if not ok:
                return ok, output
        return self.rh.reload_web()

    def unpin(self) -> tuple[bool, str]:
        """Remove the pins (nginx finds the services by name again) and reload nginx."""
        path = shlex.quote(f"{nginx.host_traffic_dir(self.hs)}/{nginx.TRAFFIC_FILE}")
        ok, output = self.rh.shell(f"rm -f {path}")
        return self.rh.reload_web() if ok else (ok, output)


def _revision(text: str) -> str | None:
    """The first Alembic revision id in ``alembic current``/``heads`` output, if any."""
    found = re.search(r"^(\w+)(?: \((?:head|effective head)\))*\s*$", text, re.MULTILINE)
    return found.group(1) if found else None


def _tail(output: str, lines: int) -> str:
    """The last ``lines`` lines of ``output`` that say something: the exception a Python
    program ended with when there is one (the SQL error, not SQLAlchemy's help link)."""
    kept = [line.strip() for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in kept if EXCEPTION_LINE.match(line)]
    return " ".join(errors[-1:] if errors and lines == 1 else kept[-lines:])[:300] or "no output"


def _readable(output: str) -> list[str]:
    """A failed command's output as a reader wants it: the steps it announced (Alembic's
    "Running upgrade") and its final error with the lines after it, not the whole traceback."""
    lines = output.strip().splitlines()
    last = max((i for i, line in enumerate(lines) if EXCEPTION_LINE.match(line.strip())), default=None)
    if last is None:
        return lines[-ERROR_LINES:]
    steps = [line for line in lines[:last] if "Running upgrade" in line or "Running downgrade" in line]
    return (steps + lines[last:])[-ERROR_LINES:]


def tag_commit(hs: HostSettings) -> str:
    """The release tag's commit in ``app.source_repo`` when there is one (images pulled from a
    registry may carry no revision label), else ""."""
    if not hs.stack.app.source_repo:
        return ""
    try:
        return source.release(hs)[1]
    except SettingsError:
        return ""


def record(hs: HostSettings, shell, attempt: Attempt) -> list[dict]:
    """Append ``attempt`` to the host's history, tell the rsdeploy command, and export the
    release for monitoring (node-exporter's textfile collector): the release serving (the last
    successful attempt) and this attempt. Returns the history as it now reads."""
    shell(release.append_command(hs, attempt))
    if attempt.result == FAILED:
        release.report_outcome(hs.name, attempt.version, FAILED, attempt.reason, attempt.previous)
    _, text = shell(f"cat {shlex.quote(release.history_file(hs))}")
    history = release.parse_history(text)
    serving = next((a for a in reversed(history) if a.get("result") == OK), None)
    metrics = release_metrics.render_metrics(release_metrics.stack_label(hs), serving,
                                             asdict(attempt))
    path = shlex.quote(f"{release_metrics.metrics_dir(hs)}/{release_metrics.METRICS_FILE}")
    # Renamed into place: node-exporter reads only *.prom files, never a half-written one.
    shell(f"mkdir -p {shlex.quote(release_metrics.metrics_dir(hs))} && "
          f"printf '%s' {shlex.quote(metrics)} > {path}.new && mv -f {path}.new {path}")
    return history


def prune(hs: HostSettings, history: list[dict], rh, say) -> None:
    """Keep the images of the last ``app.keep_releases`` successful releases of ``history``
    (the serving one among them), remove older app images."""
    good = [a for a in history if a.get("result") == OK and a.get("images")]
    keep = {ref for attempt in good[-hs.stack.app.keep_releases:] for ref in attempt["images"]}
    if keep:
        removed = rh.prune_images(keep)
        if removed:
            say(f"removed the images of older releases: {', '.join(removed)}")


def _shell_on(host: Host, connector: dict) -> Callable[[str], tuple[bool, str]]:
    """``shell(command) -> (ok, output)`` on ``host`` (connected first when --limit left it out)."""
    def shell(command: str) -> tuple[bool, str]:
        if not host.connected:
            host.connect(reason="to switch the release")
        ok, output = host.run_shell_command(command, **connector)
        return ok, output.stdout if ok else output.output
    return shell


def _web_server(state: State, hs: HostSettings, rh: ReleaseHost) -> WebServer | None:
    """nginx where it reaches this host's app (``rh``: this host's release primitives): here,
    or on the web host (over its own connection); None when no host runs it."""
    if nginx.applies(hs):
        return WebServer(hs, hs, rh)
    web = hs.peer("web")
    if web is None or not nginx.applies(web):
        return None
    shell = _shell_on(state.inventory.get_host(web.name), apply.connector_arguments(host))
    return WebServer(web, hs, web.layout.release_host(web, shell))


def switch_release(state: State, host: Host, hs: HostSettings, kind: str,
                   owed: list[str]) -> bool:
    """A pyinfra callback: switch this host to ``hs.stack.version`` (the module's story), or
    refuse and keep the old release serving. Records the attempt either way, and clears the
    notes of what the release asked for (``owed``, see :func:`rsdeploy.apply.remember_due`):
    switched, refused and undone, or not switched, nothing of it is owed any more.

    Example: ``python.call(name="Switch the release", function=switch_release, hs=hs,
    kind="deploy", owed=apply.due_markers(hs, [Recreate("backend"), DELIVERY]))``
    """
    shell = _shell_on(host, apply.connector_arguments(host))

    def say(line: str, error: bool = False) -> None:
        host.log_styled(line, fg="red" if error else None,
                        log_func=logger.error if error else logger.info)

    turns = turns_of(state)
    active = {h.name for h in state.inventory.get_active_hosts()}
    try:
        stopped = turns.wait(hs, active)
        if stopped is not None:
            reason = f"not switched: the rollout stopped when {stopped} refused {hs.stack.version}"
            say(f"{hs.name}: {reason}", error=True)
            release.report_outcome(hs.name, hs.stack.version, FAILED, reason, serving_now(hs, shell))
            turns.refused[hs.name] = reason
            switched = False
        else:
            rh = hs.layout.release_host(hs, shell)
            switched = _switch_release(hs, kind, shell, say, rh, _web_server(state, hs, rh),
                                       turns, active)
        shell(apply.forget_command(owed))
        return switched
    finally:
        turns.event(hs.name).set()


def serving_now(hs: HostSettings, shell) -> str | None:
    """The release the host serves (its version file), None before its first."""
    _, text = shell(f"cat {shlex.quote(release.version_file(hs))} 2>/dev/null || true")
    return text.strip() or None


def _switch_release(hs: HostSettings, kind: str, shell, say, rh: ReleaseHost,
                    web: WebServer | None, turns: Turns, active: set[str]) -> bool:
    """This host's switch, once its turn has come (see :func:`switch_release`)."""
    attempt = Attempt(version=hs.stack.version, kind=kind, who=release.who(),
                      started=release.now(), previous=serving_now(hs, shell))
    switch = Switch(hs, rh, say, attempt, web)
    # Recorded as begun: an attempt cut off (Ctrl-C, a dropped connection) shows as unfinished.
    shell(release.append_command(hs, attempt))
    try:
        switch.tidy(web.pinned() if web is not None else set())
        live = {service: group[-1] for service, group in rh.instances().items()}
        outdated = rh.outdated([u.service for u in units(hs) if u.service in live])
        changing = [u for u in units(hs) if u.service not in live or u.service in outdated
                    or live[u.service].state != "running"]
        older_head = switch.migrate(live)
        beside = [u for u in changing if u.strategy in (SERVE, OVERLAP)]
        serving = [u for u in units(hs) if u.strategy == SERVE]
        switch.hold_traffic([u for u in beside if u.strategy == SERVE], live)
        new = switch.start_beside(beside, live)
        switch.switch_traffic(serving, live, new)
        new.update(switch.replace_singletons([u for u in changing if u.strategy == SINGLE], live))
        if older_head is not None:
            # The last app host: the others of its wave switch meanwhile; none may keep newer code.
            stopped = turns.wait_for_the_others(hs, active)
            if stopped is not None:
                raise Refused(f"the database stays at {switch.attempt.revision_before}: "
                              f"{stopped} refused, and runs the newer release still")
            # The newer worker stops first: nothing of the newer release writes during the step.
            switch.quiesce([u for u in changing if u.strategy == OVERLAP], live)
            switch.step_down(older_head, live)
        switch.undo.clear()  # from here on the new release serves: no way back but a rollback
        switch.drain(changing, live)
        switch.release_traffic()
        rh.keep_definition()
        attempt.images = {i.image: i.image_id for i in new.values() if i is not None}
        attempt.commit = next((i.revision for i in new.values() if i and i.revision), "") \
            or tag_commit(hs)
    except Refused as exc:
        say(f"{hs.name}: {hs.stack.version} refused: {exc}; undoing its steps", error=True)
        switch.rollback()
        rh.restore_definition()
        record(hs, shell, attempt.finish(FAILED, str(exc)))
        turns.refused[hs.name] = str(exc)
        say(release.what_serves(hs.name, attempt.previous), error=True)
        return False
    prune(hs, record(hs, shell, attempt.finish(OK)), rh, say)
    say(f"{hs.name}: {hs.stack.version} serves ({kind} took "
        f"{release.seconds_between(attempt.started, attempt.ended)} s)")
    return True
