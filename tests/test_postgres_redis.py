"""PostgreSQL and Redis configuration, loaded by the real servers (Debian's postgresql-15 with
pgvector, redis-server 7.0) with secrets full of $, quotes, #, backslashes and newlines.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import PG_BIN, as_postgres, free_port, render_example
from rsdeploy.roles import docker_engine, postgres, redis

PGVECTOR = Path("/usr/share/postgresql/15/extension/vector.control")

NASTY_ENV = {
    "RS_DB_PASSWORD": "db $pa'ss \"q\" #1 \\x\n2nd-line $$HOME ${X}",
    "RS_REDIS_PASSWORD": "redis $ecret 'q' \"d\" #2 \\y\nnext ${HOME} é",
    "RS_DB_MONITOR_PASSWORD": "mon $1 'a' \"b\" #3 \\z\nline",
}
DB_PASSWORD = NASTY_ENV["RS_DB_PASSWORD"]
MONITOR_PASSWORD = NASTY_ENV["RS_DB_MONITOR_PASSWORD"]
REDIS_PASSWORD = NASTY_ENV["RS_REDIS_PASSWORD"]


@cache
def rendered(name: str) -> dict:
    """{host: (hs, {path: RenderedFile})} of an example, rendered with the nasty secrets."""
    root = Path(tempfile.mkdtemp(prefix=f"rs-db-{name}-"))
    return {host: (hs, {f.path: f for f in files})
            for host, (hs, files) in render_example(name, root, env=NASTY_ENV).items()}


def the_file(name: str, host: str, path: str):
    return rendered(name)[host][1][path]


# --- Redis -------------------------------------------------------------------------------------


def _resp(sock: socket.socket, *args: str) -> bytes:
    """Send one command in RESP and return the raw reply (exact bytes, no client quoting)."""
    payload = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    sock.sendall(payload)
    time.sleep(0.05)
    return sock.recv(65536)


def _bulk(value: str) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value.encode()), value.encode())


@contextmanager
def running_redis(config: str, work: Path):
    """A real redis-server started from ``config`` (the text of a redis.conf) in ``work``, on a
    Unix socket only; yields a connected socket. Example: ``with running_redis(text, tmp) as s:``
    """
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    conf = work / "redis.conf"
    conf.write_text(config)
    sock_path = work / "redis.sock"
    # Command-line options come after the file: only where it runs changes, not what it says.
    proc = subprocess.Popen(
        ["redis-server", str(conf), "--port", "0", "--unixsocket", str(sock_path),
         "--dir", str(work), "--pidfile", str(work / "pid"), "--logfile", "",
         "--daemonize", "no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        sock = None
        for _ in range(100):  # the socket file appears at bind(), a moment before listen()
            if proc.poll() is not None:
                pytest.fail("redis-server refused the config: " + proc.stdout.read().decode())
            candidate = socket.socket(socket.AF_UNIX)
            try:
                candidate.connect(str(sock_path))
                sock = candidate
                break
            except (ConnectionRefusedError, FileNotFoundError):
                candidate.close()
                time.sleep(0.05)
        if sock is None:
            pytest.fail(f"redis-server did not listen on {sock_path} within 5 s")
        with sock:
            yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=[("example_docker", "/opt/residency-scheduler/config/redis/redis.conf"),
                        ("example_systemd", "/etc/redis/redis.conf")], ids=["docker", "systemd"])
def redis_server(request, tmp_path):
    """A real redis-server started from the rendered redis.conf (on a Unix socket only)."""
    name, path = request.param
    with running_redis(the_file(name, "rs1.example.org", path).content, tmp_path) as sock:
        yield sock


def test_redis_conf_loads_and_requires_exactly_the_password(redis_server):
    assert _resp(redis_server, "PING").startswith(b"-NOAUTH")
    assert _resp(redis_server, "AUTH", REDIS_PASSWORD + "x").startswith(b"-WRONGPASS")
    assert _resp(redis_server, "AUTH", REDIS_PASSWORD) == b"+OK\r\n"
    assert _bulk(REDIS_PASSWORD) in _resp(redis_server, "CONFIG", "GET", "requirepass")


def test_redis_keeps_broker_queues(redis_server):
    _resp(redis_server, "AUTH", REDIS_PASSWORD)
    assert _bulk("noeviction") in _resp(redis_server, "CONFIG", "GET", "maxmemory-policy")
    assert _bulk("yes") in _resp(redis_server, "CONFIG", "GET", "appendonly")
    assert _bulk(str(256 * 1024 * 1024)) in _resp(redis_server, "CONFIG", "GET", "maxmemory")
    assert _bulk("yes") in _resp(redis_server, "CONFIG", "GET", "protected-mode")


def test_redis_validate_passes_rendered_and_rejects_broken_configs(tmp_path):
    for name in ("example_docker", "example_systemd"):
        hs, files = rendered(name)["rs1.example.org"]
        tree = tmp_path / name
        conf = tree / redis.config_path(hs).lstrip("/")
        conf.parent.mkdir(parents=True)
        conf.write_text(files[redis.config_path(hs)].content)
        assert [v.ok for v in redis.validate(tree, hs)] == [True]
    broken = tmp_path / "broken.conf"
    broken.write_text('requirepass "unbalanced\n')
    ok, detail = redis.load_config(broken)
    assert not ok and "FATAL CONFIG FILE ERROR" in detail


def test_redis_binds_per_layout_and_topology():
    docker_hs, _ = rendered("example_docker")["rs1.example.org"]
    systemd_hs, _ = rendered("example_systemd")["rs1.example.org"]
    assert redis.bind_addresses(docker_hs) == "* -::*"  # the container; publishing decides
    assert redis.bind_addresses(systemd_hs) == "127.0.0.1 -::1"


def test_redis_secret_files_are_private_to_their_reader():
    for name, host in (("example_docker", "rs1.example.org"), ("example_multi", "db1.example.org"),
                       ("example_systemd", "rs1.example.org")):
        hs, files = rendered(name)[host]
        for f in files.values():
            if f.role == "redis":
                assert (f.mode, f.secret) == ("600", True), f.path
                # redis.conf: the redis user; the password file: the health check (root).
                reader = "root" if f.path.endswith("/redis_password") else (
                    "999" if hs.stack.layout == "docker" else "redis")
                assert f.owner == reader, f.path
    files = rendered("example_docker")["rs1.example.org"][1]
    assert files["/opt/residency-scheduler/secrets/redis_password"].content == REDIS_PASSWORD


# --- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """A throw-away PostgreSQL 15 cluster that uses the rendered conf.d file and pg_hba.conf
    (systemd layout), on loopback and a free port. Yields (run psql as postgres, port, dir)."""
    if not (PG_BIN / "postgres").exists() or not PGVECTOR.exists():
        pytest.fail("needs postgresql-15 and pgvector (see APP_CONTRACT.md: build pgvector 0.8.0)")
    hs, files = rendered("example_systemd")["rs1.example.org"]
    work = Path(tempfile.mkdtemp(prefix="rs-pg-"))
    shutil.chown(work, "postgres", "postgres")
    data, secrets = work / "data", work / "secrets"
    assert as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                         "--auth-local=peer", "--auth-host=scram-sha-256"]).returncode == 0
    etc = "/etc/postgresql/15/main"
    (work / "rs.conf").write_text(files[f"{etc}/conf.d/residency-scheduler.conf"].content)
    (work / "pg_hba.conf").write_text(files[f"{etc}/pg_hba.conf"].content)
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"include '{work / 'rs.conf'}'\n")
    secrets.mkdir()
    for f in files.values():
        if f.path.startswith(postgres.secrets_dir(hs)):
            (secrets / Path(f.path).name).write_text(f.content)
    for path in work.rglob("*"):
        shutil.chown(path, "postgres", "postgres")
    port = free_port()
    options = (f"-c hba_file={work / 'pg_hba.conf'} -c port={port} "
               f"-c listen_addresses=127.0.0.1 -c unix_socket_directories={work}")
    started = as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-w",
                            "-l", str(work / "log"), "start"])
    assert started.returncode == 0, started.stderr + (work / "log").read_text()

    def psql(*args: str, sql_file: str | None = None) -> subprocess.CompletedProcess:
        command = [str(PG_BIN / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-h", str(work), "-p",
                   str(port), "-U", "postgres", *args]
        return as_postgres(command + (["-f", sql_file] if sql_file else []))

    yield psql, port, work
    as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
    shutil.rmtree(work, ignore_errors=True)


def _roles_sql(work: Path, name: str, host: str, path: str) -> str:
    """A rendered roles SQL with its secret paths pointed at the test's copies (only those)."""
    hs, files = rendered(name)[host]
    text = files[path].content
    read_dir = "/run/secrets" if hs.stack.layout == "docker" else postgres.secrets_dir(hs)
    target = work / f"{name}-roles.sql"
    target.write_text(text.replace(f"{read_dir}/", f"{work / 'secrets'}/"))
    shutil.chown(target, "postgres", "postgres")
    return str(target)


def _login(port: int, user: str, password: str, sql: str) -> subprocess.CompletedProcess:
    """psql over TCP with a password (scram-sha-256 per the rendered pg_hba.conf)."""
    env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": password}
    return subprocess.run([str(PG_BIN / "psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(port),
                           "-U", user, "-d", "residency_scheduler", "-c", sql],
                          capture_output=True, text=True, env=env, timeout=30)


SYSTEMD_SQL = ("example_systemd", "rs1.example.org", "/etc/residency-scheduler/postgres/roles.sql")
DOCKER_SQL = ("example_docker", "rs1.example.org",
              "/opt/residency-scheduler/config/postgres/initdb/10-roles.sql")


def test_roles_sql_runs_twice_and_the_app_role_is_no_superuser(cluster):
    psql, port, work = cluster
    for _ in range(2):  # the deploy re-runs it on every rollout
        done = psql("-d", "postgres", sql_file=_roles_sql(work, *SYSTEMD_SQL))
        assert done.returncode == 0, done.stderr
    row = psql("-At", "-d", "postgres", "-c",
               "SELECT rolsuper, rolcreaterole, rolcreatedb, rolcanlogin FROM pg_roles "
               "WHERE rolname = 'scheduler'")
    assert row.stdout.strip() == "f|f|f|t"
    owner = psql("-At", "-d", "postgres", "-c", "SELECT pg_get_userbyid(datdba) FROM pg_database "
                 "WHERE datname = 'residency_scheduler'")
    assert owner.stdout.strip() == "scheduler"


def test_app_role_logs_in_with_the_exact_password_and_can_migrate(cluster):
    psql, port, work = cluster
    assert psql("-d", "postgres", sql_file=_roles_sql(work, *SYSTEMD_SQL)).returncode == 0
    migration = ("CREATE EXTENSION IF NOT EXISTS vector; "
                 "CREATE TABLE IF NOT EXISTS t (e vector(3)); SELECT current_user")
    done = _login(port, "scheduler", DB_PASSWORD, migration)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "scheduler"
    assert _login(port, "scheduler", DB_PASSWORD[:-1], "SELECT 1").returncode != 0


def test_monitor_role_has_pg_monitor_and_its_own_password(cluster):
    psql, port, work = cluster
    assert psql("-d", "postgres", sql_file=_roles_sql(work, *SYSTEMD_SQL)).returncode == 0
    done = _login(port, "rs_monitor", MONITOR_PASSWORD,
                  "SELECT pg_has_role('rs_monitor', 'pg_monitor', 'member')")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "t"


def test_docker_init_script_leaves_no_network_superuser(cluster):
    psql, port, work = cluster
    assert psql("-d", "postgres", "-c", "ALTER ROLE postgres PASSWORD 'bootstrap-pw'").returncode == 0
    assert _login(port, "postgres", "bootstrap-pw", "SELECT 1").returncode == 0
    # As the image runs it: connected to POSTGRES_DB, the database already created.
    done = psql("-d", "residency_scheduler", sql_file=_roles_sql(work, *DOCKER_SQL))
    assert done.returncode == 0, done.stderr
    assert _login(port, "postgres", "bootstrap-pw", "SELECT 1").returncode != 0
    assert _login(port, "scheduler", DB_PASSWORD, "SELECT 1").returncode == 0


def test_conf_d_settings_reach_the_server(cluster):
    psql, _port, _work = cluster
    shown = psql("-At", "-d", "postgres", "-c",
                 "SELECT current_setting('max_connections') || ' ' || "
                 "current_setting('shared_buffers') || ' ' || current_setting('password_encryption')")
    assert shown.stdout.strip() == "100 256MB scram-sha-256"


def test_postgres_listens_beyond_loopback_only_for_a_remote_app():
    hs, files = rendered("example_systemd")["rs1.example.org"]
    conf = files["/etc/postgresql/15/main/conf.d/residency-scheduler.conf"].content
    assert "listen_addresses = 'localhost'" in conf
    assert postgres.hba_address("10.0.0.22") == "10.0.0.22/32"
    assert postgres.hba_address("fd00::2") == "fd00::2/128"
    assert postgres.hba_address("app1.internal") == "app1.internal"


def test_db_secret_files_belong_to_the_server_user():
    for name, host in (("example_docker", "rs1.example.org"), ("example_systemd", "rs1.example.org")):
        hs, files = rendered(name)[host]
        secrets = {Path(f.path).name: f for f in files.values()
                   if f.role == "postgres" and f.secret}
        assert set(secrets) == {"db_password", "postgres_monitor_password"}
        assert secrets["db_password"].content == DB_PASSWORD
        for f in secrets.values():
            assert f.mode == "600"
            assert f.owner == (postgres.IMAGE_UID if hs.stack.layout == "docker" else "postgres")


# --- Docker engine -----------------------------------------------------------------------------


def test_daemon_json_static_no_offline_dockerd_validate():
    """dockerd 20.10 has no --validate (23.0+): check the JSON and the keys dockerd reads."""
    hs, files = rendered("example_docker")["rs1.example.org"]
    daemon = json.loads(files[docker_engine.DAEMON_JSON].content)
    assert daemon == {"live-restore": True, "log-driver": "json-file",
                      "log-opts": {"max-file": "3", "max-size": "10m"}}
    assert docker_engine.DAEMON_JSON not in rendered("example_systemd")["rs1.example.org"][1]


def test_only_app_hosts_reach_the_data_stores_through_the_firewall(tmp_path):
    """The db host's nftables file (checked by nft -c): PostgreSQL's and Redis' TLS ports are
    dropped for every source but the app hosts, Redis' plain port for every other host, on the host's own input (native services) and
    on the ports Docker publishes (DNAT-ed, the forward path); other published ports are the
    stack's hosts' only."""
    rendered = render_example("example_multi", tmp_path)
    hs, files = rendered["db1.example.org"]
    text = next(f.content for f in files if f.path.endswith("firewall.nft"))
    assert "elements = { 10.0.0.22, 10.0.0.25 }" in text  # app1, app2: not web, not monitoring
    # Redis' plain port is this host's own; other hosts use its TLS port (6380).
    assert "tcp dport { 6379 } drop" in text
    assert "tcp dport { 5432, 6380 } ip saddr != @data_store_clients drop" in text
    assert ("ct status dnat ct original proto-dst { 5432, 6380 } ip saddr != @data_store_clients "
            "drop") in text
    assert "ct original proto-dst != { 22, 80, 443 } ip saddr != @stack_peers drop" in text
    if shutil.which("nft"):
        check = subprocess.run(["nft", "-c", "-f", str(tmp_path / "db1.example.org/etc/rsdeploy/firewall.nft")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    web_files = rendered["web1.example.org"][1]
    assert "data_store_clients" not in next(f.content for f in web_files if f.path.endswith("firewall.nft"))
