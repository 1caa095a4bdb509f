"""Releases without a host: the history's records and the rollback target read from them, the
deploy lock's shell (run here, in bash, as the host runs it), what a refused release tells the
operator, and the web server's traffic pins. The switch itself runs on sandbox hosts
(tests/e2e/test_docker_releases.py)."""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time

import pytest
import yaml

from rsdeploy.roles import backend, nginx
from rsdeploy import cli, lock, release, remote
from rsdeploy.cli import RELEASE_REFUSED, summary, summary_line
from rsdeploy.lock import HostLock, HostLocked
from rsdeploy.stack import release as switch
from rsdeploy.stack import load_inventory, render_host
from rsdeploy.stack.systemd.release import Instance as SdInstance
from rsdeploy.stack.systemd.release import SystemdReleaseHost
from tests.conftest import EXAMPLE_SECRETS, INVENTORIES, load_example
from tests.test_nginx import directive, servers


def attempt(version: str, result: str | None, started: str, kind: str = "deploy") -> dict:
    return {"version": version, "result": result, "started": started, "kind": kind,
            "who": "ana@laptop", "ended": None if result is None else started}


def lines(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# --- history -------------------------------------------------------------------------------------


def test_an_attempt_written_at_start_and_end_counts_once_and_one_cut_off_stays_unfinished():
    begun = attempt("v1.1.0", None, "2026-11-30T10:00:00Z")
    text = lines(begun, {**begun, "result": "ok"}, attempt("v1.2.0", None, "2026-11-30T11:00:00Z"))
    history = release.parse_history(text + '{"version": "v1.3')  # a torn last line
    assert [(a["version"], a["result"]) for a in history] == [("v1.1.0", "ok"), ("v1.2.0", None)]


@pytest.mark.parametrize("results, expected", [
    ([("v1.0.0", "ok"), ("v1.1.0", "ok")], "v1.0.0"),
    ([("v1.0.0", "ok"), ("v1.1.0", "ok"), ("v1.2.0-broken", "failed")], "v1.0.0"),
    ([("v1.0.0", "ok"), ("v1.1.0", "ok"), ("v1.0.0", "ok")], "v1.1.0"),  # after a rollback
    ([("v1.0.0", "ok"), ("v1.0.0", "ok")], None),  # only ever one release
    ([("v1.0.0", "failed")], None),
])
def test_rollback_goes_back_to_the_last_good_release_before_the_serving_one(results, expected):
    history = [attempt(v, r, f"2026-11-30T1{i}:00:00Z") for i, (v, r) in enumerate(results)]
    assert release.previous_good(history) == expected


def test_the_table_lists_the_newest_attempt_first_with_its_reason():
    history = [attempt("v1.0.0", "ok", "2026-11-30T10:00:00Z"),
               {**attempt("v1.2.0-broken", "failed", "2026-11-30T11:00:00Z"),
                "reason": "backend: /health answered 503"}]
    rows = release.table(history, "rs1").splitlines()
    assert rows[0].split()[:5] == ["HOST", "STARTED", "KIND", "VERSION", "RESULT"]
    assert rows[1].split()[3:5] == ["v1.2.0-broken", "failed"]
    assert rows[1].endswith("backend: /health answered 503")
    assert rows[2].split()[3:5] == ["v1.0.0", "ok"]


def test_who_names_the_ci_job_from_the_ci_environment():
    assert release.who({"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "ops/rs",
                        "GITHUB_RUN_ID": "7", "GITHUB_ACTOR": "ana"}) == "github ops/rs run 7 (ana)"
    assert release.who({"GITLAB_CI": "true", "CI_PROJECT_PATH": "ops/rs", "CI_JOB_ID": "42",
                        "GITLAB_USER_LOGIN": "bo"}) == "gitlab ops/rs job 42 (bo)"
    assert "@" in release.who({})


def test_an_attempt_reaches_the_history_as_one_quoted_json_line(tmp_path, monkeypatch):
    hs = next(iter(load_example("example_docker").values()))
    monkeypatch.setattr(release, "history_file", lambda hs: f"{tmp_path}/releases/history.jsonl")
    record = release.Attempt(version="v1.1.0", kind="deploy", who="ana's laptop; rm -rf /",
                             started=release.now())
    for _ in range(2):
        subprocess.run(["bash", "-c", release.append_command(hs, record)], check=True)
    (read,) = release.parse_history((tmp_path / "releases/history.jsonl").read_text())
    assert read["who"] == "ana's laptop; rm -rf /"


# --- the deploy lock, its shell run here as the host runs it -------------------------------------


@pytest.fixture
def local_lock(monkeypatch, tmp_path):
    """The lock's shell runs in bash on this machine (no SSH), in a private directory."""
    monkeypatch.setattr(lock, "LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(lock, "ssh_argv", lambda hs, command: ["bash", "-c", command])
    return next(iter(load_example("example_docker").values()))


def test_a_held_lock_refuses_at_once_naming_its_holder(local_lock):
    holder = {"who": "ana@laptop", "action": "deploying", "version": "v1.1.0", "message": "hotfix"}
    with HostLock(local_lock, holder):
        started = time.monotonic()
        with pytest.raises(HostLocked) as refused:
            HostLock(local_lock, {"who": "bo@ci", "version": "v1.2.0"}).__enter__()
        assert time.monotonic() - started < 5
    assert refused.value.exit_code == lock.LOCK_HELD == 4
    assert "ana@laptop since 20" in str(refused.value) and "deploying v1.1.0 ('hotfix')" in str(
        refused.value)
    with HostLock(local_lock, {"who": "bo@ci"}):  # freed when its holder ended
        pass


def test_a_waiting_run_takes_the_lock_when_the_holder_ends(local_lock):
    first = HostLock(local_lock, {"who": "ana@laptop"}).__enter__()
    threading.Timer(2, first.__exit__).start()
    started = time.monotonic()
    with HostLock(local_lock, {"who": "bo@ci"}, wait=30):
        assert 1.5 < time.monotonic() - started < 20


def test_a_record_left_without_a_lock_is_reported_stale_and_replaced(local_lock):
    _, info = lock.paths(local_lock)
    with open(info, "w") as stale:
        stale.write(json.dumps({"who": "gone@crashed", "since": "2026-11-30T09:00:00Z", "pid": 1}))
    with HostLock(local_lock, {"who": "bo@ci"}) as held:
        assert "stale lock record" in held.notes[0] and "gone@crashed" in held.notes[0]


def test_break_lock_stops_a_hung_holder(local_lock):
    hung = HostLock(local_lock, {"who": "ana@hung"}).__enter__()
    with HostLock(local_lock, {"who": "bo@ci"}, break_lock=True):
        pass
    hung.__exit__()


def test_the_lock_runs_as_root_through_sudo_for_another_login():
    hs = next(iter(load_example("example_docker").values()))  # logs in as deploy
    assert hs.login_user == "deploy"
    argv = remote.ssh_argv(hs, "flock -n 9")
    assert argv[0] == "ssh" and argv[-1].startswith("sudo -n sh -c ")
    assert "BatchMode=yes" in argv


# --- what a refused release tells the operator ---------------------------------------------------

MIGRATION_OUTPUT = """\
INFO  [alembic.runtime.migration] Running upgrade 0002 -> 0003, wards
Traceback (most recent call last):
  File "/opt/venv/lib/python3.11/site-packages/sqlalchemy/engine/base.py", line 2143, in x
    cursor.execute(statement, parameters)
sqlalchemy.exc.IntegrityError: (psycopg2.errors.NotNullViolation) null value in column "name"
DETAIL:  Failing row contains (2, W2, null).

(Background on this error at: https://sqlalche.me/e/20/gkpj)
"""


def test_a_failed_migration_is_summed_up_by_its_database_error_not_a_help_link():
    assert switch._tail(MIGRATION_OUTPUT, 1).startswith(
        "sqlalchemy.exc.IntegrityError: (psycopg2.errors.NotNullViolation)")
    block = switch._readable(MIGRATION_OUTPUT)
    assert block[0].endswith("Running upgrade 0002 -> 0003, wards")
    assert "Traceback (most recent call last):" not in block and "DETAIL:" in block[2]


@pytest.mark.parametrize("output, revision", [
    ("INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.\n0002 (head)\n", "0002"),
    ("3f2a9c1b7d4e (effective head)\n", "3f2a9c1b7d4e"),
    ("INFO  [alembic.runtime.migration] Will assume transactional DDL.\n", None),
])
def test_the_revision_is_read_from_alembic_output(output, revision):
    assert switch._revision(output) == revision


def test_a_refused_release_ends_with_exit_3_and_its_reason_in_the_summary():
    args = argparse.Namespace(command="deploy", inventory="inv.py", version="v1.2.0-broken",
                              host=None, selected_hosts=["rs1"])
    reason = "v1.2.0-broken failed its health check on rs1: backend: /health answered 503"
    report = summary(args, RELEASE_REFUSED, 34, reason)
    assert report["result"] == "release refused, rolled back" and report["exit_code"] == 3
    assert summary_line(report) == ("rsdeploy: deploy v1.2.0-broken on rs1: release refused, "
                                    f"rolled back in 34 s: {reason}")


# --- readiness: not yet, wrong, start periods --------------------------------------------------


def test_not_yet_counts_only_after_the_start_period():
    gate = release.Readiness(start_period=90, retries=3)
    # beat writing no schedule file for 85 s (the real one: 27 s) is still starting
    assert not any(gate.failed(release.NOT_YET, seconds) for seconds in range(0, 88, 3))
    assert gate.failures == 0
    assert [gate.failed(release.NOT_YET, seconds) for seconds in (90, 93, 96)] == [False, False, True]


def test_a_wrong_answer_counts_at_once_and_ends_the_start_period():
    gate = release.Readiness(start_period=120, retries=3)
    assert not gate.failed(release.WRONG, 10)  # it answered: it has started
    assert not gate.failed(release.NOT_YET, 13)  # its start period is over: this counts too
    assert gate.failed(release.WRONG, 16)


def test_a_ready_answer_starts_the_count_again():
    gate = release.Readiness(start_period=0, retries=3)
    for verdict in (release.WRONG, release.WRONG, release.READY, release.WRONG, release.WRONG):
        assert not gate.failed(verdict, 30)
    assert gate.failed(release.WRONG, 33)


@pytest.fixture(scope="module")
def http_app():
    """A real HTTP server on loopback: /health answers 200, /broken 503 with a body."""
    import http.server
    import socketserver

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/health"
            body = b'{"status": "healthy"}' if ok else b'{"status": "unhealthy", "database": "x"}'
            self.send_response(200 if ok else 503)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = socketserver.TCPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def local_shell(command: str) -> tuple[bool, str]:
    """The probes' shell, run here in bash as a host runs it."""
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    return proc.returncode == 0, proc.stdout + proc.stderr


def closed_port() -> str:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed once the socket is


def test_http_probe_tells_ready_from_not_yet_from_wrong(http_app):
    assert release.HttpProbe(8000, "/health").ask(local_shell, http_app, 5) == (release.READY, "")
    verdict, detail = release.HttpProbe(8000, "/broken").ask(local_shell, http_app, 5)
    assert verdict == release.WRONG and detail.startswith('/broken answered 503 ({"status": "unhealthy"')
    assert release.HttpProbe(8000, "/health").ask(local_shell, closed_port(), 5) == \
        (release.NOT_YET, "connection refused")


def local_exec(argv: list[str]) -> tuple[bool, str]:
    """A layout's exec, here: the argv run in this machine's shell environment."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    return proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script, expected", [
    ("echo pong", (release.READY, "")),
    ("echo 'Error: No nodes replied within time constraint' >&2; exit 69",
     (release.NOT_YET, "Error: No nodes replied within time constraint")),
    ("ls /nonexistent/schedule* >/dev/null", None),  # ls: exit 2, in not_yet
    ("echo 'ImportError: cannot import name x'; exit 1",
     (release.WRONG, "ImportError: cannot import name x")),
    ("sleep 5", (release.NOT_YET, "no answer in 1 s")),
], ids=["ready", "no-node-replied", "no-schedule-yet", "broken", "timed-out"])
def test_command_probe_tells_ready_from_not_yet_from_wrong(script, expected):
    probe = release.CommandProbe(("sh", "-c", script), "test", not_yet=(69, 2))
    verdict, detail = probe.ask(local_exec, 1)
    if expected is None:
        assert verdict == release.NOT_YET and "No such file or directory" in detail
    else:
        assert (verdict, detail) == expected


def test_beat_is_ready_once_a_process_holds_its_schedule_open_not_when_an_old_one_lies_there(
        tmp_path):
    """Natively the schedule file outlives each beat (and beat writes it only when it stops):
    the file alone says nothing of the new beat; a process holding it open does. The role's
    own probe, its path moved to a temporary directory."""
    hs = next(iter(load_example("example_systemd").values()))
    probe = next(u.probe for u in backend.release_units(hs) if u.service.endswith("celery-beat"))
    schedule = tmp_path / "celerybeat-schedule"
    here = release.CommandProbe(tuple(arg.replace(backend.beat_schedule(hs), str(schedule))
                                      for arg in probe.argv), probe.what, probe.not_yet)
    (tmp_path / "celerybeat-schedule.db").write_text("left by the beat before")
    verdict, detail = here.ask(local_exec, 5)
    assert (verdict, detail) == (release.NOT_YET, "no process holds its schedule file open yet")
    beat = subprocess.Popen(["python3", "-c", f"import time; f = open({str(schedule) + '.db'!r}); "
                             "time.sleep(30)"])
    try:
        for _ in range(50):  # until it has opened the file
            if here.ask(local_exec, 5)[0] == release.READY:
                break
            time.sleep(0.1)
        assert here.ask(local_exec, 5) == (release.READY, "")
    finally:
        beat.kill()


# --- crash loops ---------------------------------------------------------------------------------

#: What the reference app's backend logs with REFAPP_METRICS_CRASH and two uvicorn workers
#: (taken from the container, its tracebacks cut short): each worker fails at start-up, the
#: master starts new ones.
UVICORN_LOOP = """\
INFO:     Uvicorn running on http://0.0.0.0:8000 (Press CTRL+C to quit)
INFO:     Started parent process [1]
Process SpawnProcess-1:
Traceback (most recent call last):
  File "/opt/venv/lib/python3.11/site-packages/starlette/applications.py", line 106, in add_middleware
    raise RuntimeError("Cannot add middleware after an application has started")
RuntimeError: Cannot add middleware after an application has started
Process SpawnProcess-2:
Traceback (most recent call last):
RuntimeError: Cannot add middleware after an application has started
INFO:     Child process [8] died
INFO:     Child process [9] died
Process SpawnProcess-3:
Traceback (most recent call last):
RuntimeError: Cannot add middleware after an application has started
INFO:     Child process [12] died
"""
#: systemd restarting a one-process unit (``journalctl -o cat``), with ``NRestarts`` 3.
SYSTEMD_LOOP = """\
ERROR:    Error loading ASGI app. Could not import module "app.mian".
residency-backend@green.service: Main process exited, code=exited, status=3/NOTIMPLEMENTED
residency-backend@green.service: Failed with result 'exit-code'.
residency-backend@green.service: Scheduled restart job, restart counter is at 1.
Started residency-backend@green.service - Residency Scheduler API (uvicorn), release slot green.
ERROR:    Error loading ASGI app. Could not import module "app.mian".
"""
#: PM2's files (``time: true``) for a Next.js server that throws at start.
PM2_LOOP = """\
2026-02-20T10:00:01: Error: Cannot find module '/opt/rs/slots/green/frontend/server.js'
2026-02-20T10:00:01:     at Module._resolveFilename (node:internal/modules/cjs/loader:1134:15)
2026-02-20T10:00:02: Error: Cannot find module '/opt/rs/slots/green/frontend/server.js'
"""


def test_a_crash_loop_under_a_live_master_is_named_by_its_repeated_error():
    assert release.crash_loop(0, UVICORN_LOOP, 14.2) == (
        "crash loop: RuntimeError: Cannot add middleware after an application has started (3 "
        "times in the 14 s since it started)")


def test_children_killed_without_a_word_make_a_crash_loop_too():
    """uvicorn's workers OOM-killed one after the other: no exception, only the master's note."""
    killed = "INFO:     Started parent process [1]\n" + "INFO:     Child process [7] died\n" * 3
    assert release.crash_loop(0, killed, 12) == ("crash loop: its processes restarted 3 times in "
                                                "the 12 s since it started")


def test_restarts_by_the_supervisor_make_a_crash_loop_named_by_the_failure_line():
    assert release.crash_loop(2, SYSTEMD_LOOP, 20) is None  # not yet three
    assert release.crash_loop(3, SYSTEMD_LOOP, 30) == (
        'crash loop: Error loading ASGI app. Could not import module "app.mian". (2 times in the '
        '30 s since it started)')
    assert release.crash_loop(3, PM2_LOOP, 9) == (
        "crash loop: Error: Cannot find module '/opt/rs/slots/green/frontend/server.js' (2 times "
        "in the 9 s since it started)")
    assert release.crash_loop(4, "", 8) == ("crash loop: its processes restarted 4 times in the "
                                            "8 s since it started")


def test_a_pm2_app_is_judged_by_its_lines_since_the_switch_started_it(tmp_path):
    """PM2 appends to one file per slot across releases: only the lines stamped since the
    switch started the app count (the host's shell, run here; no PM2 here: 0 restarts)."""
    hs = next(iter(load_inventory(str(INVENTORIES / "example_systemd.py"), EXAMPLE_SECRETS, env={},
                                  override_data={"paths": {"log_dir": str(tmp_path)}}).values()))
    (tmp_path / "frontend-green-error.log").write_text(
        "2026-02-20T09:00:00: Error: an older release's failure\n" * 5 + PM2_LOOP)
    rh = SystemdReleaseHost(hs, local_shell)
    app = rh.frontend
    rh.clock[app] = "1771578000 2026-02-20T10:00:00"
    instance = SdInstance(name="residency-frontend-green", service=app, slot="green",
                          state="running", image="", image_id="", revision="", since=0)
    restarts, log = rh.since_start(instance)
    assert restarts == 0 and log == PM2_LOOP


def test_a_starting_app_is_no_crash_loop():
    starting = ("[2026-02-20 10:00:00,001: ERROR/MainProcess] consumer: Cannot connect to "
                "redis://:**@redis:6379/0: Error 111 connecting. Trying again in 2.00 seconds...\n") * 5
    starting += "INFO:     Waiting for application startup.\nRuntimeError: once: a warning shown\n"
    assert release.crash_loop(0, starting, 60) is None
    assert release.crash_loop(0, UVICORN_LOOP.split("Process SpawnProcess-3")[0], 9) is None


def test_a_refused_first_release_says_nothing_serves():
    first = {"host": "rs1", "version": "v1.0.0", "reason": "backend: crash loop", "serving": None}
    reason, result = cli.refusal([first])
    assert result == "release refused, nothing serves"
    assert reason == "backend: crash loop (nothing serves on rs1: no release served there before)"
    later = {**first, "host": "rs2", "serving": "v0.9.0"}
    reason, result = cli.refusal([first, later])
    assert result == "release refused, rolled back"
    assert reason.endswith("(the previous release v0.9.0 keeps serving on rs2)")


# --- traffic pins ----------------------------------------------------------------------------------


def test_the_pins_name_each_target_quoted_for_nginx():
    text = nginx.traffic_pins({"frontend": "rs-frontend-2:3000", "backend": "rs-backend-2:8000"})
    assert text.splitlines()[-2:] == ['set $rs_backend "rs-backend-2:8000";',
                                     'set $rs_frontend "rs-frontend-2:3000";']
    with pytest.raises(ValueError):
        nginx.traffic_pins({"backend": "$host:8000"})


def https_server(hs) -> list:
    """The site's HTTPS server block as written (includes not inlined)."""
    blocks, _ = servers(hs)
    return next(b for b in blocks if directive(b, "ssl_certificate"))


def test_the_docker_site_reads_the_pins_after_its_defaults():
    server = https_server(next(iter(load_example("example_docker").values())))
    pins = [i for i, (name, args, _) in enumerate(server)
            if name == "include" and args == [f"{nginx.CONTAINER_TRAFFIC_DIR}/*.conf"]]
    defaults = [i for i, (name, args, _) in enumerate(server)
                if name == "set" and args[0].startswith("$rs_")]
    assert len(pins) == 1 and len(defaults) == 2 and max(defaults) < pins[0]


def test_the_docker_web_service_mounts_the_pins_read_only():
    hs = next(iter(load_example("example_docker").values()))
    web = next(f for f in render_host(hs) if f.path.endswith("/compose.web.yml"))
    volumes = yaml.safe_load(web.content)["services"]["nginx"]["volumes"]
    assert f"{nginx.host_traffic_dir(hs)}:{nginx.CONTAINER_TRAFFIC_DIR}:ro" in volumes


# --- rollback's default target ------------------------------------------------------------------


def run_rollback(monkeypatch, capsys, histories: dict[str, list]) -> tuple[int, str]:
    """``rsdeploy rollback`` on the multi-host example, each host's history as given."""
    monkeypatch.setattr(cli, "host_history",
                        lambda selected: {name: histories.get(name, []) for name in selected})
    code = cli.main(["rollback", "-i", str(INVENTORIES / "example_multi.py"),
                     "--secrets", EXAMPLE_SECRETS])
    return code, capsys.readouterr().err


def test_rollback_without_an_earlier_release_is_refused_before_any_change(monkeypatch, capsys):
    code, err = run_rollback(monkeypatch, capsys, {})
    assert code == 2 and "no earlier successful release in its history" in err
    assert "--to TAG" in err and len(err.strip().splitlines()) == 1


def test_rollback_is_refused_when_the_hosts_would_go_back_to_different_releases(monkeypatch, capsys):
    hosts = list(load_example("example_multi"))
    ok = [attempt("v1.0.0", "ok", "2026-11-30T10:00:00Z"),
          attempt("v1.1.0", "ok", "2026-11-30T11:00:00Z")]
    other = [attempt("v0.9.0", "ok", "2026-11-30T09:00:00Z"),
             attempt("v1.1.0", "ok", "2026-11-30T11:00:00Z")]
    apps = [name for name in hosts if name.startswith("app")]  # only app hosts have releases
    code, err = run_rollback(monkeypatch, capsys, {apps[0]: other, apps[1]: ok})
    assert code == 2 and "the hosts' previous releases differ" in err and "v0.9.0" in err
    assert "db1" not in err


# --- several app hosts: turns ----------------------------------------------------------------


def app_hosts_of_multi(wave: int) -> list:
    hosts = load_inventory(str(INVENTORIES / "example_multi.py"), EXAMPLE_SECRETS, env={},
                           override_data={"release_wave": wave})
    return [hs for hs in hosts.values() if hs.has_role("app")]


def test_app_hosts_take_turns_and_a_refusal_stops_the_later_waves():
    import gevent

    app1, app2 = app_hosts_of_multi(1)
    turns, active = switch.Turns(), {app1.name, app2.name}
    turns.runs = {app1.name: lambda: True, app2.name: lambda: True}
    second = gevent.spawn(turns.wait, app2, active)
    gevent.sleep(0.05)
    assert not second.ready()  # app1 is still switching
    turns.refused[app1.name] = "v1.2.0-broken failed its health check"
    turns.event(app1.name).set()
    assert second.get(timeout=1) == app1.name  # the rollout stops at app1


def test_a_host_whose_switch_does_not_run_holds_no_one_up():
    app1, app2 = app_hosts_of_multi(1)
    turns = switch.Turns()
    turns.runs = {app1.name: lambda: False, app2.name: lambda: True}  # app1 serves it already
    assert turns.wait(app2, {app1.name, app2.name}) is None
    turns.runs[app1.name] = lambda: True  # due, but out of the run (failed an earlier step)
    assert turns.wait(app2, {app2.name}) is None


def test_a_wave_of_two_switches_together_and_the_last_host_waits_for_its_wave_to_step_down():
    import gevent

    app1, app2 = app_hosts_of_multi(2)
    turns, active = switch.Turns(), {app1.name, app2.name}
    turns.runs = {app1.name: lambda: True, app2.name: lambda: True}
    assert turns.earlier(app2) == [] and turns.wait(app2, active) is None  # one wave
    others = gevent.spawn(turns.wait_for_the_others, app2, active)
    gevent.sleep(0.05)
    assert not others.ready()  # the downgrade waits until app1 has switched too
    turns.event(app1.name).set()
    assert others.get(timeout=1) is None
