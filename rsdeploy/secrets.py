"""Secrets: from environment variables ``RS_<NAME>`` or a YAML file outside git, never inventory.

The file is given by ``--secrets FILE`` or ``RS_SECRETS_FILE``; an environment variable wins over
the file. Values are never printed: the model's repr hides them.
"""

from __future__ import annotations

import difflib
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from rsdeploy.errors import SettingsError

ENV_PREFIX = "RS_"
FILE_ENV = "RS_SECRETS_FILE"

# Values the backend itself refuses as SECRET_KEY (and that nobody should use anywhere).
WEAK_VALUES = {
    "changeme", "change-me", "change_me", "secret", "password", "dev", "development", "test",
    "your-secret-key", "your-secret-key-here", "your_secret_key_here", "dev-secret-key",
    "insecure", "default", "admin", "supersecret", "secret-key", "secretkey",
}


def _secret(meaning: str):
    return Field(default=None, repr=False, description=meaning)


class Secrets(BaseModel):
    """Every secret the stack may need; which ones are required depends on the settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    db_password: str | None = _secret("PostgreSQL password of the application role (>= 12 chars)")
    redis_password: str | None = _secret("Redis requirepass, also in REDIS_URL (>= 16 chars)")
    secret_key: str | None = _secret("backend SECRET_KEY (>= 32 chars, not a known weak value)")
    webhook_secret: str | None = _secret("backend WEBHOOK_SECRET, optional (>= 32 chars when set)")
    db_monitor_password: str | None = _secret("password of the postgres-exporter role (>= 12)")
    grafana_admin_password: str | None = _secret("Grafana admin password (>= 12 chars)")
    smtp_password: str | None = _secret("SMTP password for the e-mail receiver")
    slack_webhook_url: str | None = _secret("Slack incoming-webhook URL (https://...)")
    pagerduty_routing_key: str | None = _secret("PagerDuty Events v2 routing key")
    registry_password: str | None = _secret("password for the image registry login (pull mode)")

    def __str__(self) -> str:  # never show values, whatever formats the object
        return "Secrets(<hidden>)"

    __repr__ = __str__


def env_name(key: str) -> str:
    """The environment variable that carries a secret. Example: ``env_name("db_password")``."""
    return ENV_PREFIX + key.upper()


def load_secrets(path: str | None = None,
                 env: Mapping[str, str] | None = None) -> tuple[Secrets, SecretSources]:
    """Read secrets from ``path`` (or ``$RS_SECRETS_FILE``) and ``RS_*`` variables.

    Returns the secrets and where each came from, for error messages.
    Example: ``secrets, sources = load_secrets("~/rs-secrets.yml")``
    """
    env = os.environ if env is None else env
    path = path or env.get(FILE_ENV) or None
    values: dict[str, str] = {}
    sources = SecretSources(path)
    if path:
        values = _read_file(Path(path).expanduser())
    for key in Secrets.model_fields:
        if env.get(env_name(key)):
            values[key] = env[env_name(key)]
            sources.from_env.add(key)
    return Secrets(**values), sources


class SecretSources:
    """Where each secret was read from: its environment variable, else the secrets file."""

    def __init__(self, file: str | None):
        self.file = file
        self.from_env: set[str] = set()

    def of(self, key: str) -> str:
        """Example: ``sources.of("db_password")`` -> ``"environment RS_DB_PASSWORD"``."""
        if key in self.from_env or not self.file:
            return f"environment {env_name(key)}" if key in self.from_env else "secrets"
        return self.file


def _read_file(path: Path) -> dict[str, str]:
    where = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(where, None, None, f"cannot read secrets file: {exc.strerror}") from None
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO) and "example" not in path.name:
        print(f"rsdeploy: warning: {where}: secrets file is readable by others (chmod 600 it)",
              file=sys.stderr)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        raise SettingsError(where, None, None, f"{line}not valid YAML") from None
    if not isinstance(data, dict):
        raise SettingsError(where, None, None, "must be a mapping of secret names to values")
    known = list(Secrets.model_fields)
    for key, value in data.items():
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            more = f" (did you mean {hint[0]}?)" if hint else f" (known: {', '.join(known)})"
            raise SettingsError(where, None, str(key), f"unknown secret{more}")
        if value is not None and not isinstance(value, (str, int)):
            raise SettingsError(where, None, key, "must be a string")
    return {k: str(v) for k, v in data.items() if v is not None}
