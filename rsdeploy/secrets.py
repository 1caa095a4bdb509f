"""Secrets: from environment variables ``RS_<NAME>`` or a YAML file outside git, never inventory.

The file is given by ``--secrets FILE`` or ``RS_SECRETS_FILE``; an environment variable wins over
the file. Values are never printed: the model's repr hides them.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel, ConfigDict, Field

from rsdeploy.errors import SettingsError
from rsdeploy.escape import url_part

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

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
    flower_password: str | None = _secret("Flower's basic-auth password (>= 16 chars, no comma)")
    smtp_password: str | None = _secret("SMTP password for the e-mail receiver")
    slack_webhook_url: str | None = _secret("Slack incoming-webhook URL (https://...)")
    pagerduty_routing_key: str | None = _secret("PagerDuty Events v2 routing key")
    registry_password: str | None = _secret("password for the image registry login (pull mode)")
    stack_ca_key: str | None = _secret("PEM key of the stack CA: TLS between hosts (rsdeploy ca init)")
    stack_ca_cert: str | None = _secret("PEM certificate of the stack CA")
    stack_ca_next_key: str | None = _secret("PEM key of the next stack CA (rsdeploy ca rotate)")
    stack_ca_next_cert: str | None = _secret("PEM certificate of the next stack CA")

    def __str__(self) -> str:  # never show values, whatever formats the object
        return "Secrets(<hidden>)"

    __repr__ = __str__


def env_name(key: str) -> str:
    """The environment variable that carries a secret. Example: ``env_name("db_password")``."""
    return ENV_PREFIX + key.upper()


def load_secrets(path: str | None = None,
                 env: Mapping[str, str] | None = None) -> tuple[Secrets, SecretSources]:
    """Read secrets from ``path`` (or ``$RS_SECRETS_FILE``) and ``RS_*`` variables.

    Returns the secrets and where each came from, for error messages. A value is taken as
    written or refused (SettingsError): see :func:`_as_text` (the file) and :func:`_unusable`.
    Example: ``secrets, sources = load_secrets("~/rs-secrets.yml")``
    """
    env = os.environ if env is None else env
    path = path or env.get(FILE_ENV) or None
    values: dict[str, str] = {}
    sources = SecretSources(path)
    if path:
        values = read_file(Path(path).expanduser())
    for key in Secrets.model_fields:
        if env.get(env_name(key)):  # set and not empty (RS_X= leaves the file's value)
            values[key] = env[env_name(key)]
            sources.from_env.add(key)
    for key, value in values.items():
        problem = _unusable(value)
        if problem:
            raise SettingsError(sources.of(key), None, key, problem)
    return Secrets(**values), sources


def _unusable(value: str) -> str | None:
    """Why a secret's value cannot be used as it is (None when it can)."""
    if not value.strip():
        return ("is blank (empty or only whitespace): give the value, or remove it to leave "
                "the secret unset")
    if value != value.strip():
        return ("begins or ends with whitespace or a line break, which readers of secret files "
                "trim ($(cat FILE), psql, Go programs): a service would get another secret")
    if "\0" in value:
        return "holds a NUL character, which no environment variable or config file can carry"
    if any("\ud800" <= char <= "\udfff" for char in value):  # bytes of no UTF-8 text
        return "is not UTF-8 text, which every file it goes into is"
    return None


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


def read_file(path: Path) -> dict[str, str]:
    """Every secret of a YAML file, each a string exactly as written (see :func:`_as_text`)."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(where, None, None, f"cannot read secrets file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise SettingsError(where, None, None, f"not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                            f"at offset {exc.start})") from None
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"rsdeploy: warning: {where}: secrets file is readable by others (chmod 600 it)",
              file=sys.stderr)
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for key_node, value_node in _mapping(_compose(text, where), where):
        key = _secret_name(key_node, where)
        line = key_node.start_mark.line + 1
        if key in lines:
            raise SettingsError(where, None, key, f"set twice (lines {lines[key]} and {line}): "
                                "keep one")
        lines[key] = line
        values[key] = _as_text(value_node, where, key)
    return values


def _compose(text: str, where: str) -> yaml.Node | None:
    """The YAML node tree of ``text``; a YAML error names its line and reason."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = exc.problem or exc.context or "not valid YAML"
        raise SettingsError(where, None, None, f"not valid YAML: {line}{reason}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow in a file
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise SettingsError(where, None, None, f"not valid YAML: line {line}: character "
                            f"#x{char:04x}: {exc.reason} (write it as an escape in double "
                            "quotes)") from None
    except yaml.YAMLError as exc:
        raise SettingsError(where, None, None, f"not valid YAML: {exc}") from None


def _mapping(document: yaml.Node | None, where: str) -> list[tuple[yaml.Node, yaml.Node]]:
    if document is None:  # an empty file, or only comments
        return []
    if not isinstance(document, yaml.MappingNode):
        raise SettingsError(where, None, None, "must be a mapping of secret names to values")
    return document.value


def _secret_name(node: yaml.Node, where: str) -> str:
    """The key of one line: a known secret's name (a close one is suggested)."""
    known = list(Secrets.model_fields)
    name = node.value if isinstance(node, yaml.ScalarNode) else "<not a name>"
    if not (isinstance(node, yaml.ScalarNode) and node.tag == _STR) or name not in known:
        hint = difflib.get_close_matches(str(name), known, n=1)
        more = f" (did you mean {hint[0]}?)" if hint else f" (known: {', '.join(known)})"
        raise SettingsError(where, None, name, f"unknown secret{more}")
    return name


_STR = "tag:yaml.org,2002:str"
#: What YAML makes of an unquoted scalar that is not a string, by its resolved tag.
_READ_AS = {"int": "a number", "float": "a number", "bool": "a boolean", "null": "no value",
            "timestamp": "a date"}


def _as_text(node: yaml.Node, where: str, key: str) -> str:
    """A secret's value as written; anything YAML reads as another type is refused, with the
    fix. Example: ``db_password: 0123`` -> ``YAML reads the unquoted 0123 as a number (83)``
    """
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
        return node.value
    if not isinstance(node, yaml.ScalarNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
        raise SettingsError(where, None, key, f"must be a string, not {kind}")
    kind = node.tag.rpartition(":")[2]
    if kind == "null" and node.value == "":
        raise SettingsError(where, None, key, "has no value: give one (quoted), or remove the "
                            "line to leave the secret unset")
    read = _read_as(kind, node.value) if not _explicitly_tagged(node) else None
    if read is None:
        raise SettingsError(where, None, key, f"has the YAML tag !!{kind}: remove the tag and "
                            "quote the value to keep it as written")
    raise SettingsError(where, None, key, f"YAML reads the unquoted {node.value} as {read}: "
                        "quote the value to keep it as written")


def _explicitly_tagged(node: yaml.Node) -> bool:
    """Whether the file gives the node's tag (``!!int 12``) rather than YAML guessing it."""
    mark = node.start_mark
    text = mark.buffer[mark.pointer:] if mark.buffer else ""
    return re.sub(r"^&\S+\s+", "", text).startswith("!")  # after an anchor (&name), if any


def _read_as(kind: str, raw: str) -> str | None:
    """What YAML made of an unquoted scalar: ``"a number (83)"``; None for other tags."""
    if kind not in _READ_AS:
        return None
    if kind == "null":
        return _READ_AS[kind]
    return f"{_READ_AS[kind]} ({yaml.safe_load(f'!!{kind} {raw}')})"


def update_file(path: Path, values: Mapping[str, str | None]) -> None:
    """Set secrets in a YAML secrets file (None: remove the secret), keeping every other line
    and comment as it is; the file is replaced at once, mode 0600 (made when missing).

    Example: ``update_file(Path("secrets.yml"), {"stack_ca_key": pem, "stack_ca_next_key": None})``
    """
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if text:
        read_file(path)  # a broken file is refused before it is touched
    lines = text.splitlines(keepends=True)
    for key_node, value_node in reversed(_mapping(_compose(text, str(path)), str(path))):
        if key_node.value in values:
            end = value_node.end_mark
            last = end.line - 1 if end.column == 0 else end.line  # a block ends on the next line
            del lines[key_node.start_mark.line:last + 1]
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    for key, value in values.items():
        if value is None:
            continue
        if "\n" in value:  # PEM and other blocks, exactly as given (no final line break)
            lines.append(f"{key}: |-\n" + "".join(f"  {line}\n" for line in value.split("\n")))
        else:
            lines.append(yaml.safe_dump({key: value}, default_flow_style=False, width=10**6))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as out:  # mkstemp: mode 0600
        out.write("".join(lines))
    os.replace(tmp, path)


#: What a secret is shown as.
MASK = "********"


def masked(text: str, hs: HostSettings) -> str:
    """``text`` with every secret of the stack (as written and as URL-encoded in DATABASE_URL
    and REDIS_URL) replaced by ``********``. Example: ``masked(log, hs)``"""
    values = {v for v in (getattr(hs.secrets, name) for name in type(hs.secrets).model_fields) if v}
    for value in sorted(values | {url_part(v) for v in values}, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text
