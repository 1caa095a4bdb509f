"""rs-logs and ``rsdeploy logs``: every source's time read, lines merged across hosts in time
order, ``--since`` applied to file lines; the rendered rs-logs run against stub docker and
journalctl commands (and real files) to show what each layout reads; bad input refused before
any host is contacted. The sandbox end-to-end chains read real logs of both layouts."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from rsdeploy.roles import status
from rsdeploy import cli, logs
from rsdeploy.errors import UserError
from rsdeploy.render import write_tree
from rsdeploy.stack import load_inventory
from tests.conftest import EXAMPLE_SECRETS, INVENTORIES, load_example, unreachable

UTC = timezone.utc
AT = datetime(2026, 12, 1, 4, 5, 6, 123456, UTC)

# Each source's own format, all at AT (nginx's access log two hours ahead, in its zone).
SOURCE_LINES = {
    "docker": "2026-12-01T04:05:06.123456789Z INFO: 10.0.0.9 - \"GET /health HTTP/1.1\" 200",
    "journal": "2026-12-01T04:05:06.123456+00:00 rs1 uvicorn[812]: GET /health 200",
    "postgres": "2026-12-01 04:05:06.123456 UTC [91] LOG:  checkpoint starting: time",
    "nginx error": "2026/12/01 04:05:06 [error] 7#7: *1 connect() failed (111)",
    "nginx access": "10.0.0.9 - - [01/Dec/2026:06:05:06 +0200] \"GET / HTTP/2.0\" 200 612",
    "redis": "5312:M 01 Dec 2026 04:05:06.123456 * Ready to accept connections tcp",
}

STUB_DOCKER = r"""#!/bin/bash
# Stands in for `docker compose ... logs ... SERVICE`: records its arguments, prints two lines.
echo "$*" >> "$STUB_CALLS"
service=${!#}
printf '2026-12-01T04:00:01.000000000Z %s started\n2026-12-01T04:00:02.000000000Z %s GET /ping 200\n' \
    "$service" "$service"
"""
STUB_JOURNALCTL = r"""#!/bin/bash
echo "$*" >> "$STUB_CALLS"
printf '2026-12-01T04:00:03.000000+00:00 rs1 unit[1]: from the journal\n'
if [[ " $* " == *" --follow "* ]]; then  # a reader that waits for more, as journalctl -f does
    echo $$ >> "$STUB_CALLS.followers"
    exec sleep 60
fi
"""


@pytest.mark.parametrize("source", SOURCE_LINES)
def test_each_sources_time_is_read_as_utc(source):
    expected = AT if source not in ("nginx error", "nginx access") else AT.replace(microsecond=0)
    assert logs.line_time(SOURCE_LINES[source]) == expected


def test_pm2_time_and_lines_without_a_time():
    assert logs.line_time("2026-12-01T04:05:06: ready on http://127.0.0.1:3000") == \
        AT.replace(microsecond=0)
    assert logs.line_time("  File \"/app/main.py\", line 3, in <module>") is None
    assert logs.line_time("2026-13-45T99:00:00 not a time") is None


def test_lines_merge_by_time_across_hosts_and_a_traceback_keeps_its_lines_time():
    one = ("backend\t2026-12-01T04:00:03.000000+00:00 rs1 uvicorn[1]: Traceback (most recent)\n"
           "backend\t  File \"/app/main.py\", line 3\n"
           "nginx\t10.0.0.9 - - [01/Dec/2026:04:00:01 +0000] \"GET / HTTP/2.0\" 502 0\n")
    two = "db\t2026-12-01 04:00:02.000 UTC [91] ERROR:  relation \"x\" does not exist\n"
    merged = logs.merge(logs.parse("app1", one) + logs.parse("db1", two))
    assert [(line.host, line.service) for line in merged] == \
        [("app1", "nginx"), ("db1", "db"), ("app1", "backend"), ("app1", "backend")]
    assert merged[3].text.startswith("  File") and merged[3].time == merged[2].time
    rendered = list(logs.render(merged))
    assert rendered[0].startswith("app1  nginx          | 10.0.0.9")
    assert rendered[1].startswith("db1   db             | 2026-12-01 04:00:02")


def test_since_drops_older_lines_that_a_file_gave():
    now = datetime(2026, 12, 1, 5, 0, 0, tzinfo=UTC)
    output = ("nginx\t10.0.0.9 - - [01/Dec/2026:03:00:00 +0000] \"GET /old HTTP/2.0\" 200 1\n"
              "nginx\t10.0.0.9 - - [01/Dec/2026:04:30:00 +0000] \"GET /new HTTP/2.0\" 200 1\n")
    kept = logs.merge(logs.parse("web1", output), "1h", now=now)
    assert [line.text.split('"')[1] for line in kept] == ["GET /new HTTP/2.0"]
    assert logs.since_seconds("2d") == 2 * 86400


@pytest.mark.parametrize("since", ["1 h", "1w", "-1h", "h", "10"])
def test_a_wrong_since_is_refused(since):
    with pytest.raises(UserError, match=r"--since .*: expected a number and s, m, h or d"):
        logs.since_seconds(since)


def test_each_host_is_asked_only_for_the_services_it_runs():
    hosts = load_example("example_multi")
    wanted = logs.services_by_host(hosts, logs.Query(services=("celery-beat", "db")))
    assert wanted == {"db1.example.org": ["db"], "app1.example.org": ["celery-beat"]}
    with pytest.raises(UserError, match=r"no selected host runs celery \(services: .*backend"):
        logs.services_by_host(hosts, logs.Query(services=("celery",)))


def test_native_sources_name_the_journal_units_and_debians_files():
    hs = load_example("example_systemd")["rs1.example.org"]
    sources = hs.layout.log_sources(hs)
    assert sources["backend"] == [logs_source("journal", "residency-backend@*.service")]
    assert logs_source("file", "/var/log/postgresql/postgresql-15-main.log") in sources["db"]
    assert logs_source("file", "/var/log/nginx/access.log") in sources["nginx"]
    assert logs_source("file", "/var/log/redis/redis-server.log") in sources["redis"]
    docker = load_example("example_docker")["rs1.example.org"]
    assert docker.layout.log_sources(docker)["db"] == [logs_source("compose", "db")]
    assert set(docker.layout.log_sources(docker)) == set(docker.layout.services(docker))


def logs_source(kind: str, target: str):
    from rsdeploy.layout import LogSource
    return LogSource(kind, target)


def rs_logs(tmp_path, name: str, **override):
    """The host's rendered rs-logs, its stub commands on PATH, and a runner."""
    hs = load_inventory(str(INVENTORIES / f"{name}.py"), EXAMPLE_SECRETS, env={},
                        override_data=override)["rs1.example.org"]
    write_tree(status.render(hs), tmp_path / "tree")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command, text in (("docker", STUB_DOCKER), ("journalctl", STUB_JOURNALCTL)):
        (bin_dir / command).write_text(text)
        (bin_dir / command).chmod(0o755)
    calls = tmp_path / "calls"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_CALLS=str(calls))
    script = tmp_path / "tree" / status.LOGS_PATH.lstrip("/")

    def run(*args: str) -> subprocess.CompletedProcess:
        calls.write_text("")
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                              env=env, timeout=30, stdin=subprocess.DEVNULL)
    run.start = lambda *args: subprocess.Popen(  # type: ignore[attr-defined]
        ["bash", str(script), *args], env=env, text=True, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, start_new_session=True)
    return run, calls


def test_rs_logs_reads_each_compose_service_with_times(tmp_path):
    run, calls = rs_logs(tmp_path, "example_docker", paths={"base_dir": str(tmp_path)})
    result = run("--porcelain", "--since", "2h", "--grep", "ping", "backend", "nginx")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "backend\t2026-12-01T04:00:02.000000000Z backend GET /ping 200",
        "nginx\t2026-12-01T04:00:02.000000000Z nginx GET /ping 200"]
    backend_call = calls.read_text().splitlines()[0]
    assert " logs --no-color --no-log-prefix --timestamps --since " in backend_call
    since = int(backend_call.split("--since ")[1].split()[0])
    now = datetime.now(UTC).timestamp()
    assert now - 7200 - 5 < since <= now - 7200 + 1  # an epoch: Docker and journalctl agree
    assert backend_call.endswith(" backend") and "--tail" not in backend_call


def test_rs_logs_refuses_an_unknown_service_and_a_wrong_since(tmp_path):
    run, _ = rs_logs(tmp_path, "example_docker")
    unknown = run("celery")
    assert unknown.returncode == 2 and "services here: db redis backend" in unknown.stderr
    wrong = run("--since", "yesterday")
    assert wrong.returncode == 2 and "--since yesterday" in wrong.stderr


def test_rs_logs_natively_reads_the_journal_and_pm2s_files(tmp_path):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "frontend-blue.log").write_text("2026-12-01T04:00:00: ready\nold\n")
    (log_dir / "frontend-blue-error.log").write_text("2026-12-01T04:00:05: boom\n")
    run, calls = rs_logs(tmp_path, "example_systemd", paths={"log_dir": str(log_dir)})
    result = run("--tail", "1", "frontend", "backend")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "backend        | 2026-12-01T04:00:03.000000+00:00 rs1 unit[1]: from the journal" in lines
    assert {"frontend       | old", "frontend       | 2026-12-01T04:00:05: boom"} <= set(lines)
    assert "--output short-iso-precise --unit residency-backend@*.service --lines 1" in \
        calls.read_text()


def test_rs_logs_follows_line_by_line_and_stops_its_readers_when_its_input_ends(tmp_path):
    run, calls = rs_logs(tmp_path, "example_systemd")
    following = run.start("--follow", "--porcelain", "--tail", "0", "backend", "celery-worker")
    try:
        ready, _, _ = select.select([following.stdout], [], [], 5)
        assert ready, "no line within 5 s: a reader's line is held back in a pipe"
        first = following.stdout.readline()
        assert first.split("\t")[0] in ("backend", "celery-worker"), first
        assert first.split("\t")[1].startswith("2026-12-01T04:00:03"), first
        following.stdin.close()  # what rsdeploy logs does when it stops following
        assert following.wait(timeout=10) == 0
    finally:
        if following.poll() is None:
            os.killpg(following.pid, signal.SIGKILL)
    followers = Path(f"{calls}.followers").read_text().split()
    assert len(followers) == 2
    alive = still_running(followers)
    assert not alive, f"readers left running: {alive}"


def _running(pid: str) -> bool:
    """Whether the process runs (a zombie waiting for its reaper has ended)."""
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" not in status.read_text()


def still_running(pids: list[str], timeout: float = 10) -> list[str]:
    """Those of ``pids`` still running once all have ended or ``timeout`` s have passed (a
    signalled process ends a moment after the signal: wait for that, not a fixed time)."""
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def test_rsdeploy_logs_refuses_bad_input_before_contacting_a_host(capsys):
    inventory = str(INVENTORIES / "example_docker.py")
    for argv, message in ((["--since", "5x"], "--since 5x: expected"),
                          (["celery"], "no selected host runs celery"),
                          (["--tail", "-3"], "--tail -3: expected 0 or more")):
        code = cli.main(["logs", "-i", inventory, "--secrets", str(EXAMPLE_SECRETS), *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, err


def test_rsdeploy_logs_names_a_host_that_does_not_answer():
    hs = load_example("example_docker")["rs1.example.org"]
    gone = unreachable(hs)
    lines, failed = logs.read({hs.name: gone}, logs.Query(), status.LOGS_PATH)
    assert lines == [] and failed[hs.name].startswith("not reached over SSH"), failed
    assert "refused" in failed[hs.name]


def test_the_merged_order_is_the_order_in_time_not_the_hosts():
    base = datetime(2026, 12, 1, 4, 0, 0, tzinfo=UTC)
    lines = [logs.Line(host, "backend", base + timedelta(seconds=seconds), str(seconds))
             for host, seconds in (("b", 3), ("a", 1), ("b", 2))]
    assert [line.text for line in logs.merge(lines)] == ["1", "2", "3"]
