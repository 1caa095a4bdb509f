"""The systemd layout's release primitives: what the release procedure
(:mod:`rsdeploy.stack.release`) asks of systemd and PM2 while it switches a release.

A release runs in one of two slots, blue and green: ``<base_dir>/slots/<slot>`` links to its
release directory; the backend, worker and beat are instances of unit templates
(``residency-backend@green.service``), the frontend a PM2 app per slot
(``residency-frontend-green``), each slot with its own ports (the first slot the configured
ones, the second the next ones). A new release starts in the slot the serving one does not use,
so nothing is restarted in place; nginx's traffic pins name the serving slot's ports and stay
(no name finds "the one instance" natively). Enabled units and PM2's saved list are the
serving slot's, so a reboot brings back what served.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rsdeploy.roles import backend, frontend, nginx
from rsdeploy.release import CRASH_LOG_LINES, WRONG, CommandProbe, HttpProbe
from rsdeploy.stack.systemd.delivery import (
    BUILT_MARKER,
    current_link,
    next_link,
    releases_dir,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from rsdeploy.settings import HostSettings

#: The release slots, in the order a fresh host uses them.
SLOTS = ("blue", "green")
#: The host's time as :meth:`SystemdReleaseHost.since_start` reads logs from it: seconds for
#: ``journalctl --since @N``, local time as PM2's lines start (``YYYY-MM-DDTHH:mm:ss:``).
CLOCK_FORMAT = "+%s %Y-%m-%dT%H:%M:%S"
#: systemd's view of a unit, from ``systemctl show``.
_UNIT_PROPERTIES = "Id,ActiveState,SubState,UnitFileState,ActiveEnterTimestamp,Result,ExecMainStatus,NRestarts"


@dataclass(frozen=True)
class Instance:
    """One service of a release slot: a unit instance or a PM2 app."""

    name: str
    service: str
    slot: str
    state: str  # running, created (starting), exited
    image: str  # the slot's release directory name
    image_id: str  # the same: a release directory is its own identity
    revision: str  # the source commit of the release
    since: float  # when it started (0 when not running)


class SystemdReleaseHost:
    """Release primitives on one systemd-layout host. ``shell(command)`` runs a shell line on
    the host and returns ``(ok, output)``.

    Example: ``SystemdReleaseHost(hs, shell).instances()["residency-backend"][0].slot``
    """

    #: The web server reaches an instance by its own port: pins stay after a switch.
    reached_by_name = False

    def __init__(self, hs: HostSettings, shell: Callable[[str], tuple[bool, str]]):
        self.hs, self.shell = hs, shell
        self.units = {u.service: u for u in backend.release_units(hs)}
        self.frontend = frontend.release_units(hs)[0].service
        self.target: str | None = None  # the slot this switch starts the new release in
        self.clock: dict[str, str] = {}  # service -> the host's time when start() started it

    # what runs ------------------------------------------------------------------------------

    def _unit(self, service: str, slot: str) -> str:
        return f"{service}@{slot}.service"

    def instances(self) -> dict[str, list[Instance]]:
        """Every slot's instances that run, failed or are enabled, by service, oldest first."""
        base = shlex.quote(self.hs.stack.paths.base_dir)
        names = [self._unit(service, slot) for service in self.units for slot in SLOTS]
        script = (f"for s in {' '.join(SLOTS)}; do echo \"slot $s $(readlink -f {base}/slots/$s "
                  "2>/dev/null)\"; done; echo '--'; "
                  f"systemctl show --timestamp=unix -p {_UNIT_PROPERTIES} {' '.join(names)}; "
                  f"echo '--'; {frontend.pm2_command(self.hs, 'jlist')} 2>/dev/null || true")
        ok, output = self.shell(script)
        if not ok:
            return {}
        links_text, _, rest = output.partition("\n--\n")
        units_text, _, pm2_text = rest.partition("\n--\n")
        links = {}
        for line in links_text.splitlines():
            parts = line.split()
            if len(parts) == 3:
                links[parts[1]] = parts[2].rsplit("/", 1)[-1]
        found: dict[str, list[Instance]] = {}
        for block in units_text.strip().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            match = re.fullmatch(r"(.+)@(\w+)\.service", props.get("Id", ""))
            if not match:
                continue
            active, enabled = props.get("ActiveState", ""), props.get("UnitFileState", "")
            if active in ("inactive", "") and enabled != "enabled" and props.get("Result") == "success":
                continue
            state = {"active": "running", "activating": "created", "reloading": "running",
                     "deactivating": "running"}.get(active, "exited")
            found.setdefault(match.group(1), []).append(
                self._instance(props["Id"], match.group(1), match.group(2), state,
                               _unix(props.get("ActiveEnterTimestamp", "")), links))
        for app in _json_list(pm2_text):
            slot = next((s for s in SLOTS if app.get("name") == frontend.app_name(s)), None)
            if slot is None:
                continue
            env = app.get("pm2_env") or {}
            state = {"online": "running", "launching": "created"}.get(env.get("status"), "exited")
            found.setdefault(self.frontend, []).append(self._instance(
                app["name"], self.frontend, slot, state, (env.get("pm_uptime") or 0) / 1000, links))
        return {service: sorted(group, key=lambda i: (i.since, i.name))
                for service, group in found.items()}

    def _instance(self, name: str, service: str, slot: str, state: str, since: float,
                  links: dict[str, str]) -> Instance:
        release = links.get(slot, "")
        return Instance(name=name, service=service, slot=slot, state=state, image=release,
                        image_id=release, revision=release.rpartition("-")[2], since=since)

    def refresh(self, instance: Instance) -> Instance | None:
        return next((i for i in self.instances().get(instance.service, [])
                     if i.name == instance.name), None)

    def outdated(self, services: list[str]) -> set[str]:
        """All of ``services`` when the serving slot's definition (release, app.env, units,
        ecosystem) differs from the uploaded one: a release's services move together."""
        ok, output = self.shell(f"{self._definition_command()}; echo '--'; "
                                f"cat {self._slots}/*.definition 2>/dev/null || true")
        wanted, _, recorded = output.partition("\n--\n")
        serving = {i.slot for group in self.instances().values() for i in group
                   if i.state == "running"}
        kept = dict(line.split(" ", 1) for line in recorded.splitlines() if " " in line)
        if ok and all(kept.get(slot) == wanted.strip() for slot in serving):
            return set()
        return set(services)

    def _definition_command(self) -> str:
        """A shell line printing the fingerprint of the uploaded definition."""
        files = [*self._definition_files(), *(backend.slot_env_path(self.hs, slot) for slot in SLOTS)]
        return (f"{{ readlink -f {shlex.quote(next_link(self.hs))}; cat "
                f"{' '.join(map(shlex.quote, files))}; }} 2>/dev/null | sha256sum | cut -c1-64")

    @property
    def _slots(self) -> str:
        return shlex.quote(f"{self.hs.stack.paths.base_dir}/slots")

    def address(self, instance: Instance, port: int) -> str:
        """Where the host reaches ``instance``'s ``port`` (the slot's port, on its listen address)."""
        host = backend.listen_address(self.hs, "web", "monitoring")
        return f"{host}:{backend.slot_ports(self.hs, port)[instance.slot]}"

    def proxy_target(self, instance: Instance, port: int) -> str:
        return self.address(instance, port)

    # changes ----------------------------------------------------------------------------------

    def _target_slot(self) -> str:
        """The slot this switch starts the new release in: the one no running instance uses."""
        if self.target is None:
            busy = {i.slot for group in self.instances().values() for i in group
                    if i.state == "running"}
            self.target = next((s for s in SLOTS if s not in busy), SLOTS[0])
        return self.target

    def start(self, counts: dict[str, int]) -> tuple[bool, str, dict[str, Instance]]:
        """Start each service of ``counts`` in the new release's slot (linked to ``next``
        first), enabled for boot. Returns ``(ok, output, {service: its new instance})``."""
        slot = self._target_slot()
        q = shlex.quote(f"{self.hs.stack.paths.base_dir}/slots/{slot}")
        link = (f"mkdir -p {self._slots} && release=$(readlink -f {shlex.quote(next_link(self.hs))}) "
                f"&& test -e \"$release/{BUILT_MARKER}\" && ln -sfn \"$release\" {q}.new && "
                f"mv -Tf {q}.new {q} && {{ {self._definition_command()}; }} | "
                f"sed 's/^/{slot} /' > {self._slots}/{slot}.definition")
        units = [self._unit(s, slot) for s in counts if s in self.units]
        commands = [link]
        if units:
            commands.append(f"systemctl enable --now {' '.join(units)}")
        if self.frontend in counts:
            commands.append(f"{self._pm2('start', frontend.ecosystem_path(self.hs), '--only', frontend.app_name(slot))}"
                            f" && {self._pm2('save', '--force')}")
        _, now = self.shell(f"date {shlex.quote(CLOCK_FORMAT)}")
        self.clock.update(dict.fromkeys(counts, now.strip()))
        ok, output = self.shell(" && ".join(commands) + " 2>&1")
        found = self.instances()
        new = {service: next((i for i in found.get(service, []) if i.slot == slot), None)
               for service in counts}
        return ok, output, {s: i for s, i in new.items() if i is not None}

    def _pm2(self, *args: str) -> str:
        return frontend.pm2_command(self.hs, *args)

    def _run(self, release: str, argv: list[str], slot: str | None = None) -> tuple[bool, str]:
        """``argv`` with the app's environment as the app user in ``release`` (a directory or
        link), in a transient unit (secrets reach it through the env file only)."""
        props = backend.run_properties(self.hs, release, slot)
        args = [arg for prop in props for arg in ("-p", prop)]
        hostname = f"-p Environment=HOSTNAME=$(hostname)-{slot} " if slot else ""
        return self.shell(f"systemd-run --quiet --wait --pipe --collect --service-type=exec "
                          f"{hostname}{shlex.join(args)} /usr/bin/env {shlex.join(argv)} 2>&1")

    def run_once(self, service: str, argv: list[str]) -> tuple[bool, str]:
        """Run ``argv`` once in the release the deploy brings (``next``)."""
        return self._run(next_link(self.hs), argv)

    def exec(self, instance: Instance, argv: list[str]) -> tuple[bool, str]:
        """Run ``argv`` in ``instance``'s release, with its slot's variables."""
        return self._run(f"{self.hs.stack.paths.base_dir}/slots/{instance.slot}", argv, instance.slot)

    def probe(self, instance: Instance, probe: HttpProbe | CommandProbe, timeout: int) -> tuple[str, str]:
        """``(READY | NOT_YET | WRONG, detail)`` of a release unit's probe."""
        if instance.state not in ("running", "created"):
            return WRONG, f"it is {instance.state}"
        if isinstance(probe, CommandProbe):
            return probe.ask(lambda argv: self.exec(instance, argv), timeout)
        return probe.ask(self.shell, self.address(instance, probe.port), timeout)

    def explain(self, instance: Instance) -> str | None:
        """systemd's or PM2's view: exit status, OOM kill, restarts."""
        if instance.service == self.frontend:
            app = next((a for a in _json_list(self.shell(self._pm2("jlist"))[1])
                        if a.get("name") == instance.name), {})
            env = app.get("pm2_env") or {}
            restarts = env.get("restart_time") or 0
            return (f"PM2 shows it {env.get('status')}, restarted {restarts} times"
                    if restarts or env.get("status") != "online" else None)
        _, output = self.shell(f"systemctl show -p Result,ExecMainStatus,NRestarts {shlex.quote(instance.name)}")
        props = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
        notes = []
        if props.get("Result") not in (None, "success"):
            notes.append(f"systemd: {props['Result']} (exit status {props.get('ExecMainStatus')})")
        if props.get("NRestarts", "0") not in ("", "0"):
            notes.append(f"restarted {props['NRestarts']} times")
        return "; ".join(notes) or None

    def logs(self, instance: Instance, lines: int) -> str:
        if instance.service == self.frontend:
            _, output = self.shell(f"tail -n {lines} {frontend.log_files(self.hs, instance.slot)} 2>&1")
            return output
        _, output = self.shell(f"journalctl --no-pager -o cat -n {lines} -u {shlex.quote(instance.name)}")
        return output

    def since_start(self, instance: Instance) -> tuple[int, str]:
        """What happened to ``instance`` since :meth:`start` started it: ``(how often systemd
        or PM2 restarted it, its log lines since)`` (the journal; PM2's files, whose lines
        start with their time)."""
        epoch, _, stamp = self.clock.get(instance.service, "0 0").partition(" ")
        if instance.service == self.frontend:
            app = next((a for a in _json_list(self.shell(self._pm2("jlist"))[1])
                        if a.get("name") == instance.name), {})
            _, log = self.shell(f"cat {frontend.log_files(self.hs, instance.slot)} 2>/dev/null | "
                                f"awk -v since={shlex.quote(stamp)} "
                                f"'substr($0, 1, 19) >= since' | tail -n {CRASH_LOG_LINES}")
            return int((app.get("pm2_env") or {}).get("restart_time") or 0), log
        name = shlex.quote(instance.name)
        _, output = self.shell(f"systemctl show -p NRestarts --value {name}; journalctl "
                               f"--no-pager -o cat -u {name} --since @{epoch} -n {CRASH_LOG_LINES}")
        count, _, log = output.partition("\n")
        return (int(count) if count.strip().isdigit() else 0), log

    def reload_web(self) -> tuple[bool, str]:
        """Check nginx's configuration, then reload it gracefully; done once the new workers
        alone take requests."""
        return self.shell("nginx -t -q 2>&1 || exit 1\n"
                          + nginx.reload_and_wait("systemctl reload nginx 2>&1"))

    def stop(self, instances: list[Instance], grace: int) -> tuple[bool, str]:
        """Stop instances (SIGTERM, then SIGKILL after ``grace`` seconds), all at once."""
        commands = []
        units = [i.name for i in instances if i.service != self.frontend]
        if units:
            names = " ".join(map(shlex.quote, units))
            commands.append(f"timeout {grace + 5} systemctl stop {names} || systemctl kill "
                            f"--signal=SIGKILL {names}")
        for i in instances:
            if i.service == self.frontend:
                commands.append(self._pm2("stop", i.name))
        return self.shell(" ; ".join(commands) + " 2>&1") if commands else (True, "")

    def start_again(self, instance: Instance) -> tuple[bool, str]:
        if instance.service == self.frontend:
            return self.shell(self._pm2("restart", instance.name) + " 2>&1")
        return self.shell(f"systemctl start {shlex.quote(instance.name)} 2>&1")

    def remove(self, instances: list[Instance]) -> tuple[bool, str]:
        """Stop and disable instances (their slot's release stays for a rollback)."""
        commands = []
        units = [i.name for i in instances if i.service != self.frontend]
        if units:
            names = " ".join(map(shlex.quote, units))
            commands.append(f"systemctl disable --now {names}; systemctl reset-failed {names}")
        apps = [i.name for i in instances if i.service == self.frontend]
        for name in apps:
            commands.append(self._pm2("delete", name))
        if apps:
            commands.append(self._pm2("save", "--force"))
        return self.shell(" ; ".join(commands) + " 2>&1 || true") if commands else (True, "")

    # the serving release's definition ------------------------------------------------------

    @property
    def _kept(self) -> str:
        return shlex.quote(f"{self.hs.stack.paths.data_dir}/releases/serving")

    def _definition_files(self) -> list[str]:
        """The uploaded files a release's services read (the slots' own env files aside)."""
        return [backend.app_env_path(self.hs), frontend.ecosystem_path(self.hs),
                *(f"/etc/systemd/system/{u.name}" for u in backend.app_units(self.hs))]

    def keep_definition(self) -> tuple[bool, str]:
        """Keep the serving release's files (app.env, units, ecosystem) and its release as
        ``current``, to put back when a later release is refused."""
        files = " ".join(map(shlex.quote, self._definition_files()))
        return self.shell(f"mkdir -p {self._kept} && cp -p {files} {self._kept}/ && "
                          f"ln -sfn \"$(readlink -f {shlex.quote(next_link(self.hs))})\" "
                          f"{shlex.quote(current_link(self.hs))}")

    def restore_definition(self) -> tuple[bool, str]:
        """Put the kept files back (nothing before the first release), ``next`` back on the
        serving release, and make systemd read the units again."""
        puts = " && ".join(f"cp -p {self._kept}/{shlex.quote(path.rsplit('/', 1)[1])} {shlex.quote(path)}"
                           for path in self._definition_files())
        current = shlex.quote(current_link(self.hs))
        return self.shell(f"if [ -d {self._kept} ]; then {puts} && ln -sfn \"$(readlink -f "
                          f"{current})\" {shlex.quote(next_link(self.hs))} && "
                          "systemctl daemon-reload; fi")

    def prune_images(self, keep: set[str]) -> list[str]:
        """Remove release directories other than ``keep`` (names) and those a slot, ``next`` or
        ``current`` links to. The removed names."""
        base = shlex.quote(self.hs.stack.paths.base_dir)
        _, output = self.shell(f"ls -1 {shlex.quote(releases_dir(self.hs))}; echo '--'; "
                               f"for l in {base}/slots/* {base}/next {base}/current; do "
                               "readlink -f \"$l\"; done 2>/dev/null")
        names, _, linked = output.partition("--")
        used = {line.rsplit("/", 1)[-1] for line in linked.split()}
        removed = []
        for name in sorted(set(names.split()) - keep - used):
            ok, _ = self.shell(f"rm -rf {shlex.quote(releases_dir(self.hs) + '/' + name)}")
            removed += [name] if ok else []
        return removed


def _unix(stamp: str) -> float:
    """``@1700000000`` (systemctl --timestamp=unix) in seconds; 0 when empty."""
    return float(stamp[1:]) if stamp.startswith("@") else 0.0


def _json_list(text: str) -> list[dict]:
    """PM2's ``jlist`` (it may print warnings before the JSON)."""
    start = text.find("[")
    try:
        return json.loads(text[start:]) if start >= 0 else []
    except json.JSONDecodeError:
        return []


