"""After every rollout: is each docker-layout host running what its settings say? (The checks of
both layouts: test_stack.py.)

Every failure names the host, the service, what was expected and what was found.
"""

from __future__ import annotations

import shlex

import pytest

from rsdeploy.roles import backend, nginx
from rsdeploy.stack import release as releases
from rsdeploy.verify.support import settle


def test_docker_engine_runs(host, hs, docker_stack):
    assert host.service("docker").is_running, f"{hs.name}: docker: expected running, found stopped"


def test_every_service_is_running_and_healthy(hs, docker_stack):
    def problems():
        found = docker_stack.containers()
        bad = {}
        for service in hs.layout.services(hs):
            row = found.get(service)
            state = "missing" if row is None else row["State"] + " " + row["Status"]
            if row is None or row["State"] != "running" or "unhealthy" in row["Status"] \
                    or "health: starting" in row["Status"]:
                bad[service] = state
        return bad

    bad = settle(problems, lambda found: not found)
    assert not bad, f"{hs.name}: expected running and healthy, found: {bad}"


def test_database_answers_with_the_apps_credentials(hs, docker_stack):
    """Upstream /health does not check the database, so ask it with the app's own settings."""
    if not hs.has_role("app"):
        pytest.skip(f"{hs.name} carries no app role")
    script = ("python -c \"import os, sqlalchemy; e = sqlalchemy.create_engine("
              "os.environ['DATABASE_URL']); print(e.connect().exec_driver_sql('select 1')"
              ".scalar())\"")
    result = docker_stack.exec("backend", script)
    assert result.rc == 0 and result.stdout.strip() == "1", \
        f"{hs.name}: db via backend's DATABASE_URL: expected 1, found {result.stdout}{result.stderr}"


def test_redis_requires_its_password(hs, docker_stack):
    if not hs.has_role("redis"):
        pytest.skip(f"{hs.name} carries no redis role")
    port = hs.stack.redis.port
    anonymous = docker_stack.exec("redis", f"redis-cli -p {port} ping")
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr, \
        f"{hs.name}: redis without password: expected NOAUTH, found {anonymous.stdout}"
    authed = docker_stack.exec(
        "redis", f'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" redis-cli -p {port} ping')
    assert authed.stdout.strip() == "PONG", f"{hs.name}: redis with password: found {authed.stdout}"


def test_celery_worker_answers_and_beat_runs(hs, docker_stack):
    if not hs.has_role("app"):
        pytest.skip(f"{hs.name} carries no app role")
    ping = docker_stack.exec("celery-worker", "celery --app=app.core.celery_app inspect ping "
                             "--timeout=10 -d celery@$HOSTNAME")
    assert ping.rc == 0 and "pong" in ping.stdout, \
        f"{hs.name}: celery-worker inspect ping: expected pong, found {ping.stdout}{ping.stderr}"
    logs = docker_stack.compose("logs", "--no-log-prefix", "celery-beat")
    if not backend.runs_beat(hs):  # the first app host runs the stack's one beat
        assert "no such service: celery-beat" in logs.stderr, \
            f"{hs.name}: celery-beat: expected none (beat runs on {backend.app_hosts(hs)[0]})"
        return
    assert "beat: Starting" in logs.stdout + logs.stderr, \
        f"{hs.name}: celery-beat: expected 'beat: Starting' in its log"


def test_traffic_goes_to_one_instance_of_the_release(host, hs, docker_stack):
    if not hs.has_role("app"):
        pytest.skip("no app on this host")
    # Pins exist only while a release switches: after it, nginx finds each service by name.
    pins = f"{nginx.host_traffic_dir(hs)}/{nginx.TRAFFIC_FILE}"
    assert not host.file(pins).exists, f"{hs.name}: {pins} left after the release switch"
    label = shlex.quote(f"label=com.docker.compose.project={hs.stack.compose.project}")
    rows = host.run(f"docker ps --all --filter {label} --format "
                    "'{{.Label \"com.docker.compose.service\"}} {{.Image}} {{.State}}'").stdout
    found: dict[str, list] = {}
    for service, image, state in (line.split() for line in rows.splitlines() if line.strip()):
        found.setdefault(service, []).append((image, state))
    for service in (unit.service for unit in releases.units(hs)):
        instances = found.get(service, [])
        assert len(instances) == 1, f"{hs.name}: {service}: expected one instance, found {instances}"
        image, state = instances[0]
        assert state == "running" and image.endswith(f":{hs.stack.version}"), \
            f"{hs.name}: {service}: expected {hs.stack.version} running, found {image} {state}"
