"""Alertmanager: routes alerts by severity to PagerDuty, Slack and e-mail (role ``monitoring``).

Credentials (SMTP password, Slack webhook URL, PagerDuty routing key) are secrets, written as
files of mode 0600 and referenced with the ``*_file`` options.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rsdeploy.types import Duration, Email, Image, Port, Resources, Section

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class EmailReceiver(Section):
    to: list[Email] = Field(min_length=1)  # recipients
    sender: Email  # From: address
    smtp_host: str  # SMTP relay host name
    smtp_port: int = Field(default=587, ge=1, le=65535)  # SMTP port (587 STARTTLS, 465 TLS)
    smtp_username: str | None = None  # SMTP login; the password is the secret smtp_password
    require_tls: bool = True  # refuse to send without STARTTLS


class SlackReceiver(Section):
    channel: str  # channel to post to, e.g. "#rs-alerts"


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


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
