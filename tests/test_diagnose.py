"""``rsdeploy diagnose``: the rendered rs-diagnose run against a real PostgreSQL 15 and a real
Redis (the systemd layout's commands, the servers on scratch ports), with stub systemctl for the
units' restarts and OOM kills; then its facts and rs-status's checks judged into findings, each
with a remedy that names the host and inventory. The sandbox chains diagnose real stacks (a
stopped database, a filled disk)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from rsdeploy.roles import status as host_status
from rsdeploy import diagnose, status
from rsdeploy.render import write_tree
from rsdeploy.stack import load_inventory
from tests.conftest import (EXAMPLE_SECRETS, INVENTORIES, PG_BIN, as_postgres, free_port,
                            load_example, unreachable)

REDIS_PASSWORD = "diagnose-test-redis-password"  # the example secrets' own is long enough too
STUB_SYSTEMCTL = r"""#!/bin/bash
# is-enabled: blue is the serving slot. show: the worker was OOM-killed, redis restarted twice.
case $1 in
    is-enabled) [[ $3 == *@blue.service ]] ;;
    show)
        unit=${*: -1}
        case $unit in
            residency-celery-worker@blue.service) printf 'Result=oom-kill\nNRestarts=1\n' ;;
            redis-server.service) printf 'NRestarts=2\nResult=success\n' ;;
            *) printf 'NRestarts=0\nResult=success\n' ;;
        esac ;;
esac
"""


@contextmanager
def scratch_postgres():
    """A throw-away PostgreSQL 15 on a free port, its socket in a scratch directory: yields
    (socket directory, port)."""
    work = Path(tempfile.mkdtemp(prefix="rs-diag-pg-"))
    shutil.chown(work, "postgres", "postgres")
    data, port = work / "data", free_port()
    assert as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth-local=peer"]).returncode == 0
    options = f"-c port={port} -c listen_addresses='' -c unix_socket_directories={work}"
    started = as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-w",
                           "-l", str(work / "log"), "start"])
    assert started.returncode == 0, started.stderr
    try:
        yield work, port
    finally:
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def scratch_redis(port: int, maxmemory: str):
    with tempfile.TemporaryDirectory() as work:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                 "--requirepass", REDIS_PASSWORD, "--maxmemory", maxmemory,
                                 "--dir", work, "--save", ""], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                 text=True).stdout.strip() not in ("PONG", "NOAUTH Authentication required."):
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
def rs_diagnose(tmp_path):
    """``run(pg_socket_dir, pg_port)``: the systemd example's rs-diagnose (db, redis and app on
    one host), its Redis on a scratch port with its password file in tmp_path; returns the host
    settings and run's output."""
    redis_port = free_port()
    hs = load_inventory(str(INVENTORIES / "example_systemd.py"), EXAMPLE_SECRETS, env={},
                        override_data={"paths": {"base_dir": str(tmp_path), "config_dir": str(tmp_path / "etc")},
                                       "redis": {"port": redis_port},
                                       "status": {"slow_query_seconds": 1}})["rs1.example.org"]
    write_tree(host_status.render(hs), tmp_path / "tree")
    script = tmp_path / "tree" / host_status.DIAGNOSE_PATH.lstrip("/")
    password = tmp_path / "etc" / "secrets" / "redis_password"
    password.parent.mkdir(parents=True)
    password.write_text(REDIS_PASSWORD)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(STUB_SYSTEMCTL)
    (bin_dir / "systemd-detect-virt").write_text("#!/bin/sh\nexit 0\n")  # "a container"
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)

    def run(pg_dir: Path, pg_port: int) -> str:
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}:{PG_BIN}",
                   PGHOST=str(pg_dir), PGPORT=str(pg_port))
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env,
                              timeout=60, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    return hs, redis_port, run


def facts(output: str) -> dict[str, list[list[str]]]:
    found: dict[str, list[list[str]]] = {}
    for line in output.splitlines():
        tag, name, *values = line.split("\t")
        assert tag == "fact", line
        found.setdefault(name, []).append(values)
    return found


def wait_until_running_for(pg_dir: Path, pg_port: int, marker: str, seconds: float,
                           timeout: float = 30) -> None:
    """Wait until PostgreSQL reports a query holding ``marker`` active for ``seconds`` or more
    (a fixed sleep raced the sleeper's start on a loaded machine)."""
    sql = ("SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state = "
           f"'active' AND query LIKE '%{marker}%' AND now() - query_start >= interval "
           f"'{seconds} seconds'")
    deadline = time.monotonic() + timeout
    while True:
        probe = as_postgres(["psql", "-h", str(pg_dir), "-p", str(pg_port), "-d", "postgres",
                             "-Atc", sql])
        if probe.stdout.strip() == "1":
            return
        assert time.monotonic() < deadline, f"no query with {marker} ran {seconds} s: {probe}"
        time.sleep(0.1)


def test_rs_diagnose_reports_a_real_database_and_redis_and_the_units(rs_diagnose):
    hs, redis_port, run = rs_diagnose
    with scratch_postgres() as (pg_dir, pg_port), scratch_redis(redis_port, "1mb"):
        missing = facts(run(pg_dir, pg_port))
        assert missing["db_ready"] == [["yes"]] and missing["db_present"] == [["no"]]
        create = ["psql", "-h", str(pg_dir), "-p", str(pg_port), "-d", "postgres", "-c",
                  f"CREATE DATABASE {hs.stack.postgres.database}"]
        assert as_postgres(create).returncode == 0
        # A query running for longer than status.slow_query_seconds (1 s here).
        sleeper = subprocess.Popen(["runuser", "-u", "postgres", "--", "psql", "-h", str(pg_dir),
                                    "-p", str(pg_port), "-d", "postgres", "-c",
                                    "SELECT pg_sleep(20) AS slow_marker"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until_running_for(pg_dir, pg_port, "slow_marker", seconds=2)
            found = facts(run(pg_dir, pg_port))
        finally:
            sleeper.kill()
    assert found["db_present"] == [["yes"]]
    used, limit = map(int, found["db_connections"][0])
    assert 1 <= used < limit == 100  # the sleeper at least; the server's max_connections
    [slow] = found["slow_query"]
    assert int(slow[1]) >= 2 and slow[2] == "postgres" and "pg_sleep(20) AS slow_marker" in slow[3]
    used, maxmemory = map(int, found["redis_memory"][0])
    assert maxmemory == 2**20 and 0 < used  # through the password file, not a command line
    assert found["clock"][0][1] == "container"
    services = {values[0]: values[1:] for values in found["service"]}
    assert services["celery-worker"] == ["1", "yes"] and services["redis"] == ["2", "no"]
    assert services["backend"] == ["0", "no"] and "frontend" not in services  # PM2: rs-status


def test_rs_diagnose_says_a_stopped_database_does_not_answer(rs_diagnose):
    hs, redis_port, run = rs_diagnose
    with tempfile.TemporaryDirectory() as nothing:
        found = facts(run(Path(nothing), free_port()))
    assert found["db_ready"][0][0] == "no" and "db_present" not in found
    assert found["redis_ready"][0][0] == "no"  # nothing on its port either


def advisor(name: str = "example_systemd") -> diagnose.Advisor:
    return diagnose.Advisor(load_example(name)["rs1.example.org"], "inv.py")


def judged(output: str, name: str = "example_systemd", offset: float = 0) -> dict[str, diagnose.Finding]:
    return {f.check: f for f in diagnose.parse(advisor(name), output, offset)}


def test_findings_name_the_problem_and_what_to_do_on_which_host():
    found = judged("fact\tdb_ready\tno\t/var/run/postgresql:5432 - no response\n"
                   "fact\tredis_memory\t1040000\t1048576\n"
                   "fact\tservice\tcelery-worker\t0\tyes\n"
                   "fact\tservice\tbackend\t3\tno\n"
                   "fact\tservice\tnginx\t0\tno\n"
                   "fact\tclock\t1700000000\tcontainer\n"
                   "check\tDisk\t/var/lib/residency-scheduler/backups\tdown\t15M used, 0 free (100% full)\t\t\t\n")
    db = found["db"]
    assert (db.level, db.detail) == ("problem", "not accepting connections "
                                                "(/var/run/postgresql:5432 - no response)")
    assert db.remedy.startswith("start it: rsdeploy start db --host rs1.example.org -i inv.py")
    assert "rsdeploy logs db --tail 100 --host rs1.example.org" in db.remedy
    assert found["redis memory"].level == "problem" and "maxmemory 1 MiB" in found["redis memory"].detail
    assert "OOM" in found["celery-worker"].detail and "memory limit" in found["celery-worker"].remedy
    assert found["backend"].level == "warn" and "restarted 3 time(s)" in found["backend"].detail
    assert "nginx" not in found  # nothing to say about a service that never restarted
    assert found["clock"].level == "ok"
    disk = found["/var/lib/residency-scheduler/backups"]
    assert disk.level == "problem" and "free space" in disk.remedy


@pytest.mark.parametrize(("used", "level"), [(79, "ok"), (85, "warn"), (97, "problem")])
def test_database_connections_are_judged_against_max_connections(used, level):
    finding = judged(f"fact\tdb_connections\t{used}\t100\n")["db connections"]
    assert finding.level == level and finding.detail == f"{used} of max_connections 100"
    assert bool(finding.remedy) == (level != "ok")


def test_a_clock_off_this_machines_is_a_problem_and_an_unsynchronised_one_a_warning():
    assert judged("fact\tclock\t1\tsynced\n", offset=-42)["clock"].level == "problem"
    unsynced = judged("fact\tclock\t1\tunsynced\n")["clock"]
    assert unsynced.level == "warn" and "timesyncd" in unsynced.remedy


def test_native_unit_and_pm2_names_become_the_services_people_type():
    advise = advisor("example_systemd")
    assert advise.service("residency-backend@green.service") == "backend"
    assert advise.service("postgresql@15-main.service") == "db"
    assert advise.service("residency-frontend-blue") == "frontend"
    assert advisor("example_docker").service("celery-beat") == "celery-beat"
    check = status.Check("rs1.example.org", "Units", "redis-server.service", "down", "inactive")
    finding = diagnose.from_status(check, advise)
    assert (finding.check, finding.level) == ("redis", "problem")
    assert "rsdeploy start redis --host rs1.example.org" in finding.remedy


def test_the_table_puts_problems_first_and_counts_every_check():
    findings = [diagnose.Finding("a", "db", "ok", "accepting connections"),
                diagnose.Finding("a", "backend", "warn", "restarted 1 time(s)", "read why"),
                diagnose.Finding("b", "db", "problem", "not accepting connections", "start it")]
    text = diagnose.table(findings).splitlines()
    assert text[0].startswith("PROBLEM  b  db: not accepting") and text[1].endswith("-> start it")
    assert text[2].startswith("WARN     a  backend")
    assert text[-1] == "1 problem(s), 1 warning(s), 1 check(s) ok on 2 host(s)"


def test_an_unreachable_host_is_one_problem_saying_so():
    hs = unreachable(load_example("example_docker")["rs1.example.org"])
    [finding] = diagnose.read_host(hs, "inv.py", host_status.STATUS_PATH, host_status.DIAGNOSE_PATH)
    assert finding.level == "problem" and finding.check == "host"
    assert diagnose.problems([finding]) == [finding]
