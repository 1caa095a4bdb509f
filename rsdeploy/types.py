"""Constrained value types shared by every settings section (one place for each rule)."""

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_DOMAIN = re.compile(r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+$")
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
_SIZE = re.compile(r"^[0-9]+(b|k|kb|m|mb|g|gb)?$", re.IGNORECASE)
_IMAGE = re.compile(r"^[a-z0-9]+([._/:-][a-zA-Z0-9_.-]+)*(@sha256:[a-f0-9]{64})?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

def _matches(pattern: re.Pattern, what: str):
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return AfterValidator(check)

Domain = Annotated[str, _matches(_DOMAIN, "a valid domain name (lower case, with a dot)")]
Email = Annotated[str, _matches(_EMAIL, "a valid e-mail address")]
#: A Prometheus/Go style duration: 30s, 15d, 1h30m.
Duration = Annotated[str, _matches(_DURATION, "a duration such as 30s, 15d or 1h30m")]
#: A byte size as Docker and Redis write it: 512m, 2g.
Size = Annotated[str, _matches(_SIZE, "a size such as 512m or 2g")]
Image = Annotated[str, _matches(_IMAGE, "a container image reference")]
#: A release tag of the application, e.g. v1.2.0.
Tag = Annotated[str, _matches(_TAG, "a valid version tag (letters, digits, '.', '_', '-')")]
#: A Unix user, group or database identifier.
Name = Annotated[str, _matches(_NAME, "a valid name (lower case letters, digits, '_', '-')")]
Port = Annotated[int, Field(ge=1, le=65535)]


def _https_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or re.search(r"[\s\"'\\]", value):
        raise ValueError(f"{value!r} is not an https:// URL")
    return value


#: An https:// URL with a host (an ACME directory, for example); kept as written.
HttpsUrl = Annotated[str, AfterValidator(_https_url)]
LogLevel = Annotated[str, _matches(re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$"),
                                   "one of DEBUG, INFO, WARNING, ERROR, CRITICAL")]

class Section(BaseModel):
    """Base of every settings section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

class Resources(Section):
    """Limits for one service (Compose ``deploy.resources.limits``, systemd MemoryMax/CPUQuota)."""

    memory: Size = "512m"  # hard memory limit; container-memory alerts compare against it
    cpus: float = Field(default=1.0, gt=0)  # CPU share limit, in cores
