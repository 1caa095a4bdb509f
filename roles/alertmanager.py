"""Alertmanager: routes alerts by severity to PagerDuty, Slack and e-mail (role ``monitoring``).

Credentials (SMTP password, Slack webhook URL, PagerDuty routing key) are secrets, written as
files of mode 0600 and referenced with the ``*_file`` options. Docker layout:
``base/config/alertmanager/alertmanager.yml`` and ``base/secrets/<name>`` (Compose secrets at
/run/secrets/<name>). Systemd layout: Debian's prometheus-alertmanager, /etc/prometheus/alertmanager.yml,
secrets in /etc/prometheus/secrets/, flags in /etc/default/prometheus-alertmanager.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field
from pyinfra.api import deploy

from rsdeploy import apply
from rsdeploy.component_files import (
    MONITORING_SECRETS_DIR,
    MONITORING_USER,
    debian_default,
    secret_file,
    secret_read_path,
)
from rsdeploy.errors import SettingsError
from rsdeploy.layout import Reload
from rsdeploy.render import RenderedFile, template
from rsdeploy.types import (
    Duration,
    Email,
    HostAddress,
    Image,
    Line,
    Port,
    Resources,
    Section,
    https_url_problem,
    matching,
)
from rsdeploy.validate import Verdict, run_tool

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings, SecretRules

ROLE = "alertmanager"
IMAGE_UID = 65534  # prom/alertmanager runs as nobody
RECEIVERS = ("pagerduty", "slack", "email")  # notification order within one route
#: The secret each receiver reads (a file, never inline in alertmanager.yml).
RECEIVER_SECRETS = {"email": "smtp_password", "slack": "slack_webhook_url",
                    "pagerduty": "pagerduty_routing_key"}
SEVERITIES = ("critical", "warning", "info")
NULL_RECEIVER = "null"  # receives whatever no route claims: nothing is sent


class EmailReceiver(Section):
    to: list[Email] = Field(min_length=1)  # recipients
    sender: Email  # From: address
    smtp_host: HostAddress  # SMTP relay host name
    smtp_port: int = Field(default=587, ge=1, le=65535)  # SMTP port (587 STARTTLS, 465 TLS)
    smtp_username: Line | None = None  # SMTP login; the password is the secret smtp_password
    require_tls: bool = True  # refuse to send without STARTTLS


#: A Slack channel ("#rs-alerts"), user ("@oncall") or channel ID: no template braces, since
#: Alertmanager expands its channel as a template.
SlackChannel = Annotated[str, matching(re.compile(r"[#@]?[A-Za-z0-9._-]{1,80}"),
                                       "a Slack channel such as #rs-alerts")]


class SlackReceiver(Section):
    channel: SlackChannel  # channel to post to, e.g. "#rs-alerts"


class PagerDutyReceiver(Section):
    # The routing (integration) key is the secret pagerduty_routing_key.
    severity_map: bool = True  # pass the alert's severity label through to PagerDuty


class Route(Section):
    severity: Literal["critical", "warning", "info"]  # alerts with this severity label ...
    receivers: list[Literal["email", "slack", "pagerduty"]] = Field(min_length=1)  # ... go here


class Settings(Section):
    enabled: bool = True  # run Alertmanager on the monitoring host
    image: Image = "prom/alertmanager:v0.28.1"  # docker layout: Alertmanager image
    port: Port = 9093  # web/API port (bound to loopback, never public)
    email: EmailReceiver | None = None  # e-mail receiver, if any
    slack: SlackReceiver | None = None  # Slack receiver, if any
    pagerduty: PagerDutyReceiver | None = None  # PagerDuty receiver, if any
    # None: critical -> every configured receiver, warning -> Slack and e-mail (those configured).
    # Explicit routes that name a receiver not configured above are rejected at validation.
    routes: list[Route] | None = None
    group_wait: Duration = "30s"  # wait before the first notification of a group
    group_interval: Duration = "5m"  # wait before notifying about new alerts of a group
    repeat_interval: Duration = "4h"  # resend a still-firing alert after this long
    resources: Resources = Resources(memory="128m", cpus=0.25)  # limits for the alertmanager service


def applies(hs: HostSettings) -> bool:
    return hs.has_role("monitoring") and hs.stack.alertmanager.enabled


def ports(hs: HostSettings) -> dict[str, int]:
    """The port Alertmanager takes on this host, by settings key. Example: ``{"alertmanager.port": ...}``"""
    return {"alertmanager.port": hs.stack.alertmanager.port}


def configured_receivers(hs: HostSettings) -> list[str]:
    """The receivers set in the inventory, in notification order. Example: ``["pagerduty", "email"]``"""
    return [name for name in RECEIVERS if getattr(hs.stack.alertmanager, name) is not None]


def routes(hs: HostSettings) -> dict[str, list[str]]:
    """Receivers per severity: ``alertmanager.routes`` or the default (critical -> all configured,
    warning -> Slack and e-mail). Severities without receivers are absent (they go to "null").

    Example: ``routes(hs)`` -> ``{"critical": ["pagerduty", "slack", "email"], "warning": [...]}``
    """
    configured = configured_receivers(hs)
    explicit = hs.stack.alertmanager.routes
    if explicit is None:
        chosen = {"critical": configured, "warning": [r for r in configured if r != "pagerduty"]}
    else:
        chosen = {}
        for route in explicit:
            chosen.setdefault(route.severity, []).extend(route.receivers)
    return {severity: [r for r in RECEIVERS if r in receivers]
            for severity, receivers in chosen.items() if receivers}


def check(hs: HostSettings, rules: SecretRules) -> None:
    """Each configured receiver's secret, and routes that name only configured receivers."""
    am = hs.stack.alertmanager
    if am.email and am.email.smtp_username:
        rules.require("smtp_password", "alertmanager.email.smtp_username")
    if am.slack:
        problem = https_url_problem(rules.require("slack_webhook_url", "alertmanager.slack"))
        if problem:
            raise rules.fail("slack_webhook_url", f"must be an https:// URL with a host: {problem}")
    if am.pagerduty:
        rules.require("pagerduty_routing_key", "alertmanager.pagerduty")
    configured = configured_receivers(hs)
    for i, route in enumerate(am.routes or []):
        for name in route.receivers:
            if name not in configured:
                raise SettingsError(hs.source, hs.name, f"alertmanager.routes[{i}].receivers",
                                    f"receiver {name} is not configured (set alertmanager.{name})")


def config_path(hs: HostSettings) -> str:
    """alertmanager.yml on the host (Debian's package reads /etc/prometheus/alertmanager.yml)."""
    return hs.layout.config_path(hs, "alertmanager", "alertmanager.yml",
                                 "/etc/prometheus/alertmanager.yml")


def command_flags(hs: HostSettings) -> list[str]:
    """Alertmanager flags: the Compose service's ``command`` or Debian's ARGS.

    One instance, so clustering (gossip on :9094) is off. Example: ``command_flags(hs)``
    """
    # The image's own defaults (container paths), restated since Compose's command replaces them.
    image = (["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
             if hs.layout.runs_in_containers else [])
    listen = f"{hs.layout.listen_address(hs, False)}:{hs.stack.alertmanager.port}"
    return [*image, f"--web.listen-address={listen}", "--cluster.listen-address="]


def _service(hs: HostSettings) -> str:
    return hs.layout.service("alertmanager", "prometheus-alertmanager")


def secret_names(hs: HostSettings) -> list[str]:
    """The secret files the configured receivers read (an unauthenticated relay needs none).

    Example: ``secret_names(hs)`` -> ``["pagerduty_routing_key", "slack_webhook_url", ...]``
    """
    email = hs.stack.alertmanager.email
    return [RECEIVER_SECRETS[r] for r in configured_receivers(hs)
            if r != "email" or (email and email.smtp_username)]


def render(hs: HostSettings) -> list[RenderedFile]:
    # Alertmanager rereads its config, and the *_file secrets with it, on SIGHUP / reload.
    reactions = (Reload(_service(hs)),)
    content = template(
        "alertmanager/alertmanager.yml.j2", hs,
        am=hs.stack.alertmanager,
        routes=routes(hs),
        null_receiver=NULL_RECEIVER,
        secret_paths={r: secret_read_path(hs, RECEIVER_SECRETS[r], MONITORING_SECRETS_DIR)
                      for r in RECEIVERS},
    )
    files = [RenderedFile(config_path(hs), content, ROLE, reactions=reactions)]
    files += [secret_file(hs, name, getattr(hs.secrets, name), role=ROLE, image_uid=IMAGE_UID,
                          native_user=MONITORING_USER, native_dir=MONITORING_SECRETS_DIR,
                          reactions=reactions)
              for name in secret_names(hs)]
    if not hs.layout.runs_in_containers:  # the package reads its flags from /etc/default
        files.append(debian_default("prometheus-alertmanager", {"ARGS": " ".join(command_flags(hs))},
                                    hs=hs, role=ROLE, comment="Alertmanager flags"))
    return files


# --- validation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteCheck:
    severity: str
    receivers: tuple[str, ...]  # expected, in amtool's order


def route_checks(hs: HostSettings) -> list[RouteCheck]:
    """What each severity must reach: its route's receivers, or only the null receiver."""
    chosen = routes(hs)
    return [RouteCheck(severity, tuple(chosen.get(severity) or [NULL_RECEIVER]))
            for severity in SEVERITIES]


def check_routes(config: Path, path: str, checks: list[RouteCheck]) -> list[Verdict]:
    """``amtool config routes test --verify.receivers`` for each severity (exit 1 on mismatch)."""
    return [run_tool(["amtool", "config", "routes", "test", f"--config.file={config}",
                      f"--verify.receivers={','.join(c.receivers)}", f"severity={c.severity}"],
                     path, f"amtool config routes test severity={c.severity}")
            for c in checks]


def validate(tree: Path, hs: HostSettings) -> list[Verdict]:
    """``amtool check-config`` (also loads the templates) and a route test per severity.

    amtool 0.25+ does not open the ``*_file`` secrets; the config is checked as rendered.
    """
    path = config_path(hs)
    config = tree / path.lstrip("/")
    return [run_tool(["amtool", "check-config", str(config)], path, "amtool check-config"),
            *check_routes(config, path, route_checks(hs))]


@deploy("Install Alertmanager")
def install(hs: HostSettings) -> None:
    """Natively: Debian's prometheus-alertmanager.

    Example: ``alertmanager.install(hs)``
    """
    if not hs.layout.runs_in_containers:
        apply.install_packages("Install Alertmanager", ["prometheus-alertmanager"],
                               extra_install_args="-o Dpkg::Options::=--force-confold")
