"""TLS between hosts: the stack CA's server certificates (the same bytes every run, verified by
openssl for the server's address and name), a real PostgreSQL 15 and a real Redis serving
them to clients that verify (libpq ``sslmode=verify-full`` as DATABASE_URL says, Redis over TLS
with the CA bundle), plain and unverified connections refused; ``rsdeploy ca init|rotate`` in
the secrets file; and the split example's rendered files (hostssl, the app's URLs and CA)."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from rsdeploy.roles import backend, flower, internal_tls, postgres, redis
from rsdeploy.cli import main
from rsdeploy.layout import Recreate
from rsdeploy.secrets import read_file
from tests.conftest import PG_BIN, as_postgres, free_port, load_example

CA_KEY, CA_CERT = internal_tls.new_ca("test")
OTHER_KEY, OTHER_CERT = internal_tls.new_ca("another")


def _write(directory: Path, name: str, text: str, owner: str | None = None) -> Path:
    path = directory / name
    path.write_text(text if text.endswith("\n") else text + "\n")
    path.chmod(0o600)
    if owner:
        shutil.chown(path, owner, owner)
    return path


def _openssl_verify(ca: Path, cert: Path, *check: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca), *check, str(cert)],
                          capture_output=True, text=True)


def test_a_server_certificate_is_the_same_every_run_and_verifies_for_its_names(tmp_path):
    names = ["10.0.0.21", "db1.example.org"]
    first = internal_tls.issue(CA_KEY, CA_CERT, "PostgreSQL on db1", names)
    assert internal_tls.issue(CA_KEY, CA_CERT, "PostgreSQL on db1", names) == first
    other_host = internal_tls.issue(CA_KEY, CA_CERT, "PostgreSQL on db2", ["10.0.0.31", "db2"])
    assert other_host[0] != first[0]  # each server its own key
    ca, cert = _write(tmp_path, "ca.pem", CA_CERT), _write(tmp_path, "cert.pem", first[1])
    assert _openssl_verify(ca, cert, "-verify_ip", "10.0.0.21").returncode == 0
    assert _openssl_verify(ca, cert, "-verify_hostname", "db1.example.org").returncode == 0
    wrong_address = _openssl_verify(ca, cert, "-verify_ip", "10.0.0.22")
    assert "mismatch" in wrong_address.stdout + wrong_address.stderr
    assert _openssl_verify(_write(tmp_path, "other.pem", OTHER_CERT), cert).returncode != 0
    key = _write(tmp_path, "key.pem", first[0])
    modulus = [subprocess.run(["openssl", kind, "-in", str(path), "-pubout" if kind == "pkey"
                               else "-pubkey", *(["-noout"] if kind == "x509" else [])],
                              capture_output=True, text=True).stdout
               for kind, path in (("pkey", key), ("x509", cert))]
    assert modulus[0] == modulus[1] != ""  # the key belongs to the certificate


@contextmanager
def tls_postgres(directory: Path):
    """A throw-away PostgreSQL 15 on 127.0.0.1 with the stack CA's certificate for 127.0.0.1,
    admitting TCP clients over TLS only (hostssl, as the db host admits the app hosts)."""
    shutil.chown(directory, "postgres", "postgres")
    key, cert = internal_tls.issue(CA_KEY, CA_CERT, "PostgreSQL on test", ["127.0.0.1"])
    data, port = directory / "data", free_port()
    assert as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth-local=peer"]).returncode == 0
    (data / "pg_hba.conf").write_text("local all all peer\nhostssl all all 127.0.0.1/32 trust\n")
    settings = {"port": port, "listen_addresses": "127.0.0.1", "unix_socket_directories": directory,
                **{name: value for name, value in {
                    "ssl": "on", "ssl_min_protocol_version": "TLSv1.2",
                    "ssl_cert_file": _write(directory, "cert.pem", cert, "postgres"),
                    "ssl_key_file": _write(directory, "key.pem", key, "postgres")}.items()}}
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    started = as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-w",
                           "-l", str(directory / "log"), "start"])
    assert started.returncode == 0, started.stderr + (directory / "log").read_text()
    try:
        yield port
    finally:
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])


def _psql(port: int, query: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PG_BIN / "psql"), f"host=127.0.0.1 port={port} user=postgres "
                           f"dbname=postgres {query}", "-Atc", "select ssl from pg_stat_ssl "
                           "where pid = pg_backend_pid()"], capture_output=True, text=True,
                          timeout=30)


@pytest.mark.skipif(not PG_BIN.exists(), reason="PostgreSQL 15 server not installed")
def test_postgres_serves_verify_full_clients_and_refuses_plain_ones():
    with tempfile.TemporaryDirectory(prefix="rs-tls-pg-") as work:
        directory = Path(work)
        ca, other = _write(directory, "ca.pem", CA_CERT), _write(directory, "other.pem", OTHER_CERT)
        for path in (ca, other):
            path.chmod(0o644)
        with tls_postgres(directory) as port:
            verified = _psql(port, f"sslmode=verify-full sslrootcert={ca}")
            assert (verified.returncode, verified.stdout.strip()) == (0, "t"), verified.stderr
            plain = _psql(port, "sslmode=disable")
            assert plain.returncode != 0 and "no encryption" in plain.stderr
            impostor = _psql(port, f"sslmode=verify-full sslrootcert={other}")
            assert impostor.returncode != 0 and "certificate verify failed" in impostor.stderr


@contextmanager
def tls_redis(directory: Path, password: str):
    """A throw-away redis-server with the stack CA's certificate for 127.0.0.1 on a TLS port
    only (no plain port)."""
    key, cert = internal_tls.issue(CA_KEY, CA_CERT, "Redis on test", ["127.0.0.1"])
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(_write(directory, "cert.pem", cert)),
         "--tls-key-file", str(_write(directory, "key.pem", key)), "--tls-auth-clients", "no",
         "--requirepass", password, "--dir", str(directory), "--save", ""],
        stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _redis_ping(port: int, ca: Path, password: str) -> str:
    """PING as redis-py does with ssl_cert_reqs=required and ssl_ca_certs: the certificate
    verified against the CA and the address it was dialled at."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            time.sleep(0.2)
            return conn.recv(1024).decode()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_redis_serves_clients_that_verify_the_stack_ca_and_refuses_others(tmp_path):
    password = "tls-test-redis-password"
    with tls_redis(tmp_path, password) as port:
        ca = _write(tmp_path, "ca.pem", CA_CERT)
        assert _redis_ping(port, ca, password) == "+OK\r\n+PONG\r\n"
        with pytest.raises(ssl.SSLCertVerificationError):
            _redis_ping(port, _write(tmp_path, "other.pem", OTHER_CERT), password)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(b"PING\r\n")
            try:
                answer = plain.recv(64)
            except ConnectionResetError:
                answer = b""
            assert b"PONG" not in answer  # nothing in clear


def test_ca_init_then_rotate_in_two_steps(tmp_path, capsys):
    secrets = tmp_path / "secrets.yml"
    secrets.write_text("# mine\ndb_password: 'kept-as-it-was-123'\n")
    secrets.chmod(0o600)
    assert main(["ca", "init", "--secrets", str(secrets)]) == 0
    first = read_file(secrets)
    assert first["db_password"] == "kept-as-it-was-123" and secrets.read_text().startswith("# mine")
    assert main(["ca", "init", "--secrets", str(secrets)]) == 2  # never over an existing CA
    assert "already" in capsys.readouterr().err
    assert main(["ca", "rotate", "--secrets", str(secrets)]) == 0
    step1 = read_file(secrets)
    assert step1[internal_tls.CERT_SECRET] == first[internal_tls.CERT_SECRET]
    assert step1[internal_tls.NEXT_CERT_SECRET] != first[internal_tls.CERT_SECRET]
    assert main(["ca", "rotate", "--secrets", str(secrets)]) == 0
    step2 = read_file(secrets)
    assert step2[internal_tls.CERT_SECRET] == step1[internal_tls.NEXT_CERT_SECRET]
    assert step2[internal_tls.KEY_SECRET] == step1[internal_tls.NEXT_KEY_SECRET]
    assert internal_tls.NEXT_KEY_SECRET not in step2 and internal_tls.NEXT_CERT_SECRET not in step2
    assert oct(secrets.stat().st_mode & 0o777) == "0o600"
    yaml.safe_load(secrets.read_text())  # still plain YAML


def test_during_a_rotation_clients_trust_both_cas_and_servers_keep_the_current_one():
    hosts = load_example("example_multi")
    db, app = hosts["db1.example.org"], hosts["app1.example.org"]
    next_key, next_cert = internal_tls.new_ca("next")
    rotating = {name: dataclasses.replace(hs, secrets=hs.secrets.model_copy(update={
        "stack_ca_next_key": next_key, "stack_ca_next_cert": next_cert}))
        for name, hs in hosts.items()}
    bundle = backend.stack_ca_file(rotating[app.name]).content
    assert db.secrets.stack_ca_cert in bundle and next_cert in bundle
    assert backend.stack_ca_file(app).content == db.secrets.stack_ca_cert + "\n"
    assert internal_tls.server_credentials(rotating[db.name], "db") == \
        internal_tls.server_credentials(db, "db")


def test_the_split_example_speaks_tls_only_across_hosts():
    hosts = load_example("example_multi")
    db, app = hosts["db1.example.org"], hosts["app1.example.org"]
    hba = postgres.hba_file(db).content
    assert "hostssl residency_scheduler  scheduler  10.0.0.22/32  scram-sha-256" in hba
    assert "\nhost    residency_scheduler" not in hba  # no plain line for an app host
    assert redis.tls_files(db) and redis.local_only_ports(db) == [db.stack.redis.port]
    assert internal_tls.reaches(app, "db") and internal_tls.reaches(app, "redis")
    assert not internal_tls.applies(hosts["web1.example.org"])
    # One host (or TLS off): no certificates, no TLS in the URLs.
    single = load_example("example_docker")["rs1.example.org"]
    assert not internal_tls.applies(single)
    assert backend.database_url(single).endswith("/residency_scheduler")


def test_flower_reads_only_its_own_files_so_a_change_restarts_it():
    """Flower's broker URL is in its own flower.env and, across hosts, its own CA copy: a new
    Redis password or CA restarts Flower (app.env's changes restart the app's services)."""
    app = load_example("example_multi")["app1.example.org"]
    env = flower.environment(app)
    assert env["CELERY_BROKER_URL"] == backend.redis_url(app, ca_path=flower.stack_ca_read_path(app))
    assert env["CELERY_BROKER_URL"].startswith("rediss://")
    ca_copy = flower.stack_ca_file(app)
    assert ca_copy.content == internal_tls.trusted_cas(app)
    assert ca_copy.reactions == (Recreate("flower"),) and ca_copy in flower.render(app)
    assert flower.environment_file(app).reactions == (Recreate("flower"),)
