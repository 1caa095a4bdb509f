"""The docker layout's release primitives: what the release procedure (:mod:`rsdeploy.stack.release`)
asks of Compose while it switches a release.

A new instance of a service starts beside the old one as a second container of the same Compose
service (``create --no-recreate --scale SERVICE=2``, then ``docker start`` of the new one: the
old container keeps its definition, the new one gets the files just uploaded), so no container
is recreated in place. Compose itself says which services the uploaded files change (a dry run
of ``up``: ``docker compose config --hash`` does not match the containers' labels).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from rsdeploy.roles import nginx
from rsdeploy.release import CRASH_LOG_LINES, WRONG, CommandProbe, HttpProbe
from rsdeploy.stack.docker import diagnose
from rsdeploy.stack.docker.project import app_image, compose_command, compose_files

if TYPE_CHECKING:
    from collections.abc import Callable

    from rsdeploy.settings import HostSettings

#: Compose's labels on the containers of a project.
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
ONEOFF_LABEL = "com.docker.compose.oneoff"
#: The image label naming the source commit (containers inherit their image's labels).
REVISION_LABEL = "org.opencontainers.image.revision"


@dataclass(frozen=True)
class Instance:
    """One container of a Compose service."""

    name: str
    service: str
    number: int
    state: str  # running, paused, exited, created, restarting
    image: str  # as the Compose file names it
    image_id: str
    address: str  # on the project network ("" when not running)
    revision: str  # the source commit its image was built from ("" when unlabelled)
    published: dict[int, int] = field(default_factory=dict)  # host port by container port


class DockerReleaseHost:
    """Release primitives on one docker-layout host. ``shell(command)`` runs a shell line on the
    host (in any directory) and returns ``(ok, output)``.

    Example: ``DockerReleaseHost(hs, shell).instances()["backend"][0].name``
    """

    def __init__(self, hs: HostSettings, shell: Callable[[str], tuple[bool, str]]):
        self.hs, self.shell = hs, shell
        # nginx on this host finds the one container left by its service's name (Docker's DNS):
        # the pins go after a switch. Another host's nginx reaches each by its published port.
        self.reached_by_name = hs.has_role("web")

    def _compose(self, *args: str) -> tuple[bool, str]:
        return self.shell(f"cd {shlex.quote(self.hs.stack.paths.base_dir)} && "
                           + compose_command(self.hs, *args))

    # what runs ------------------------------------------------------------------------------

    def instances(self) -> dict[str, list[Instance]]:
        """The project's service containers (not one-off ``run`` ones), oldest first."""
        label = shlex.quote(f"label=com.docker.compose.project={self.hs.stack.compose.project}")
        return self._inspect(f"docker ps --all --quiet --filter {label}")

    def refresh(self, instance: Instance) -> Instance | None:
        """``instance`` as it is now (None once it is gone)."""
        found = self._inspect(f"echo {shlex.quote(instance.name)}").get(instance.service, [])
        return found[0] if found else None

    def _inspect(self, names_command: str) -> dict[str, list[Instance]]:
        ok, output = self.shell(f"{names_command} | xargs --no-run-if-empty docker inspect "
                                "2>/dev/null || true")
        found: dict[str, list[Instance]] = {}
        for container in json.loads(output or "[]") if ok else []:
            labels = container["Config"].get("Labels") or {}
            if labels.get(ONEOFF_LABEL) == "True" or SERVICE_LABEL not in labels:
                continue
            networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
            address = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), "")
            state = container["State"]["Status"]
            found.setdefault(labels[SERVICE_LABEL], []).append(Instance(
                name=container["Name"].lstrip("/"), service=labels[SERVICE_LABEL],
                number=int(labels.get(NUMBER_LABEL, "0")), state=state,
                image=container["Config"]["Image"],
                image_id=container["Image"], address=address if state == "running" else "",
                revision=labels.get(REVISION_LABEL, ""), published=_published(container)))
        return {service: sorted(found[service], key=lambda i: i.number) for service in found}

    def outdated(self, services: list[str]) -> set[str]:
        """The services whose running container differs from the uploaded files' definition
        (image, environment, anything): Compose's own judgement, from a dry run of ``up``."""
        if not services:
            return set()
        # Compose reports what it would do on stderr.
        ok, output = self.shell(f"cd {self._base} && "
                                + compose_command(self.hs, "--dry-run", "up", "--detach",
                                                  "--no-deps", *services) + " 2>&1")
        names = {i.name: i.service for group in self.instances().values() for i in group}
        found = re.findall(r"Container (\S+)\s+Recreate\b", output)
        return {names[name] for name in found if name in names}

    def address(self, instance: Instance, port: int) -> str:
        """Where the host reaches ``instance``'s ``port`` (its address on the project network)."""
        return f"{instance.address}:{port}"

    def proxy_target(self, instance: Instance, port: int) -> str:
        """How the web server names ``instance``: by container name on this host (Docker's DNS),
        by this host's private address and the instance's published port from another."""
        if self.reached_by_name:
            return f"{instance.name}:{port}"
        return f"{self.hs.address}:{instance.published.get(port, port)}"

    # changes ----------------------------------------------------------------------------------

    def start(self, counts: dict[str, int]) -> tuple[bool, str, dict[str, Instance]]:
        """Bring each service to ``counts[service]`` containers without touching existing ones
        (new ones get the uploaded definition) and start only the new ones; dependencies and
        stopped old containers stay as they are.

        Example: ``start({"backend": 2})``: a new backend beside the running one; returns
        ``(ok, output, {service: its new instance})``.
        """
        before = {i.name for group in self.instances().values() for i in group}
        scales = [arg for service, n in sorted(counts.items()) for arg in ("--scale", f"{service}={n}")]
        ok, output = self._compose("create", "--no-recreate", *scales, *sorted(counts))
        created = [i for group in self.instances().values() for i in group if i.name not in before]
        # `create` has no --no-deps: a dependency it made (the one-shot migration) goes again.
        self.remove([i for i in created if i.service not in counts])
        new = {i.service: i for i in created if i.service in counts}
        if ok and new:
            ok, output = self.shell(shlex.join(["docker", "start", *(i.name for i in new.values())]))
            # Started: Docker has given each its published port (the traffic pins name it).
            new = {service: self.refresh(i) or i for service, i in new.items()}
        return ok, output, new

    def run_once(self, service: str, argv: list[str]) -> tuple[bool, str]:
        """Run ``argv`` in a one-off container of ``service`` as the uploaded files define it
        (its image at the new release), removed afterwards. Example: ``run_once("migrate",
        ["alembic", "upgrade", "head"])``"""
        return self._compose("run", "--rm", "--no-deps", "-T", "--entrypoint", argv[0], service,
                             *argv[1:])

    def exec(self, instance: Instance, argv: list[str]) -> tuple[bool, str]:
        """Run ``argv`` inside a running instance."""
        return self.shell(shlex.join(["docker", "exec", instance.name, *argv]))

    def probe(self, instance: Instance, probe: HttpProbe | CommandProbe, timeout: int) -> tuple[str, str]:
        """Ask ``instance`` whether it is ready: ``(READY | NOT_YET | WRONG, detail)``; a
        container that does not run (restarting) is wrong."""
        if instance.state != "running":
            return WRONG, f"its container is {instance.state}"
        if isinstance(probe, CommandProbe):
            return probe.ask(lambda argv: self.exec(instance, argv), timeout)
        return probe.ask(self.shell, self.address(instance, probe.port), timeout)

    def stop(self, instances: list[Instance], grace: int) -> tuple[bool, str]:
        """Stop instances (SIGTERM, then SIGKILL after ``grace`` seconds), all at once."""
        if not instances:
            return True, ""
        return self.shell(shlex.join(["docker", "stop", "--time", str(grace),
                                       *(i.name for i in instances)]))

    def remove(self, instances: list[Instance]) -> tuple[bool, str]:
        """Remove stopped (or, failing that, any) instances."""
        if not instances:
            return True, ""
        return self.shell(shlex.join(["docker", "rm", "--force", *(i.name for i in instances)]))

    def start_again(self, instance: Instance) -> tuple[bool, str]:
        """Start a stopped instance again (an old singleton, when its successor failed)."""
        return self.shell(shlex.join(["docker", "start", instance.name]))

    def explain(self, instance: Instance) -> str | None:
        """What is wrong with ``instance`` in Docker's eyes (exit code, OOM kills, restarts,
        its own health check), or None when it looks fine from outside."""
        ok, output = self.shell(f"docker inspect {shlex.quote(instance.name)} 2>/dev/null")
        found = diagnose.findings(json.loads(output or "[]")) if ok else []
        if not found:
            return None
        # Docker's own check still in its start period says nothing the probe did not.
        finding = replace(found[0], health=None if found[0].health == "starting" else found[0].health)
        if finding.status == "running":
            _, counters = self.shell(diagnose.oom_counters_command(instance.name))
            finding = replace(finding, oom_kills=diagnose.oom_kills(counters))
        return finding.reason() or None

    def logs(self, instance: Instance, lines: int) -> str:
        _, output = self.shell(f"docker logs --tail {lines} {shlex.quote(instance.name)} 2>&1")
        return output

    def since_start(self, instance: Instance) -> tuple[int, str]:
        """What happened to ``instance`` since the switch started it: ``(how often Docker
        restarted it, its log)`` (each switch starts a new container: its whole log)."""
        name = shlex.quote(instance.name)
        _, output = self.shell(f"docker inspect --format '{{{{.RestartCount}}}}' {name}; "
                               f"docker logs --tail {CRASH_LOG_LINES} {name} 2>&1")
        count, _, log = output.partition("\n")
        return (int(count) if count.strip().isdigit() else 0), log

    def keep_definition(self) -> tuple[bool, str]:
        """Keep a copy of the files that define the serving release's services (the Compose
        files and app.env), to put back when a later release is refused."""
        return self.shell(f"mkdir -p {self._kept} && cd {self._base} && "
                          f"cp -p {' '.join(self._definition)} {self._kept}/")

    def restore_definition(self) -> tuple[bool, str]:
        """Put back the kept files (nothing when no release has been kept yet), so the project
        on disk names the release that serves, not the refused one."""
        return self.shell(f"if [ -d {self._kept} ]; then cp -p {self._kept}/* {self._base}/; fi")

    @property
    def _base(self) -> str:
        return shlex.quote(self.hs.stack.paths.base_dir)

    @property
    def _kept(self) -> str:
        return shlex.quote(f"{self.hs.stack.paths.data_dir}/releases/serving")

    @property
    def _definition(self) -> list[str]:
        return [*compose_files(self.hs), "app.env"]

    def prune_images(self, keep: set[str]) -> list[str]:
        """Remove the app's images (backend and frontend repositories) other than ``keep``
        (image references); an image a container still uses stays. The removed references."""
        repositories = {app_image(self.hs, part).rpartition(":")[0] for part in ("backend", "frontend")}
        _, output = self.shell("docker image ls --format '{{.Repository}}:{{.Tag}}'")
        old = sorted(ref for ref in output.split()
                     if ref.rpartition(":")[0] in repositories and ref not in keep)
        removed = []
        for ref in old:
            ok, _ = self.shell(f"docker image rm {shlex.quote(ref)} >/dev/null 2>&1")
            removed += [ref] if ok else []
        return removed

    def reload_web(self) -> tuple[bool, str]:
        """Check the web server's configuration, then reload it gracefully (in-flight requests
        finish on the old workers); done once the new workers alone take requests."""
        return self._compose("exec", "-T", "nginx", "sh", "-c",
                             "nginx -t -q || exit 1\n" + nginx.reload_and_wait("kill -HUP 1"))




def _published(container: dict) -> dict[int, int]:
    """The host port each container port is published on (``docker inspect``'s Ports)."""
    ports = (container.get("NetworkSettings") or {}).get("Ports") or {}
    return {int(spec.split("/")[0]): int(bindings[0]["HostPort"])
            for spec, bindings in ports.items() if bindings}
