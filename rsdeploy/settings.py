"""The typed settings model: one source of truth for templates, deploys and the verify suite.

Settings come from pyinfra host data (inventory, group data, ``--data``); secrets come from
:mod:`rsdeploy.secrets`. Everything is validated before any host is contacted: a bad value raises
:class:`~rsdeploy.errors.SettingsError` naming the inventory file, the host and the key.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from roles import (
    alertmanager as alertmanager_role,
    backend as backend_role,
    backup as backup_role,
    base as base_role,
    compose as compose_role,
    docker_engine as docker_engine_role,
    exporters as exporters_role,
    frontend as frontend_role,
    grafana as grafana_role,
    log_shipper as log_shipper_role,
    loki as loki_role,
    nginx as nginx_role,
    postgres as postgres_role,
    prometheus as prometheus_role,
    redis as redis_role,
    status as status_role,
)
from rsdeploy.errors import SettingsError
from rsdeploy.secrets import WEAK_VALUES, SecretSources, Secrets, env_name, load_secrets
from rsdeploy.types import Domain, Name, Section, Tag

Role = Literal["db", "redis", "app", "web", "monitoring"]
ROLES: tuple[Role, ...] = ("db", "redis", "app", "web", "monitoring")

#: Which role carries each network service (Compose service names).
SERVICE_ROLE: dict[str, Role] = {
    "db": "db",
    "redis": "redis",
    "backend": "app",
    "frontend": "app",
    "nginx": "web",
    "prometheus": "monitoring",
    "alertmanager": "monitoring",
    "loki": "monitoring",
    "grafana": "monitoring",
}

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
    registry: str | None = None  # pull: image prefix, e.g. registry.example.org:5000/residency
    registry_username: str | None = None  # pulls log in to app.registry (password: secret registry_password)
    # build: the app's git repository (a path relative to the inventory, or a URL), read where
    # rsdeploy runs; hosts get `git archive` of the release tag, never git or credentials.
    source_repo: str | None = None
    build_args: dict[str, str] = {}  # build: --build-arg values (not secrets: images keep them)

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
    bundle_dir: str | None = None  # bundle: `rsdeploy images bundle` output, relative to the inventory


class StackSettings(Section):
    """Everything one host of the stack is configured from (pyinfra host data, validated)."""

    layout: Literal["docker", "systemd"]  # docker: Compose; systemd: native services + PM2
    version: Tag  # application release tag to deploy (also --data version=TAG)
    domain: Domain  # public name of the site (TLS certificate, nginx server_name)
    extra_domains: list[Domain] = []  # further names served and put on the certificate
    environment: Name = "production"  # label on metrics and alerts (production, staging, ...)
    roles: list[Role] = Field(default_factory=lambda: list(ROLES), min_length=1)  # on this host
    address: str | None = None  # address the stack's other hosts use for this one
    trusted_ca_certs: list[str] = []  # extra CA PEM files (paths relative to the inventory)
    paths: Paths = Paths()
    app: AppSettings = AppSettings()
    base: base_role.Settings = base_role.Settings()
    docker: docker_engine_role.Settings = docker_engine_role.Settings()
    compose: compose_role.Settings = compose_role.Settings()
    postgres: postgres_role.Settings = postgres_role.Settings()
    redis: redis_role.Settings = redis_role.Settings()
    backend: backend_role.Settings = backend_role.Settings()
    frontend: frontend_role.Settings = frontend_role.Settings()
    tls: nginx_role.TlsSettings  # how the site gets its certificate (certbot, provided, self-signed)
    nginx: nginx_role.Settings = nginx_role.Settings()
    prometheus: prometheus_role.Settings = prometheus_role.Settings()
    alertmanager: alertmanager_role.Settings = alertmanager_role.Settings()
    loki: loki_role.Settings = loki_role.Settings()
    log_shipper: log_shipper_role.Settings = log_shipper_role.Settings()
    grafana: grafana_role.Settings = grafana_role.Settings()
    exporters: exporters_role.Settings = exporters_role.Settings()
    backup: backup_role.Settings = backup_role.Settings()
    status: status_role.Settings = status_role.Settings()

    @field_validator("roles")
    @classmethod
    def _unique_roles(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a role twice")
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
    """Which host carries which role, for the whole inventory."""

    hosts: tuple[HostRef, ...]

    def carrying(self, role: str) -> list[HostRef]:
        """The hosts that carry ``role``. Example: ``topology.carrying("db")``."""
        return [h for h in self.hosts if role in h.roles]

    def one(self, role: str) -> HostRef | None:
        """The host that carries ``role``, or None when no host does."""
        found = self.carrying(role)
        return found[0] if found else None


@dataclass(frozen=True)
class HostSettings:
    """What templates, roles and the verify suite read for one host."""

    name: str  # inventory name
    stack: StackSettings
    secrets: Secrets
    topology: Topology
    stack_settings: dict[str, StackSettings]  # every host's settings, by name (cross-host facts)
    source: str  # the inventory file, for messages
    connection: dict[str, Any] = field(default_factory=dict)  # pyinfra ssh_* data (verify uses it)

    @property
    def address(self) -> str:
        return self.stack.address or self.name

    def trusted_ca_certificates(self) -> dict[str, str]:
        """Extra CA certificates by name (file stem), read from files beside the inventory."""
        base = Path(self.source).parent
        return {Path(p).stem: (base / p).read_text() for p in self.stack.trusted_ca_certs}

    def has_role(self, role: str) -> bool:
        return role in self.stack.roles

    def endpoint(self, service: str) -> str:
        """Host name or address this host's processes use to reach ``service``.

        Same host: the Compose service name (docker layout) or 127.0.0.1 (systemd layout).
        Another host: that host's address. Example: ``hs.endpoint("db")``.
        """
        role = SERVICE_ROLE[service]
        if self.has_role(role):
            return service if self.stack.layout == "docker" else "127.0.0.1"
        carrier = self.topology.one(role)
        if carrier is None:
            raise ValueError(f"no host carries role {role} (needed for {service})")
        return carrier.address

    def monitoring_host(self) -> StackSettings | None:
        """The settings of the host carrying the monitoring role, if any."""
        carrier = self.topology.one("monitoring")
        return self.stack_settings[carrier.name] if carrier else None

    def monitoring_enabled(self, component: str) -> bool:
        """Whether the stack runs a monitoring ``component`` (prometheus, loki, grafana, ...)."""
        monitoring = self.monitoring_host()
        return monitoring is not None and getattr(monitoring, component).enabled


# --- loading ----------------------------------------------------------------------------------


def load_inventory(
    inventory_path: str,
    secrets_path: str | None = None,
    override_data: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, HostSettings]:
    """Load and validate every host of a pyinfra inventory file, without contacting any host.

    Example: ``hosts = load_inventory("inventories/example_docker.py", "secrets.yml")``
    """
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    if not Path(inventory_path).is_file():
        raise SettingsError(inventory_path, None, None, "inventory file not found")
    try:
        with ctx_state.use(State()):  # pyinfra executes inventory files inside a state context
            inventory = make_inventory(inventory_path, override_data=override_data or {})
    except Exception as exc:  # a broken inventory module: say which file, not where in pyinfra
        raise SettingsError(inventory_path, None, None,
                            f"cannot load inventory: {type(exc).__name__}: {exc}") from None
    if not len(inventory):
        raise SettingsError(inventory_path, None, None, "the inventory has no hosts")
    secrets, sources = load_secrets(secrets_path, env)
    return settings_for_inventory(inventory, inventory_path, secrets, sources)


def settings_for_inventory(inventory, source: str, secrets: Secrets,
                           sources: SecretSources) -> dict[str, HostSettings]:
    """Validate the data of every host of a pyinfra ``Inventory`` (CLI and deploys share this)."""
    stacks = {host.name: _validate_host(host, inventory, source) for host in inventory}
    topology = _topology(stacks, source)
    _check_stack_wide(stacks, source)
    connections = {host.name: {k: v for k, v in host.data.dict().items() if k.startswith("ssh_")}
                   for host in inventory}
    hosts = {
        name: HostSettings(name, stack, secrets, topology, stacks, source, connections[name])
        for name, stack in stacks.items()
    }
    _check_secrets(next(iter(hosts.values())), sources)
    for hs in hosts.values():
        _check_cross_settings(hs)
    return hosts


def _validate_host(host, inventory, source: str) -> StackSettings:
    data = {k: v for k, v in host.data.dict().items() if not k.startswith(PYINFRA_KEY_PREFIXES)}
    try:
        stack = StackSettings.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = _dotted(error["loc"])
        layer = _layer_of(host, inventory, str(error["loc"][0])) if error["loc"] else None
        raise SettingsError(source, host.name, key or None,
                            _message(error, key) + (f" (set in {layer})" if layer else "")) from None
    for i, pem in enumerate(stack.trusted_ca_certs):
        path = Path(source).parent / pem
        if not path.is_file() or "BEGIN CERTIFICATE" not in path.read_text(errors="replace"):
            raise SettingsError(source, host.name, f"trusted_ca_certs[{i}]",
                                f"{path} is not a readable PEM certificate file")
    return stack


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(error: dict, key: str) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        parent, _, name = key.rpartition(".")
        model = StackSettings
        for part in parent.split(".") if parent else []:
            annotation = model.model_fields[part].annotation
            model = next((a for a in getattr(annotation, "__args__", (annotation,))
                          if isinstance(a, type) and issubclass(a, Section)), None)
            if model is None:
                break
        known = list(model.model_fields) if model else []
        hint = difflib.get_close_matches(name, known, n=1)
        return "unknown key" + (f" (did you mean {hint[0]}?)" if hint else "")
    if kind == "missing":
        return "required but not set"
    msg = msg.removeprefix("Value error, ")
    if kind not in ("value_error",) and "input" in error and not isinstance(error["input"], dict):
        msg += f" (got {error['input']!r})"
    return msg


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


def _topology(stacks: dict[str, StackSettings], source: str) -> Topology:
    refs = tuple(HostRef(n, s.address or n, tuple(s.roles)) for n, s in stacks.items())
    topology = Topology(refs)
    for role in ROLES:
        carriers = [h.name for h in topology.carrying(role)]
        if len(carriers) > 1:
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


def _check_stack_wide(stacks: dict[str, StackSettings], source: str) -> None:
    """Values that must agree across every host of one stack."""
    first_name, first = next(iter(stacks.items()))
    for name, stack in stacks.items():
        for key in ("layout", "version", "domain", "environment"):
            if getattr(stack, key) != getattr(first, key):
                raise SettingsError(source, name, key,
                                    f"{getattr(stack, key)!r} differs from host {first_name}'s "
                                    f"{getattr(first, key)!r} (one stack, one {key})")


class _SecretRules:
    """The app's own production rules for secrets, with errors that say where each came from."""

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


def _check_secrets(hs: HostSettings, sources: SecretSources) -> None:
    """Require the secrets that the stack-wide settings need."""
    rules = _SecretRules(hs.secrets, sources)
    rules.require("db_password", "the database", 12)
    rules.require("redis_password", "Redis", 16)
    key = rules.require("secret_key", "the backend", 32)
    if key.lower() in WEAK_VALUES or len(set(key)) < 8:
        raise rules.fail("secret_key", "is a known weak value; generate one with: "
                         "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'")
    if hs.secrets.webhook_secret:
        rules.length("webhook_secret", hs.secrets.webhook_secret, 32)
    stack = next(iter(hs.stack_settings.values()))
    if stack.exporters.postgres_exporter.enabled and hs.monitoring_enabled("prometheus"):
        rules.require("db_monitor_password", "postgres-exporter", 12)
    if hs.monitoring_enabled("grafana"):
        rules.require("grafana_admin_password", "Grafana", 12)
    monitoring = hs.monitoring_host()
    if monitoring is not None and monitoring.alertmanager.enabled:
        am = monitoring.alertmanager
        if am.email and am.email.smtp_username:
            rules.require("smtp_password", "alertmanager.email.smtp_username")
        if am.slack and not rules.require("slack_webhook_url", "alertmanager.slack").startswith(
                "https://"):
            raise rules.fail("slack_webhook_url", "must be an https:// URL")
        if am.pagerduty:
            rules.require("pagerduty_routing_key", "alertmanager.pagerduty")
    if stack.layout == "docker" and stack.app.registry_login:
        rules.require("registry_password", "app.registry_username")


def _check_cross_settings(hs: HostSettings) -> None:
    """Rules that span sections of one host's settings."""
    s, fail = hs.stack, lambda key, msg: SettingsError(hs.source, hs.name, key, msg)
    if s.layout == "docker" and s.app.delivery == "pull" and not s.app.registry:
        raise fail("app.registry", "app.delivery pull needs app.registry (image prefix)")
    if s.app.registry_username and not s.app.registry:
        raise fail("app.registry_username", "needs app.registry (the registry to log in to)")
    if s.layout == "docker" and s.app.delivery == "bundle" and not s.app.bundle_dir:
        raise fail("app.bundle_dir", "app.delivery bundle needs app.bundle_dir (the output of "
                   "rsdeploy images bundle --out DIR)")
    if (s.layout == "systemd" or s.app.delivery == "build") and not s.app.source_repo:
        raise fail("app.source_repo", f"needed to build from source ({s.layout} layout, "
                   f"delivery {s.app.delivery})")
    for i, origin in enumerate(s.backend.cors_origins):
        if "*" in origin:
            raise fail(f"backend.cors_origins[{i}]", "must not contain '*' (the backend refuses it)")
    am = s.alertmanager
    if am.routes is not None:
        configured = {name for name in ("email", "slack", "pagerduty") if getattr(am, name)}
        for i, route in enumerate(am.routes):
            for name in route.receivers:
                if name not in configured:
                    raise fail(f"alertmanager.routes[{i}].receivers",
                               f"receiver {name} is not configured (set alertmanager.{name})")
