"""Helpers for the reference app's container tests: HTTP probes, the app's environment, psql."""

from __future__ import annotations

import io
import json
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote

import pytest

LABEL = {"rsdeploy.test": "refapp"}

# Secrets with the characters real ones have (they must survive URLs and env files).
PG_SUPERUSER_PASSWORD = "postgres-superuser-pw-1"
DB_PASSWORD = "db-pa$$word 'q' #1\\x/@:"
REDIS_PASSWORD = "redis-$ecret-passw0rd-#42"
SECRET_KEY = "refapp-test-secret-key-0123456789-abcdefghijklmnop"


@dataclass
class Published:
    """A container and the 127.0.0.1 port its service port is published on."""

    container: object
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def http(url: str, data: dict | None = None, timeout: float = 10) -> tuple[int, str]:
    """(status, body) of a GET, or of a JSON POST when ``data`` is given; never raises on 4xx/5xx."""
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_http(url: str, container, timeout: float = 90) -> None:
    """Wait until ``url`` answers at all (any status); fail with the logs if the container died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            http(url, timeout=3)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            container.reload()
            if container.status == "exited":
                pytest.fail(f"{container.name} exited:\n{container.logs().decode()[-3000:]}")
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer in {timeout:.0f} s:\n{container.logs().decode()[-3000:]}")


def published_port(container, port: str) -> int:
    container.reload()
    return int(container.attrs["NetworkSettings"]["Ports"][port][0]["HostPort"])


def tar_of(name: str, text: str) -> bytes:
    """A tar archive holding one file (what ``put_archive`` takes)."""
    data = text.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class Postgres:
    container: object

    _auth = {"PGPASSWORD": PG_SUPERUSER_PASSWORD}

    @staticmethod
    def _psql_args(sql: str, database: str) -> list[str]:
        return ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1",
                "-Atc", sql]

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser over TCP; returns the unaligned output."""
        result = self.container.exec_run(self._psql_args(sql, database), environment=self._auth)
        assert result.exit_code == 0, result.output.decode()
        return result.output.decode().strip()

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait for the real server (TCP, not the init-time socket-only one)."""
        deadline = time.monotonic() + timeout
        while self.container.exec_run(self._psql_args("SELECT 1", "postgres"),
                                      environment=self._auth).exit_code != 0:
            self.container.reload()
            if self.container.status == "exited" or time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL did not start:\n{self.container.logs().decode()[-3000:]}")
            time.sleep(0.5)

    def create_database(self, name: str, vector: bool = True) -> str:
        """A database owned by the (non-superuser) app role; returns its DATABASE_URL.

        ``vector``: create the pgvector extension as the superuser first, as a hardened deploy does.
        """
        self.psql(f'CREATE DATABASE "{name}" OWNER scheduler')
        if vector:
            self.psql("CREATE EXTENSION vector", database=name)
        return f"postgresql://scheduler:{quote(DB_PASSWORD, safe='')}@db:5432/{name}"


def app_env(database_url: str, **overrides: str) -> dict[str, str]:
    """The backend's production environment (DEBUG=false) as rsdeploy's app.env sets it."""
    redis_url = f"redis://:{quote(REDIS_PASSWORD, safe='')}@redis:6379/0"
    env = {
        "DATABASE_URL": database_url, "REDIS_PASSWORD": REDIS_PASSWORD, "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url,
        "SECRET_KEY": SECRET_KEY, "DEBUG": "false", "CORS_ORIGINS": '["https://rs.example.org"]',
        "RATE_LIMIT_ENABLED": "true", "LOG_LEVEL": "INFO", "CELERY_LOG_LEVEL": "INFO",
    }
    return {**env, **overrides}
