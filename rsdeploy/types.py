"""Constrained value types shared by every settings section (one place for each rule).

Every rule holds for the whole value: patterns are matched with ``fullmatch``, so a trailing
newline or any other character outside a pattern is refused. Every text setting is one of these
types: :data:`Line` (one line of text) at least, a pattern where the value lands in a file or a
command line unquoted.
"""

import ipaddress
import re
import unicodedata
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`|~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")
_SIZE = re.compile(r"[0-9]+(b|k|kb|m|mb|g|gb)?", re.IGNORECASE)
_IMAGE = re.compile(r"[a-z0-9]+([._/:-][a-zA-Z0-9_.-]+)*(@sha256:[a-f0-9]{64})?")
# An image name without tag or digest (Docker's reference grammar: lower-case path components).
_REPOSITORY = re.compile(r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*")
# A registry host[:port], then path components: ``registry.example.org:5000/residency``.
_REGISTRY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?"
                       r"(/[a-z0-9]+([._-][a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LOG_LEVEL = re.compile(r"DEBUG|INFO|WARNING|ERROR|CRITICAL")
#: Characters that end or break a line, and every other control character (tab included).
_BREAKING = frozenset({"Cc", "Zl", "Zp"})


def matching(pattern: re.Pattern, what: str) -> AfterValidator:
    """A validator refusing any value that ``pattern`` does not match in full.

    Example: ``Tag = Annotated[str, matching(re.compile(r"v[0-9.]+"), "a version tag")]``
    """
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{shown(value)} is not {what}")
        return value

    return AfterValidator(check)


def control_character(value: str) -> str | None:
    """The first control or line-breaking character in ``value`` (``repr``), else None.

    Example: ``control_character("v1.0.0\\n")`` -> ``"'\\\\n'"``
    """
    found = next((c for c in value if unicodedata.category(c) in _BREAKING), None)
    return repr(found) if found is not None else None


def one_line(value: str) -> str:
    """Refuse a value holding a control character (newline, tab, NUL, ...); return it as it is.

    Example: ``one_line("#rs-alerts")`` -> ``"#rs-alerts"``
    """
    char = control_character(value)
    if char:
        raise ValueError(f"{shown(value)} must be one line of text (it holds the control character "
                         f"{char})")
    return value


def _domain(value: str) -> str:
    labels = value.split(".")
    if (len(value) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels)
            or labels[-1].isdigit()):
        raise ValueError(f"{shown(value)} is not a valid domain name (lower case, with a dot)")
    return value


def _host_address(value: str) -> str:
    one_line(value)
    if "%" in value:  # an IPv6 zone (fe80::1%eth0) names this machine's interface, not a host
        raise ValueError(f"{shown(value)} is not a host name or IP address (no %zone)")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.split(".")
    if len(value) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{shown(value)} is not a host name or IP address")
    return value


def https_url_problem(value: str) -> str | None:
    """Why ``value`` is not an https:// URL with a host (None when it is one).

    Example: ``https_url_problem("https://")`` -> ``"has no host"``
    """
    if control_character(value) or re.search(r"\s", value):
        return "holds a space or control character"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        return f"cannot be read as a URL ({exc})"
    if parts.scheme != "https":
        return "must start with https://"
    if not parts.hostname:
        return "has no host"
    return None


def _https_url(value: str) -> str:
    problem = https_url_problem(value) or (
        "holds a quote or backslash" if re.search(r"[\"'\\]", value) else None)
    if problem:
        raise ValueError(f"{shown(value)} is not an https:// URL with a host: {problem}")
    return value


def _absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{shown(value)} must be an absolute path")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError(f"{shown(value)} is blank: leave the setting out instead")
    return value


#: One line of text, not blank: no newline, tab or other control character.
Line = Annotated[str, AfterValidator(one_line), AfterValidator(_not_blank)]
#: A DNS name with at least one dot, lower case (``scheduler.example.org``); no IP address.
Domain = Annotated[str, AfterValidator(_domain)]
#: A host name (one label or more) or an IP address: ``smtp.example.org``, ``10.0.0.21``.
HostAddress = Annotated[str, AfterValidator(_host_address)]
#: An e-mail address (no braces: Alertmanager reads its addresses as templates).
Email = Annotated[str, matching(_EMAIL, "a valid e-mail address")]
#: A Prometheus/Go style duration: 30s, 15d, 1h30m.
Duration = Annotated[str, matching(_DURATION, "a duration such as 30s, 15d or 1h30m")]
#: A byte size as Docker and Redis write it: 512m, 2g.
Size = Annotated[str, matching(_SIZE, "a size such as 512m or 2g")]
Image = Annotated[str, matching(_IMAGE, "a container image reference")]
#: An image repository without tag (the tag is the release): ``residency-scheduler-backend``.
Repository = Annotated[str, matching(_REPOSITORY, "an image repository (lower-case name "
                                                  "components, no tag)")]
#: Where app images are pulled from: ``registry.example.org:5000/residency``.
Registry = Annotated[str, matching(_REGISTRY, "an image prefix (registry host[:port], then "
                                              "lower-case path components)")]
#: A release tag of the application, e.g. v1.2.0.
Tag = Annotated[str, matching(_TAG, "a valid version tag (letters, digits, '.', '_', '-')")]
#: A Unix user, group or database identifier.
Name = Annotated[str, matching(_NAME, "a valid name (lower case letters, digits, '_', '-')")]
Port = Annotated[int, Field(ge=1, le=65535)]
#: An absolute path on a host, one line: ``/etc/ssl/site.pem``.
AbsolutePath = Annotated[str, AfterValidator(one_line), AfterValidator(_absolute_path)]
#: One line of text that may be empty (a build argument's value, for example).
OneLine = Annotated[str, AfterValidator(one_line)]
#: An https:// URL with a host (an ACME directory, for example); kept as written.
HttpsUrl = Annotated[str, AfterValidator(_https_url)]
LogLevel = Annotated[str, matching(_LOG_LEVEL, "one of DEBUG, INFO, WARNING, ERROR, CRITICAL")]


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors, values are immutable, numbers
    are finite, and a value is taken as written or refused (:func:`not_as_written`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _as_written(cls, value, info):
        problem = not_as_written(value, cls.model_fields[info.field_name].annotation)
        if problem:
            raise ValueError(problem)
        return value


def not_as_written(value, annotation) -> str | None:
    """Why a setting's raw value would not be kept as written (None when it would): a boolean
    where no boolean belongs (``port: True`` is not port 1), a set (no order, so files would
    change from run to run), a lone surrogate (no UTF-8 file can hold it). Looks one level
    into lists and mappings; nested sections check their own fields.

    Example: ``not_as_written(True, Port)`` -> ``"True is a boolean, which this setting does
    not take"``
    """
    for item in (value, *_items(value, annotation)):
        if isinstance(item, bool) and not _accepts_bool(annotation):
            return f"{item!r} is a boolean, which this setting does not take"
        if isinstance(item, (set, frozenset)):
            return "a set has no order (files would change from run to run): write a list"
        if isinstance(item, str) and any("\ud800" <= char <= "\udfff" for char in item):
            return f"{shown(item)} holds a lone surrogate, which no UTF-8 file can carry"
    return None


def _items(value, annotation) -> list:
    """The items of a list, or the keys and values of a mapping typed ``dict[...]`` (a mapping
    for a nested section is that section's to check, field by field)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, dict) and _is_dict(annotation):
        return [*value.keys(), *value.values()]
    return []


def _is_dict(annotation) -> bool:
    if getattr(annotation, "__origin__", None) is dict:
        return True
    return any(_is_dict(arg) for arg in getattr(annotation, "__args__", ()))


def _accepts_bool(annotation) -> bool:
    """Whether a field's type takes booleans (``bool``, ``bool | None``, ``Literal[True]``...)."""
    if annotation is bool:
        return True
    if getattr(annotation, "__metadata__", None) is not None:  # Annotated[T, ...]: T decides
        return _accepts_bool(annotation.__origin__)
    return any(arg is bool or isinstance(arg, bool) or _accepts_bool(arg)
               for arg in getattr(annotation, "__args__", ()))


def shown(value) -> str:
    """``repr(value)`` for a message, cut to 80 characters. Example: ``shown("a\\n")``"""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:70]}...({len(text)} characters)"


class Resources(Section):
    """Limits for one service (Compose ``deploy.resources.limits``, systemd MemoryMax/CPUQuota)."""

    memory: Size = "512m"  # hard memory limit; container-memory alerts compare against it
    cpus: float = Field(default=1.0, gt=0, le=1024)  # CPU share limit, in cores


def duration_seconds(duration: Duration) -> int:
    """A Go-style duration in whole seconds. Example: ``duration_seconds("1h30m")`` -> ``5400``"""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return int(sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", duration)))
