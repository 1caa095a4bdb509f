"""The host settings model and its loader: one source of truth for templates, deploys and verify.

Settings come from pyinfra host data (inventory, group data, ``--data``); secrets come from
:mod:`rsdeploy.secrets`. Everything is validated before any host is contacted: a bad value raises
:class:`~rsdeploy.errors.SettingsError` naming the inventory file, the host and the key.

This core module knows no component: the stack layer (:mod:`rsdeploy.stack.settings`) composes
every role's section into its model and hands it to the loader as a :class:`StackModel`.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator
from pyinfra.api import State
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import make_inventory as pyinfra_make_inventory

from rsdeploy.errors import SettingsError, UserError, describe
from rsdeploy.layout import Layout
from rsdeploy.secrets import SecretSources, Secrets, env_name, load_secrets
from rsdeploy.types import (
    Domain,
    HostAddress,
    Line,
    Name,
    OneLine,
    Registry,
    Section,
    Tag,
    shown,
)

Role = Literal["db", "redis", "app", "web", "monitoring"]
ROLES: tuple[Role, ...] = ("db", "redis", "app", "web", "monitoring")

#: What an inventory host may be called: a host name or IP address. The name is a directory of
#: ``rsdeploy render``, an SSH ``Host``, a Prometheus label: no ``/``, ``@``, space or glob.
HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")

# Host data keys that belong to pyinfra itself (connectors, global operation arguments).
PYINFRA_KEY_PREFIXES = ("_", "ssh_", "docker_", "dockerssh_", "podman_", "winrm_", "local_",
                        "chroot_", "vagrant_", "terraform_")


class Paths(Section):
    base_dir: str = "/opt/residency-scheduler"  # releases, Compose project, configs
    data_dir: str = "/var/lib/residency-scheduler"  # persistent state (backups, release history)
    log_dir: str = "/var/log/residency-scheduler"  # application logs (systemd layout), logrotated
    config_dir: str = "/etc/residency-scheduler"  # systemd layout: app.env and secrets

    @field_validator("*")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or value.rstrip("/") != value or len(value) < 2:
            raise ValueError(f"{value!r} must be an absolute path without a trailing slash")
        # These paths land in unit files, shell scripts and Compose files alike.
        if not re.fullmatch(r"[A-Za-z0-9._/-]+", value):
            raise ValueError(f"{value!r} may hold only letters, digits, '.', '_', '-' and '/'")
        return value


class AppSettings(Section):
    # How app images reach docker-layout hosts: pull from a registry, bundle (docker save files
    # uploaded and loaded: air-gapped sites), or build on the host from the tagged source.
    delivery: Literal["pull", "bundle", "build"] = "pull"
    registry: Registry | None = None  # pull: image prefix, e.g. registry.example.org:5000/residency
    registry_username: Line | None = None  # pulls log in to app.registry (password: secret registry_password)
    # build: the app's git repository (a path relative to the inventory, or a URL), read where
    # rsdeploy runs; hosts get `git archive` of the release tag, never git or credentials.
    source_repo: Line | None = None
    build_args: dict[str, OneLine] = {}  # build: --build-arg values (not secrets: images keep them)
    # app images of the last N successful releases kept on each host (a rollback to them needs
    # no delivery); older ones are removed after a release, never the serving one
    keep_releases: int = Field(default=3, ge=1, le=50)
    # systemd layout: keep each release built on an app host where rsdeploy runs, and give it
    # to other app hosts of the same platform instead of building it again
    release_cache: bool = True

    @field_validator("source_repo")
    @classmethod
    def _not_an_option(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("-"):  # git would read it as an option
            raise ValueError(f"{shown(value)} starts with '-': write ./{value} for a path")
        return value

    @field_validator("build_args")
    @classmethod
    def _arg_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not a Dockerfile ARG name")
        return value

    @property
    def registry_login(self) -> bool:
        """Whether pulls log in to app.registry's host (pull and build delivery pull images)."""
        return self.delivery != "bundle" and bool(self.registry and self.registry_username)
    bundle_dir: Line | None = None  # bundle: `rsdeploy images bundle` output, relative to the inventory


class BaseStackSettings(Section):
    """The stack-wide part of one host's settings; the stack layer adds every role's section
    (:class:`rsdeploy.stack.settings.StackSettings`)."""

    layout: Literal["docker", "systemd"]  # docker: Compose; systemd: native services + PM2
    version: Tag  # application release tag to deploy (also --data version=TAG)
    domain: Domain  # public name of the site (TLS certificate, nginx server_name)
    extra_domains: list[Domain] = []  # further names served and put on the certificate
    environment: Name = "production"  # label on metrics and alerts (production, staging, ...)
    roles: list[Role] = Field(default_factory=lambda: list(ROLES), min_length=1)  # on this host
    address: HostAddress | None = None  # address the stack's other hosts use for this one
    trusted_ca_certs: list[Line] = []  # extra CA PEM files (paths relative to the inventory)
    paths: Paths = Paths()
    app: AppSettings = AppSettings()

    @field_validator("roles")
    @classmethod
    def _unique_roles(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a role twice")
        return value

    @field_validator("extra_domains")
    @classmethod
    def _each_name_once(cls, value: list[str], info) -> list[str]:
        """nginx serves and certbot certifies the same names, each once."""
        for i, name in enumerate(value):
            if name == info.data.get("domain") or name in value[:i]:
                again = "the domain already" if name == info.data.get("domain") else "listed twice"
                raise ValueError(f"{name!r} is {again}: nginx and certbot take each name once")
        return value

    @field_validator("trusted_ca_certs")
    @classmethod
    def _distinct_names(cls, value: list[str]) -> list[str]:
        """Each certificate is installed as <file stem>.crt: two files of one stem would be one."""
        stems = [Path(path).stem for path in value]
        for i, stem in enumerate(stems):
            if stem in stems[:i]:
                raise ValueError(f"{value[i]!r} and {value[stems.index(stem)]!r} would both be "
                                 f"installed as {stem}.crt: rename one")
        return value

    @property
    def domains(self) -> list[str]:
        """The primary domain first, then the extra ones."""
        return [self.domain, *self.extra_domains]


@dataclass(frozen=True)
class HostRef:
    """One host of the stack as the others see it."""

    name: str
    address: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    """Which hosts carry which role, for the whole inventory (a role may be on several)."""

    hosts: tuple[HostRef, ...]

    def carrying(self, role: str) -> list[HostRef]:
        """The hosts that carry ``role``, in inventory order. Example: ``topology.carrying("db")``."""
        return [h for h in self.hosts if role in h.roles]


@dataclass(frozen=True)
class HostSettings:
    """What templates, roles and the verify suite read for one host.

    Other hosts are found one way: :meth:`peers` / :meth:`peer` give their settings, seen with
    the same stack-wide facts; :meth:`endpoint` and :meth:`reach` give where this host's
    processes reach a service on them.
    """

    name: str  # inventory name
    stack: Any  # this host's StackSettings (the stack layer's model, validated)
    secrets: Secrets
    topology: Topology
    stack_settings: dict[str, Any]  # every host's StackSettings, by name (cross-host facts)
    source: str  # the inventory file, for messages
    layout: Layout  # where and how this host runs the components
    connection: dict[str, Any] = field(default_factory=dict)  # pyinfra ssh_* data (verify uses it)

    @property
    def address(self) -> str:
        return self.stack.address or self.name

    @property
    def login_user(self) -> str:
        """Who rsdeploy logs in as over SSH (root unless the inventory names a user)."""
        return str(self.connection.get("ssh_user") or "root")

    def trusted_ca_certificates(self) -> dict[str, str]:
        """Extra CA certificates by name (file stem), read from files beside the inventory."""
        base = Path(self.source).parent
        return {Path(p).stem: (base / p).read_text() for p in self.stack.trusted_ca_certs}

    def has_role(self, role: str) -> bool:
        return role in self.stack.roles

    def on(self, name: str) -> HostSettings:
        """Host ``name`` of the stack, seen with the same stack-wide facts.

        Example: ``hs.on("db1.example.org").stack.exporters.postgres_exporter.enabled``
        """
        return replace(self, name=name, stack=self.stack_settings[name])

    def peers(self, role: str) -> list[HostSettings]:
        """Every host carrying ``role`` (this one included when it does).

        Example: ``[p.address for p in hs.peers("app")]``
        """
        return [self.on(ref.name) for ref in self.topology.carrying(role)]

    def peer(self, role: str) -> HostSettings | None:
        """The first host carrying ``role``, or None when no host does."""
        found = self.topology.carrying(role)
        return self.on(found[0].name) if found else None

    def reach(self, host: str, service: str, port: int) -> str:
        """``host:port`` at which this host's processes reach ``service`` running on ``host``:
        the layout's local endpoint on the same host, else that host's (private) address.

        Example: ``hs.reach("db1.example.org", "postgres-exporter", 9187)`` -> ``"10.0.0.21:9187"``
        """
        if host == self.name:
            return f"{self.layout.local_endpoint(service)}:{port}"
        return f"{self.on(host).address}:{port}"

    def endpoint(self, role: str, service: str) -> str:
        """Host name or address this host's processes use to reach ``service`` of ``role``.

        Example: ``hs.endpoint("db", "db")`` -> ``"db"`` (same host, docker) or ``"10.0.0.21"``
        """
        if self.has_role(role):
            return self.layout.local_endpoint(service)
        carrier = self.peer(role)
        if carrier is None:
            raise ValueError(f"no host carries role {role} (needed for {service})")
        return carrier.address

    def monitoring_enabled(self, component: str) -> bool:
        """Whether the stack runs a monitoring ``component`` (prometheus, loki, grafana, ...)."""
        monitoring = self.peer("monitoring")
        return monitoring is not None and getattr(monitoring.stack, component).enabled


# --- loading ----------------------------------------------------------------------------------


class SecretRules:
    """The app's own production rules for secrets, with errors that say where each came from.

    Roles state what they need in their ``check(hs, rules)``.
    Example: ``rules.require("db_password", "the database", 12)``
    """

    def __init__(self, secrets: Secrets, sources: SecretSources):
        self.secrets, self.sources = secrets, sources

    def fail(self, key: str, message: str) -> SettingsError:
        return SettingsError(self.sources.of(key), None, key, message)

    def require(self, key: str, why: str, min_length: int = 1) -> str:
        value = getattr(self.secrets, key)
        if not value:
            raise self.fail(key, f"missing secret, needed for {why}: set {env_name(key)} "
                            "or add it to the secrets file (--secrets FILE or RS_SECRETS_FILE)")
        self.length(key, value, min_length)
        return value

    def length(self, key: str, value: str, min_length: int) -> None:
        if len(value) < min_length:
            raise self.fail(key, f"must be at least {min_length} characters (has {len(value)}); "
                            "the backend refuses shorter ones in production")


@dataclass(frozen=True)
class StackModel:
    """What the stack layer gives the loader: its settings model, its layouts by name, the roles
    one host carries at most, and the checks that span hosts and sections (each
    ``check(hosts, rules)`` raises SettingsError)."""

    settings: type[BaseStackSettings]
    layouts: dict[str, Layout]
    single_host_roles: tuple[str, ...] = ()
    checks: tuple[Callable[[dict[str, HostSettings], SecretRules], None], ...] = ()


def make_inventory(inventory_path: str, override_data: dict[str, Any] | None = None):
    """Load a pyinfra inventory file without contacting any host; a broken file is a
    SettingsError naming it. Example: ``make_inventory("inventories/prod.py")``
    """
    if not Path(inventory_path).is_file():
        raise SettingsError(inventory_path, None, None, "inventory file not found")
    try:
        with ctx_state.use(State()):  # pyinfra executes inventory files inside a state context
            inventory = pyinfra_make_inventory(inventory_path, override_data=override_data or {})
    except (Exception, SystemExit) as exc:  # a broken inventory: say which file and why
        raise SettingsError(inventory_path, None, None,
                            f"cannot load inventory: {_load_error(exc, inventory_path)}") from None
    if not len(inventory):
        raise SettingsError(inventory_path, None, None, "the inventory has no hosts")
    layers = {"the data of all hosts": inventory.get_data(),
              **{f"group {name!r}'s data": data for name, data in inventory.group_data.items()}}
    for layer, data in layers.items():
        if not isinstance(data, dict):  # pyinfra would fail merging it into each host's data
            raise SettingsError(inventory_path, None, None, f"{layer} must be a mapping, "
                                f"not {type(data).__name__}")
    return inventory


def _load_error(exc: BaseException, inventory_path: str) -> str:
    """What broke loading an inventory file, on one line: the error raised in the file itself
    (pyinfra wraps it in an UnexpectedExternalError, whose own str() fails) and its line there.

    Example: ``"line 3: NameError: name 'stak' is not defined"``
    """
    original = getattr(exc, "exception", None) or exc
    frames = [frame for frame in traceback.extract_tb(original.__traceback__)
              if Path(frame.filename).resolve() == Path(inventory_path).resolve()]
    return (f"line {frames[-1].lineno}: " if frames else "") + describe(original)


def load_inventory(model: StackModel, inventory_path: str, secrets_path: str | None = None,
                   override_data: dict[str, Any] | None = None,
                   env: dict[str, str] | None = None) -> dict[str, HostSettings]:
    """Load and validate every host of a pyinfra inventory file, without contacting any host.

    Example: ``hosts = load_inventory(STACK, "inventories/example_docker.py", "secrets.yml")``
    """
    inventory = make_inventory(inventory_path, override_data)
    secrets, sources = load_secrets(secrets_path, env)
    return settings_for_inventory(model, inventory, inventory_path, secrets, sources)


def settings_for_inventory(model: StackModel, inventory, source: str, secrets: Secrets,
                           sources: SecretSources) -> dict[str, HostSettings]:
    """Validate the data of every host of a pyinfra ``Inventory`` (CLI and deploys share this)."""
    for host in inventory:
        _check_host_name(source, host.name)
    stacks = {host.name: _validate_host(model.settings, host, inventory, source)
              for host in inventory}
    topology = _topology(stacks, source, model.single_host_roles)
    _check_stack_wide(stacks, source)
    connections = {host.name: _connection(host, source) for host in inventory}
    hosts = {
        name: HostSettings(name, stack, secrets, topology, stacks, source,
                           model.layouts[stack.layout], connections[name])
        for name, stack in stacks.items()
    }
    rules = SecretRules(secrets, sources)
    for check in model.checks:
        check(hosts, rules)
    return hosts


#: The pyinfra connection data rsdeploy itself writes into an OpenSSH config (``verify``).
SSH_CONFIG_KEYS = ("ssh_hostname", "ssh_port", "ssh_user", "ssh_key", "ssh_known_hosts_file",
                   "ssh_strict_host_key_checking")


def _connection(host, source: str) -> dict[str, Any]:
    """A host's ``ssh_*`` data; what goes into an OpenSSH config must be one word of one line
    (a space or line break there would add options of its own)."""
    data = {k: v for k, v in host.data.dict().items() if k.startswith("ssh_")}
    for key in SSH_CONFIG_KEYS:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))
                                  or not re.fullmatch(r"[^\s\"'\\#]+", str(value))):
            raise SettingsError(source, host.name, key, f"{shown(value)} is not one word of text "
                                "(no spaces, quotes, backslashes, '#' or line breaks)")
    return data


def _check_host_name(source: str, name) -> None:
    """Refuse an inventory host name that is no host name or IP address (see HOST_NAME)."""
    if not isinstance(name, str) or not HOST_NAME.fullmatch(name):
        raise SettingsError(source, None, None, f"host {shown(name)}: not a host name or IP address "
                            "(letters, digits, '.', '_', '-'; rsdeploy reaches hosts over SSH)")


def _validate_host(model: type[BaseStackSettings], host, inventory, source: str):
    data = host.data.dict()
    for key in data:
        if not isinstance(key, str):
            raise SettingsError(source, host.name, repr(key), "a data key must be a string")
    data = {k: v for k, v in data.items() if not k.startswith(PYINFRA_KEY_PREFIXES)}
    try:
        stack = model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = _dotted(error["loc"])
        layer = _layer_of(host, inventory, str(error["loc"][0])) if error["loc"] else None
        raise SettingsError(source, host.name, key or None,
                            _message(model, error, key) + (f" (set in {layer})" if layer else "")
                            ) from None
    for i, pem in enumerate(stack.trusted_ca_certs):
        if not _is_pem_certificate(Path(source).parent / pem):
            raise SettingsError(source, host.name, f"trusted_ca_certs[{i}]",
                                f"{Path(source).parent / pem} is not a readable PEM certificate "
                                "file (UTF-8 text with BEGIN CERTIFICATE)")
    return stack


def _is_pem_certificate(path: Path) -> bool:
    """Whether ``path`` is a text file holding a PEM certificate (what hosts are given)."""
    try:
        return path.is_file() and "BEGIN CERTIFICATE" in path.read_text()
    except (OSError, UnicodeDecodeError):
        return False


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(model: type[Section], error: dict, key: str) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        *parents, name = error["loc"]  # not the dotted key: a key may hold a dot itself
        for part in parents:
            if model is not None and not isinstance(part, int):  # ints: items of a list
                field = model.model_fields.get(part)
                model = _section_of(field.annotation) if field else None
        known = list(model.model_fields) if model else []
        hint = difflib.get_close_matches(str(name), known, n=1)
        return "unknown key" + (f" (did you mean {hint[0]}?)" if hint else "")
    if kind == "missing":
        return "required but not set"
    msg = msg.removeprefix("Value error, ")
    if kind not in ("value_error",) and "input" in error and not isinstance(error["input"], dict):
        msg += f" (got {shown(error['input'])})"
    return msg


def _section_of(annotation) -> type[Section] | None:
    """The settings section a field holds, also as ``X | None`` or ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    return next((found for arg in getattr(annotation, "__args__", ())
                 if (found := _section_of(arg)) is not None), None)


def _layer_of(host, inventory, key: str) -> str | None:
    """Name the data layer a top-level key came from (for 'where do I fix this')."""
    if key in inventory.get_override_data():
        return "--data"
    if key in inventory.get_host_data(host.name):
        return "host data"
    for group in host.groups:
        if key in inventory.get_group_data(group):
            return f"group {group!r} data"
    if key in inventory.get_data():
        return "data of all hosts"
    return None


def _topology(stacks: dict[str, BaseStackSettings], source: str,
              single_host_roles: tuple[str, ...]) -> Topology:
    refs = tuple(HostRef(n, s.address or n, tuple(s.roles)) for n, s in stacks.items())
    topology = Topology(refs)
    for role in ROLES:
        carriers = [h.name for h in topology.carrying(role)]
        if len(carriers) > 1 and role in single_host_roles:
            raise SettingsError(source, carriers[1], "roles",
                                f"role {role} is already carried by host {carriers[0]} "
                                "(one host per role)")
        if not carriers and role != "monitoring":
            raise SettingsError(source, None, "roles", f"no host carries role {role}")
    if len(refs) > 1:  # peers reach each other (and the firewall admits them) by IP address
        for ref in refs:
            try:
                ipaddress.ip_address(ref.address)
            except ValueError:
                raise SettingsError(source, ref.name, "address",
                                    f"{ref.address!r} is not an IP address; a multi-host stack "
                                    "needs each host's private IP") from None
    return topology


def _check_stack_wide(stacks: dict[str, BaseStackSettings], source: str) -> None:
    """Values that must agree across every host of one stack."""
    first_name, first = next(iter(stacks.items()))
    for name, stack in stacks.items():
        for key in ("layout", "version", "domain", "extra_domains", "environment"):
            if getattr(stack, key) != getattr(first, key):
                raise SettingsError(source, name, key,
                                    f"{getattr(stack, key)!r} differs from host {first_name}'s "
                                    f"{getattr(first, key)!r} (one stack, one {key})")


def check_app_delivery(hosts: dict[str, HostSettings], rules: SecretRules) -> None:
    """How the release reaches each host: the app section's own cross-field rules."""
    for hs in hosts.values():
        s, fail = hs.stack, lambda key, msg: SettingsError(hs.source, hs.name, key, msg)
        containers = hs.layout.runs_in_containers
        if containers and s.app.delivery == "pull" and not s.app.registry:
            raise fail("app.registry", "app.delivery pull needs app.registry (image prefix)")
        if s.app.registry_username and not s.app.registry:
            raise fail("app.registry_username", "needs app.registry (the registry to log in to)")
        if containers and s.app.delivery == "bundle" and not s.app.bundle_dir:
            raise fail("app.bundle_dir", "app.delivery bundle needs app.bundle_dir (the output "
                       "of rsdeploy images bundle --out DIR)")
        if (not containers or s.app.delivery == "build") and not s.app.source_repo:
            raise fail("app.source_repo", f"needed to build from source ({s.layout} layout, "
                       f"delivery {s.app.delivery})")
        if containers and s.app.registry_login and rules.require(
                "registry_password", "app.registry_username").endswith(("\n", "\r")):
            raise rules.fail("registry_password", "ends in a line break, which docker login "
                             "--password-stdin drops: the registry would get another password")


def argument(kind, value, option: str):
    """A command-line argument checked like the setting of the same type, before any host is
    contacted; a wrong one is a UserError of one line. Example: ``argument(Name, "admin",
    "--initial-user")`` -> ``"admin"``
    """
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError as exc:
        why = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise UserError(f"{option}: {why}") from None
