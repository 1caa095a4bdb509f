"""What a layout is: the one interface through which roles ask where and how things run.

A layout (``docker``: Compose; ``systemd``: native services and PM2) answers a role's questions
about one host: where a component's config and secret files live, which user owns them, what a
service is called, at which address a process reaches a service on the same host, how a command
runs in a service's context, and how the changes a file asks for are carried out. Roles read the
answer from ``hs.layout``; they never branch on the layout's name.

Implementations live in the stack layer (:mod:`rsdeploy.stack.docker`, :mod:`rsdeploy.stack.systemd`),
which may compose roles; this module imports none.

Reactions are typed: a rendered file says what its change asks for (:class:`Reload`,
:class:`Restart`, :class:`Recreate`, :class:`Exec` for a stack service; :class:`UnitRestart`,
:class:`UnitReload`, :class:`EnableTimer`, :class:`HostCommand` for the host itself). One loop
collects them (:func:`rsdeploy.apply.reactions`); host reactions are carried out by
:func:`rsdeploy.apply.react_on_host`, stack-service reactions by the layout's rollout.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings
    from rsdeploy.validate import Verdict


# --- reactions ----------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Reaction:
    """What a changed file asks of the host. ``target`` names a stack service or a host unit."""

    target: str


@dataclass(frozen=True, order=True)
class Reload(Reaction):
    """A stack service rereads its configuration (SIGHUP, ``systemctl reload``)."""


@dataclass(frozen=True, order=True)
class Restart(Reaction):
    """A stack service that reads the file only at start is restarted."""


@dataclass(frozen=True, order=True)
class Recreate(Reaction):
    """A stack service's definition changed (Compose file, env file): the layout recreates it
    (``docker compose up``; a native unit is restarted)."""


@dataclass(frozen=True, order=True)
class Exec(Reaction):
    """A command run in a stack service's context, e.g. re-applying database roles.

    Example: ``Exec("db", ("psql", "-f", "/x/roles.sql"), "Apply changed database roles",
    user="postgres")``
    """

    argv: tuple[str, ...] = ()
    summary: str = ""
    user: str = "root"  # natively the host user it runs as (a container: its image's user)


@dataclass(frozen=True, order=True)
class HostReaction(Reaction):
    """Carried out by the host itself, the same in every layout (:mod:`rsdeploy.apply`)."""


@dataclass(frozen=True, order=True)
class UnitRestart(HostReaction):
    """A host systemd unit restarted, e.g. ``docker.service``."""


@dataclass(frozen=True, order=True)
class UnitReload(HostReaction):
    """A host systemd unit reloaded (after a daemon-reload), e.g. the firewall."""


@dataclass(frozen=True, order=True)
class EnableTimer(HostReaction):
    """A host systemd timer: enabled and started, restarted when its units change."""


@dataclass(frozen=True, order=True)
class HostCommand(HostReaction):
    """A one-shot command on the host, e.g. ``update-ca-certificates``; ``target`` is the argv."""


# --- logs and control ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LogSource:
    """Where a service's log lines are read on its host: its containers' output (``compose``:
    the Compose service), the journal (``journal``: a unit, or a pattern such as
    ``residency-backend@*.service``) or files (``file``: a path, or a glob).

    Example: ``LogSource("file", "/var/log/nginx/access.log")``
    """

    kind: str
    target: str


@dataclass(frozen=True)
class Control:
    """How a service is stopped and started on its host: ``compose`` (the Compose service),
    ``unit`` (a systemd unit), ``slots`` (the app's unit template: the instance of the serving
    release slot, the enabled one) or ``pm2`` (the serving slot's PM2 app of this name).

    Example: ``Control("slots", "residency-backend@.service")``
    """

    kind: str
    target: str


# --- release primitives ---------------------------------------------------------------------------


class ReleaseHost(Protocol):
    """What the release procedure (:mod:`rsdeploy.stack.release`) asks of a layout on one host
    while it switches a release. An instance is one running copy of a service (a container, a
    unit on its own port) with at least ``name``, ``service``, ``state`` ("running", ...),
    ``image``, ``image_id`` and ``revision``. Commands answer ``(ok, output)``."""

    #: Whether the web server finds the one instance left after a switch by its service's name
    #: (the traffic pins are removed), or only by the instance's own address (they stay).
    reached_by_name: bool

    def shell(self, command: str) -> tuple[bool, str]:
        """Run a shell line on the host."""

    def instances(self) -> dict[str, list]:
        """Every instance of the stack's services, by service, oldest first."""

    def refresh(self, instance):
        """``instance`` as it is now, None once it is gone."""

    def outdated(self, services: list[str]) -> set[str]:
        """Those of ``services`` whose running instance differs from the uploaded definition."""

    def start(self, counts: dict[str, int]) -> tuple[bool, str, dict]:
        """Bring each service to ``counts[service]`` instances, starting only the new ones:
        ``(ok, output, {service: its new instance})``."""

    def run_once(self, service: str, argv: list[str]) -> tuple[bool, str]:
        """Run ``argv`` once as the uploaded definition of ``service`` (the new release)."""

    def exec(self, instance, argv: list[str]) -> tuple[bool, str]:
        """Run ``argv`` inside a running instance (the release it runs)."""

    def probe(self, instance, probe, timeout: int) -> tuple[str, str]:
        """``(READY | NOT_YET | WRONG, detail)`` of a release unit's probe
        (:mod:`rsdeploy.release`)."""

    def since_start(self, instance) -> tuple[int, str]:
        """``(restarts, log)`` of an instance since this switch started it: how often its
        supervisor (Docker, systemd, PM2) restarted it, and its log lines since (at most
        :data:`rsdeploy.release.CRASH_LOG_LINES`), for :func:`rsdeploy.release.crash_loop`."""

    def explain(self, instance) -> str | None:
        """What the layout sees wrong with an instance (exit code, OOM kills), if anything."""

    def logs(self, instance, lines: int) -> str:
        """The instance's last log lines."""

    def proxy_target(self, instance, port: int) -> str:
        """How the web server names the instance's ``port``."""

    def reload_web(self) -> tuple[bool, str]:
        """Check the web server's configuration, then reload it gracefully."""

    def stop(self, instances: list, grace: int) -> tuple[bool, str]:
        """Stop instances, each given ``grace`` seconds to finish its work."""

    def start_again(self, instance) -> tuple[bool, str]:
        """Start a stopped instance again."""

    def remove(self, instances: list) -> tuple[bool, str]:
        """Remove instances."""

    def keep_definition(self) -> tuple[bool, str]:
        """Keep the serving release's definition files, to put back after a refused release."""

    def restore_definition(self) -> tuple[bool, str]:
        """Put the kept definition files back."""

    def prune_images(self, keep: set[str]) -> list[str]:
        """Remove the app's release artifacts other than ``keep``; the removed ones."""


# --- the layout interface -------------------------------------------------------------------------


class Layout(ABC):
    """Where and how one layout runs the stack's components (see the module docstring)."""

    #: The layout's name as settings spell it (for messages and records, never for branching).
    name: str
    #: Whether components run in containers from images (their flags name container paths, the
    #: host's files are mounted in) rather than as the distribution's packages.
    runs_in_containers: bool
    #: The slots a release of the app runs in, each with its own ports (the first slot the
    #: configured ones, the next ones further up); none where instances of a service share a name.
    release_slots: tuple[str, ...] = ()
    #: Between the ports of two release slots (a slot's port: the configured one + i * step).
    release_port_step: int = 0

    def release_slots_on(self, hs: HostSettings) -> tuple[str, ...]:
        """The slots the app's instances take ports in on ``hs``: the layout's own, by default.

        Example: ``hs.layout.release_slots_on(hs)`` -> ``("blue", "green")``
        """
        return self.release_slots

    # where ---------------------------------------------------------------------------------------

    @abstractmethod
    def config_path(self, hs: HostSettings, component: str, name: str, native: str) -> str:
        """Where a component's config file ``name`` lives on the host; ``native`` is where the
        distribution's package reads it. Example: ``hs.layout.config_path(hs, "loki",
        "config.yml", "/etc/loki/config.yml")``"""

    @abstractmethod
    def secrets_dir(self, hs: HostSettings, native: str) -> str:
        """The host directory of a component's secret files (``native``: the package's)."""

    @abstractmethod
    def secret_read_dir(self, hs: HostSettings, native: str) -> str:
        """The directory the reading process opens secret files in (a container's mount)."""

    @abstractmethod
    def data_dir(self, container: str, native: str) -> str:
        """A component's state directory as the process sees it (``container``: in its image)."""

    @abstractmethod
    def file_owner(self, image_uid: int | str, native_user: str) -> str:
        """Who owns a file its component reads: the uid its image runs as, or the package's user."""

    # names and addresses -------------------------------------------------------------------------

    @abstractmethod
    def service(self, container: str, unit: str) -> str:
        """The name a component runs under: its Compose service or its systemd unit."""

    @abstractmethod
    def local_endpoint(self, service: str) -> str:
        """The address at which processes on a host reach ``service`` on the same host."""

    @abstractmethod
    def host_address(self, hs: HostSettings) -> str:
        """The host itself as its own processes see it (host-network services listen there)."""

    @abstractmethod
    def listen_address(self, hs: HostSettings, shared: bool) -> str:
        """Where a service binds: ``shared`` when other hosts reach it. In a container every
        interface (the port mapping decides exposure); natively loopback or the private address.
        """

    @abstractmethod
    def exec_argv(self, hs: HostSettings, service: str, argv: list[str]) -> list[str]:
        """A command line that runs ``argv`` in ``service``'s context on the host.

        Example: ``hs.layout.exec_argv(hs, "db", ["pg_dump", ...])``
        """

    @abstractmethod
    def run_argv(self, hs: HostSettings, service: str, argv: list[str],
                 publish: str | None = None) -> list[str]:
        """A command line that runs ``service``'s own program once with the arguments ``argv``
        (its image's entrypoint with its mounts; natively the program named like the service),
        optionally publishing ``host:container`` port ``publish``.

        Example: ``hs.layout.run_argv(hs, "certbot", ["renew"])``
        """

    @abstractmethod
    def command_dir(self, hs: HostSettings) -> str:
        """The directory the command lines above run in."""

    @abstractmethod
    def script_context(self, hs: HostSettings) -> dict:
        """Values the host's own scripts (rs-status, rs-backup) need to reach the services,
        e.g. ``{"compose_args": [...]}``; the templates of those scripts read them."""

    @abstractmethod
    def unit_after(self, service: str) -> str:
        """The host unit a host-side job needing ``service`` orders itself after."""

    @abstractmethod
    def services(self, hs: HostSettings) -> list[str]:
        """The long-running services of the stack on this host (rs-status and verify list them)."""

    @abstractmethod
    def log_sources(self, hs: HostSettings) -> dict[str, list[LogSource]]:
        """Where each service of the host logs, by the name people type (the Compose service's
        in either layout: ``backend``, ``db``, ``nginx``); what rs-logs reads."""

    @abstractmethod
    def controls(self, hs: HostSettings) -> dict[str, Control]:
        """How each service of the host is stopped and started, by the same names as
        :meth:`log_sources`, in the order they start (data stores first, the web server last);
        what rs-service acts on."""

    @abstractmethod
    def service_running(self, hs: HostSettings, service: str) -> bool:
        """Whether ``service`` runs on the host now (a fact: only while a deploy prepares)."""

    # the layout's own files --------------------------------------------------------------------

    @abstractmethod
    def render(self, hs: HostSettings) -> list[RenderedFile]:
        """Files of the layout itself (the Compose project), beside the roles' files."""

    @abstractmethod
    def validate(self, tree: Path, hs: HostSettings) -> list[Verdict]:
        """The real validator on the layout's own rendered files."""

    # releases --------------------------------------------------------------------------------------

    @abstractmethod
    def builds_from_source(self, hs: HostSettings) -> bool:
        """Whether this host's release is built from the tagged source (needs app.source_repo)."""

    def preflight(self, hs: HostSettings) -> None:
        """Check what delivery reads where rsdeploy runs (not on the host), before any host is
        contacted; raise SettingsError. Nothing by default."""

    @abstractmethod
    def deliver(self, hs: HostSettings, rendered: list[RenderedFile], ahead: bool = False) -> list:
        """Put what the release needs on the host (images, built code) unless it is there;
        returns the operations, so the rollout knows something new arrived. ``ahead``: for a
        later deploy only (``rsdeploy deliver``): nothing the serving release or the next deploy
        reads is changed."""

    @abstractmethod
    def release_host(self, hs: HostSettings,
                     shell: Callable[[str], tuple[bool, str]]) -> ReleaseHost:
        """The primitives the release procedure (:mod:`rsdeploy.stack.release`) switches a
        release with on this host: list and start instances, probe them, run the migrations,
        pin the web server's traffic, stop and remove. ``shell`` runs a shell line on the host.
        """

    @abstractmethod
    def roll_out(self, hs: HostSettings, reactions: dict[Reaction, list], delivered: list,
                 released: frozenset[str] = frozenset()) -> None:
        """Bring the stack up on this host, health-gated, then carry out the stack-service
        ``reactions`` (each gated on the operations that asked for it). The ``released``
        services are left to the release procedure, which switches them afterwards."""
