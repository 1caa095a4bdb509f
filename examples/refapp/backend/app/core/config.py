"""Settings from the environment, with the real app's production refusal rules.

Example::

    settings = get_settings()          # logs and exits when production settings are unsafe
    settings.database_url              # "postgresql://scheduler:...@db:5432/residency_scheduler"
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.version import VERSION

log = logging.getLogger("app.config")

#: Placeholder secrets seen in example files and tutorials; refused even when long enough.
WEAK_SECRETS = frozenset({
    "changeme", "change-me", "change_me", "secret", "secret-key", "your-secret-key",
    "your-secret-key-here", "your-secret-key-change-in-production",
    "change-this-secret-key-in-production", "dev-secret-key-change-in-production",
    "insecure-development-secret-key-do-not-use",
})

MIN_SECRET_KEY = 32
MIN_REDIS_PASSWORD = 16
MIN_DB_PASSWORD = 12


class InsecureSettingsError(RuntimeError):
    """Production settings that the app refuses to start with; ``.problems`` lists why."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    redis_password: str
    celery_broker_url: str
    celery_result_backend: str
    secret_key: str
    webhook_secret: str
    debug: bool
    cors_origins: list[str]
    rate_limit_enabled: bool  # accepted for contract parity: the stand-in has no rate limiter
    log_level: str
    celery_log_level: str
    release: str  # APP_VERSION as the deploy labels it; VERSION is what this code is


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _cors_origins(value: str) -> list[str]:
    origins = json.loads(value) if value.strip() else []
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise ValueError(f"CORS_ORIGINS must be a JSON list of strings, got {value!r}")
    return origins


def from_environment(env: Mapping[str, str]) -> Settings:
    """Read every setting of the app contract from ``env`` (no validation of strength)."""
    redis_url = env.get("REDIS_URL", "redis://localhost:6379/0")
    return Settings(
        database_url=env.get("DATABASE_URL",
                             "postgresql://scheduler@localhost:5432/residency_scheduler"),
        redis_url=redis_url,
        redis_password=env.get("REDIS_PASSWORD", ""),
        celery_broker_url=env.get("CELERY_BROKER_URL", redis_url),
        celery_result_backend=env.get("CELERY_RESULT_BACKEND", redis_url),
        secret_key=env.get("SECRET_KEY", ""),
        webhook_secret=env.get("WEBHOOK_SECRET", ""),
        debug=_flag(env.get("DEBUG", "false")),
        cors_origins=_cors_origins(env.get("CORS_ORIGINS", "[]")),
        rate_limit_enabled=_flag(env.get("RATE_LIMIT_ENABLED", "true")),
        log_level=env.get("LOG_LEVEL", "INFO").upper(),
        celery_log_level=env.get("CELERY_LOG_LEVEL", "INFO").upper(),
        release=env.get("APP_VERSION", VERSION),
    )


def _weak(secret: str, minimum: int) -> bool:
    return len(secret) < minimum or secret.strip().lower() in WEAK_SECRETS


def production_problems(settings: Settings) -> list[str]:
    """Why ``settings`` are unsafe for production (DEBUG=false); empty when they are fine.

    Example: ``production_problems(from_environment({"DEBUG": "false"}))`` lists every rule.
    """
    if settings.debug:
        return []
    problems = []
    if _weak(settings.secret_key, MIN_SECRET_KEY):
        problems.append(f"SECRET_KEY must be at least {MIN_SECRET_KEY} characters "
                        "and not a known placeholder")
    if settings.webhook_secret and _weak(settings.webhook_secret, MIN_SECRET_KEY):
        problems.append(f"WEBHOOK_SECRET must be at least {MIN_SECRET_KEY} characters "
                        "and not a known placeholder")
    if len(settings.redis_password) < MIN_REDIS_PASSWORD:
        problems.append(f"REDIS_PASSWORD must be set and at least {MIN_REDIS_PASSWORD} characters")
    if len(make_url(settings.database_url).password or "") < MIN_DB_PASSWORD:
        problems.append(f"the password in DATABASE_URL must be at least {MIN_DB_PASSWORD} characters")
    if any("*" in origin for origin in settings.cors_origins):
        problems.append("CORS_ORIGINS must not contain '*'")
    return problems


def load_settings(env: Mapping[str, str] = os.environ) -> Settings:
    """Settings from ``env``; raises InsecureSettingsError when production rules are broken."""
    settings = from_environment(env)
    problems = production_problems(settings)
    if problems:
        raise InsecureSettingsError(problems)
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings; logs one clear line and exits 1 when they are unsafe."""
    try:
        return load_settings()
    except (InsecureSettingsError, ValueError, ArgumentError) as error:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        log.critical("refusing to start with DEBUG=false: %s", error)
        sys.exit(1)


if __name__ == "__main__":
    # `python -m app.core.config`: the entrypoint's preflight check (the REFAPP_* switches too).
    get_settings()
    from app.core import like_real
    try:
        like_real.from_environment()
    except ValueError as error:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        log.critical("refusing to start: %s", error)
        sys.exit(1)
