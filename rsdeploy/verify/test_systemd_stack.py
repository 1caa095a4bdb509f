"""After every rollout: is each systemd-layout host running what its settings say? The
distribution's units, the app in one release slot of the requested version (units, PM2 app,
nginx's pins), the database and Redis with the app's own credentials, Celery. (The checks of
both layouts: test_stack.py.)
"""

from __future__ import annotations

import json
import shlex

import pytest

from rsdeploy.roles import backend, frontend, nginx
from rsdeploy.stack.systemd.release import SLOTS
from rsdeploy.verify.support import settle


def app_command(hs, slot: str, script: str) -> str:
    """``script`` as the app user with app.env, in ``slot``'s release (as its units run)."""
    release = backend.slot_dir(hs, slot)
    props = [f"User={backend.APP_USER}", f"EnvironmentFile={backend.app_env_path(hs)}",
             f"WorkingDirectory={release}/backend",
             f"Environment=PATH={release}/venv/bin:/usr/bin:/bin",
             f"EnvironmentFile={backend.slot_env_path(hs, slot)}"]
    args = " ".join(f"-p {shlex.quote(p)}" for p in props)
    return (f"systemd-run --quiet --wait --pipe --collect -p Environment=HOSTNAME=$(hostname)-{slot} "
            f"{args} /bin/sh -c {shlex.quote(script)}")


@pytest.fixture(scope="module")
def serving(host, hs, systemd_host):
    """The release slot whose backend runs (exactly one, outside a switch)."""
    if not hs.has_role("app"):
        pytest.skip(f"{hs.name} carries no app role")
    running = [slot for slot in SLOTS
               if host.service(f"residency-backend@{slot}.service").is_running]
    assert len(running) == 1, f"{hs.name}: residency-backend@: expected one slot running, found {running}"
    return running[0]


def test_distribution_units_are_active_and_enabled(host, hs, systemd_host):
    def problems():
        return {unit: ("active" if host.service(unit).is_running else "inactive",
                       "enabled" if host.service(unit).is_enabled else "disabled")
                for unit in hs.layout.services(hs)
                if not (host.service(unit).is_running and host.service(unit).is_enabled)}

    bad = settle(problems, lambda found: not found)
    assert not bad, f"{hs.name}: expected active and enabled, found: {bad}"


def test_the_app_runs_in_one_slot_of_the_requested_release(host, hs, serving):
    release = host.file(backend.slot_dir(hs, serving)).linked_to
    assert release.rsplit("/", 1)[-1].startswith(f"{hs.stack.version}-"), \
        f"{hs.name}: slot {serving}: expected release {hs.stack.version}, found {release}"
    assert host.file(f"{release}/.rsdeploy-built").exists, f"{hs.name}: {release}: not a complete build"
    idle = [slot for slot in SLOTS if slot != serving]
    for unit in backend.app_units(hs):
        name = unit.name.split("@")[0]
        on = host.service(f"{name}@{serving}.service")
        assert on.is_running and on.is_enabled, \
            f"{hs.name}: {name}@{serving}: expected active and enabled (boot)"
        for slot in idle:
            off = host.service(f"{name}@{slot}.service")
            assert not off.is_running and not off.is_enabled, \
                f"{hs.name}: {name}@{slot}: expected stopped and disabled (idle slot)"


def test_pm2_runs_the_frontend_as_the_app_user(host, hs, serving):
    listing = host.run(frontend.pm2_command(hs, "jlist"))
    apps = {app["name"]: app for app in json.loads(listing.stdout[listing.stdout.find("["):] or "[]")}
    name = frontend.app_name(serving)
    assert name in apps and apps[name]["pm2_env"]["status"] == "online", \
        f"{hs.name}: PM2 {name}: expected online, found {sorted(apps)}"
    assert set(apps) == {name}, f"{hs.name}: PM2: expected only {name}, found {sorted(apps)}"
    user = host.check_output("ps -o user= -p %s", str(apps[name]["pid"]))
    assert user == backend.APP_USER, f"{hs.name}: PM2 {name}: expected user {backend.APP_USER}, found {user}"
    # `pm2 save` keeps it for the next boot
    dump = host.file(f"{frontend.pm2_home(hs)}/dump.pm2").content_string
    assert name in dump, f"{hs.name}: PM2's saved list: expected {name}"


def test_nginx_sends_the_traffic_to_the_serving_slot(host, hs, serving):
    if not hs.has_role("web"):
        pytest.skip(f"{hs.name} carries no web role")
    pins = host.file(f"{nginx.host_traffic_dir(hs)}/{nginx.TRAFFIC_FILE}").content_string
    for name, port in (("backend", hs.stack.backend.port), ("frontend", hs.stack.frontend.port)):
        slot_port = backend.slot_ports(hs, port)[serving]
        assert f':{slot_port}";' in pins.split(f"$rs_{name}")[1].split("\n")[0], \
            f"{hs.name}: nginx pins: expected {name} on port {slot_port} (slot {serving}), found {pins}"


def test_database_answers_with_the_apps_credentials(host, hs, serving):
    script = ("python -c \"import os, sqlalchemy; e = sqlalchemy.create_engine("
              "os.environ['DATABASE_URL']); print(e.connect().exec_driver_sql('select 1')"
              ".scalar())\"")
    result = host.run(app_command(hs, serving, script))
    assert result.rc == 0 and result.stdout.strip() == "1", \
        f"{hs.name}: db via the app's DATABASE_URL: expected 1, found {result.stdout}{result.stderr}"


def test_redis_requires_its_password(host, hs, systemd_host):
    if not hs.has_role("redis"):
        pytest.skip(f"{hs.name} runs no Redis")
    anonymous = host.run(f"redis-cli -p {hs.stack.redis.port} ping")
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr, \
        f"{hs.name}: redis without password: expected NOAUTH, found {anonymous.stdout}"


def test_redis_answers_the_apps_own_url(host, hs, serving):
    """The app's REDIS_URL as the app uses it: its password, and TLS verified against the stack
    CA when Redis is on another host."""
    authed = host.run(app_command(hs, serving, "python -c \"import os, redis; "
                                               "print(redis.from_url(os.environ['REDIS_URL']).ping())\""))
    assert authed.stdout.strip() == "True", \
        f"{hs.name}: redis with the app's REDIS_URL: found {authed.stdout}{authed.stderr}"


def test_celery_worker_answers_and_beat_runs_once_per_stack(host, hs, serving):
    ping = host.run(app_command(hs, serving, "celery --app=app.core.celery_app inspect ping "
                                             "--timeout=10 -d celery@$HOSTNAME"))
    assert ping.rc == 0 and "pong" in ping.stdout, \
        f"{hs.name}: celery worker inspect ping: expected pong, found {ping.stdout}{ping.stderr}"
    beats = [slot for slot in SLOTS if host.service(f"residency-celery-beat@{slot}.service").is_running]
    if backend.runs_beat(hs):
        assert beats == [serving], f"{hs.name}: celery beat: expected in slot {serving}, found {beats}"
        schedule = host.run(f"ls {backend.BEAT_SCHEDULE['native']}*")
        assert schedule.rc == 0, f"{hs.name}: celery beat: expected its schedule file, found none"
    else:  # the first app host's: two would send every scheduled task twice
        assert not beats, f"{hs.name}: celery beat: expected none on this app host, found {beats}"


#: Loopback, as ``ss`` shows the addresses a socket listens on.
LOOPBACK = {"127.0.0.1", "::1"}


def listening_addresses(host, port: int) -> set[str]:
    """The addresses something on the host listens on for TCP ``port`` (``ss``; ``*``: all)."""
    lines = host.check_output("ss -Htln sport = :%s", str(port)).splitlines()
    return {line.split()[3].rsplit(":", 1)[0].strip("[]") for line in lines if line.strip()}


def own_internal_services(hs) -> dict[str, tuple[int, set[str]]]:
    """The host's own internal services: name -> (port, where beside loopback it may listen).
    PostgreSQL and Redis also on the private address when an app host is elsewhere (it
    connects over TLS; Redis binds its plain port there too, which the firewall keeps to this
    host); Prometheus and Alertmanager never."""
    s = hs.stack
    shared = {hs.address} if any(app.name != hs.name for app in hs.peers("app")) else set()
    found = {}
    if hs.has_role("db"):
        found["postgres"] = (s.postgres.port, shared)
    if hs.has_role("redis"):
        found["redis"] = (s.redis.port, shared)
    if hs.has_role("monitoring"):
        found.update({name: (getattr(s, name).port, set())
                      for name in ("prometheus", "alertmanager") if getattr(s, name).enabled})
    return found


def test_internal_services_listen_on_loopback_and_only_where_other_hosts_reach_them(
        host, hs, systemd_host):
    """Natively each of the host's own services listens on loopback, and beside it only where
    another host must reach it (see :func:`own_internal_services`): a bind to a private
    address, not only to every interface, fails."""
    wrong = {}
    for name, (port, shared) in own_internal_services(hs).items():
        found = listening_addresses(host, port)
        if "127.0.0.1" not in found or not found <= LOOPBACK | shared:
            wrong[f"{name}:{port}"] = sorted(found)
    assert not wrong, (f"{hs.name}: expected loopback (PostgreSQL and Redis also {hs.address} "
                       f"when an app host is elsewhere), found: {wrong}")
