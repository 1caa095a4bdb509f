"""The offline images keep the interfaces of the upstream images the stack's Compose files use."""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.sandbox

LOOPBACK_ANY = ("127.0.0.1", None)
# Secrets reach files intact: quotes, $, # and spaces on purpose.
DB_PASSWORD = "pg-pa$$ 'wo\"rd' #1"
REDIS_PASSWORD = "redis-$ecret-passw0rd-#42"


def _secret_file(tmp_path, name: str, value: str, uid: int):
    path = tmp_path / name
    path.write_text(value)
    path.chmod(0o600)
    os.chown(path, uid, uid)
    return path


def _uid_of_main_process(container) -> int:
    status = container.exec_run(["cat", "/proc/1/status"]).output.decode()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))


@pytest.fixture(scope="module")
def postgres(infra_images, module_containers, probe, tmp_path_factory):
    """rsdeploy/postgres:15 on a fresh network, initialised from a password file and initdb.d."""
    tmp_path = tmp_path_factory.mktemp("postgres")
    secret = _secret_file(tmp_path, "db_password", DB_PASSWORD, 999)
    initdb = tmp_path / "initdb"
    initdb.mkdir()
    (initdb / "10-marker.sql").write_text("CREATE TABLE init_marker (ran boolean);\n"
                                          "INSERT INTO init_marker VALUES (true);\n")
    (initdb / "20-extension.sh").write_text(
        'psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" '
        '-c "CREATE EXTENSION IF NOT EXISTS vector"\n')
    network = module_containers.network()
    db = module_containers.run(
        "rsdeploy/postgres:15", name=f"{network.name}-db", network=network.name,
        environment={"POSTGRES_USER": "scheduler", "POSTGRES_DB": "residency_scheduler",
                     "POSTGRES_PASSWORD_FILE": "/run/secrets/db_password"},
        volumes={str(secret): {"bind": "/run/secrets/db_password", "mode": "ro"},
                 str(initdb): {"bind": "/docker-entrypoint-initdb.d", "mode": "ro"}})
    # pg_isready also answers during the init run: wait for the server started after it.
    logs = probe.wait_log(db, "init process complete")
    assert "init process complete" in logs, logs[-3000:]
    ready = probe.wait_exec(db, ["pg_isready", "-U", "scheduler", "-d", "residency_scheduler"], 60)
    assert ready.exit_code == 0, db.logs().decode()[-2000:]
    return db, network


def test_postgres_initialises_from_env_and_password_file(postgres, containers, probe):
    db, network = postgres
    client = containers.run(
        "rsdeploy/postgres:15", network=network.name, entrypoint=["sleep", "120"],
        environment={"PGPASSWORD": DB_PASSWORD})

    def over_network(password: str, sql: str):
        return client.exec_run(["psql", "-h", db.name, "-U", "scheduler", "-d",
                                "residency_scheduler", "-tAc", sql],
                               environment={"PGPASSWORD": password})

    probe.wait_exec(client, ["pg_isready", "-h", db.name], 60)
    result = over_network(DB_PASSWORD, "SELECT ran FROM init_marker")
    assert result.exit_code == 0, result.output.decode()
    assert result.output.decode().strip() == "t"  # the initdb.d .sql file ran
    refused = over_network("wrong-password", "SELECT 1")
    assert refused.exit_code != 0
    assert "password authentication failed" in refused.output.decode()


def test_postgres_has_pgvector_and_runs_as_uid_999(postgres):
    db, _ = postgres
    result = db.exec_run(["psql", "-U", "scheduler", "-d", "residency_scheduler", "-tAc",
                          "SELECT extversion FROM pg_extension WHERE extname = 'vector'"])
    assert result.output.decode().strip() == "0.8.0"  # created by the initdb.d .sh script
    vector = db.exec_run(["psql", "-U", "scheduler", "-d", "residency_scheduler", "-tAc",
                          "SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector"])
    assert vector.output.decode().strip() == "1"
    assert _uid_of_main_process(db) == 999
    owner = db.exec_run(["stat", "-c", "%u %a", "/var/lib/postgresql/data"]).output.decode()
    assert owner.split() == ["999", "700"]


def test_redis_requires_the_password_from_its_conf(infra_images, containers, probe, tmp_path):
    conf = _secret_file(tmp_path, "redis.conf",
                        f'requirepass "{REDIS_PASSWORD}"\nappendonly yes\n', 999)
    redis = containers.run(
        "rsdeploy/redis:7", command=["redis-server", "/usr/local/etc/redis/redis.conf"],
        volumes={str(conf): {"bind": "/usr/local/etc/redis/redis.conf", "mode": "ro"}})
    pong = probe.wait_exec(redis, ["redis-cli", "--no-auth-warning", "-a", REDIS_PASSWORD, "ping"],
                           printing="PONG")
    assert pong.output.decode().strip() == "PONG", redis.logs().decode()
    anonymous = probe.wait_exec(redis, ["sh", "-c", "redis-cli ping || true"], 10, printing="NOAUTH")
    assert "NOAUTH" in anonymous.output.decode()
    assert _uid_of_main_process(redis) == 999
    version = redis.exec_run(["redis-server", "--version"]).output.decode()
    assert "v=7." in version


def test_prometheus_starts_with_a_config_and_answers_healthy(infra_images, containers, probe,
                                                           tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 5s\nrule_files: ['rules/*.yml']\n"
                      "scrape_configs:\n  - job_name: self\n    static_configs:\n"
                      "      - targets: ['localhost:9090']\n")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "stack.yml").write_text(
        "groups:\n  - name: stack\n    rules:\n      - alert: Up\n        expr: up == 0\n")
    prometheus = containers.run(
        "rsdeploy/prometheus:2.42", ports={"9090/tcp": LOOPBACK_ANY},
        command=["--config.file=/etc/prometheus/prometheus.yml",
                 "--storage.tsdb.path=/prometheus", "--web.enable-lifecycle"],
        volumes={str(config): {"bind": "/etc/prometheus/prometheus.yml", "mode": "ro"},
                 str(tmp_path / "rules"): {"bind": "/etc/prometheus/rules", "mode": "ro"}})
    port = probe.published_port(prometheus, "9090/tcp")
    status, _ = probe.wait_http(f"http://127.0.0.1:{port}/-/healthy")
    assert status == 200, prometheus.logs().decode()[-2000:]
    # Healthy comes before ready (its storage and rules loaded); the API answers 503 till then.
    deadline = time.monotonic() + 60
    while probe.wait_http(f"http://127.0.0.1:{port}/-/ready")[0] != 200:
        assert time.monotonic() < deadline, prometheus.logs().decode()[-2000:]
        time.sleep(0.5)
    _, rules = probe.wait_http(f"http://127.0.0.1:{port}/api/v1/rules")
    assert '"name":"Up"' in rules  # rule_files resolved relative to the config file
    assert _uid_of_main_process(prometheus) == 65534


def test_alertmanager_answers_healthy(infra_images, containers, probe):
    alertmanager = containers.run("rsdeploy/alertmanager:0.25", ports={"9093/tcp": LOOPBACK_ANY})
    port = probe.published_port(alertmanager, "9093/tcp")
    status, _ = probe.wait_http(f"http://127.0.0.1:{port}/-/healthy")
    assert status == 200, alertmanager.logs().decode()[-2000:]
    check = alertmanager.exec_run(["amtool", "check-config", "/etc/alertmanager/alertmanager.yml"])
    assert check.exit_code == 0
    assert _uid_of_main_process(alertmanager) == 65534


def test_nginx_serves_conf_d_and_logs_to_stdout(infra_images, containers, probe, tmp_path):
    (tmp_path / "site.conf").write_text(
        "server {\n    listen 80;\n    location = /probe { return 200 'probe-ok'; }\n}\n")
    nginx = containers.run(
        "rsdeploy/nginx:1.22", ports={"80/tcp": LOOPBACK_ANY},
        volumes={str(tmp_path / "site.conf"): {"bind": "/etc/nginx/conf.d/default.conf",
                                               "mode": "ro"}})
    port = probe.published_port(nginx, "80/tcp")
    status, body = probe.wait_http(f"http://127.0.0.1:{port}/probe")
    assert (status, body) == (200, "probe-ok")
    assert "GET /probe" in probe.wait_log(nginx, "GET /probe", 10)  # access log on stdout
    workers = nginx.exec_run(["sh", "-c", "for p in /proc/[0-9]*; do grep -qs 'worker[ ]process' "
                              "$p/cmdline && stat -c %U $p; done"]).output.decode().split()
    assert workers and set(workers) == {"nginx"}


def test_exporters_report_their_targets_up(infra_images, containers, probe, tmp_path):
    network = containers.network()
    conf = _secret_file(tmp_path, "redis.conf", f'requirepass "{REDIS_PASSWORD}"\n', 999)
    redis = containers.run(
        "rsdeploy/redis:7", name=f"{network.name}-redis", network=network.name,
        command=["redis-server", "/usr/local/etc/redis/redis.conf"],
        volumes={str(conf): {"bind": "/usr/local/etc/redis/redis.conf", "mode": "ro"}})
    exporter = containers.run(
        "rsdeploy/redis-exporter:1.45", network=network.name, ports={"9121/tcp": LOOPBACK_ANY},
        environment={"REDIS_ADDR": f"redis://{redis.name}:6379", "REDIS_PASSWORD": REDIS_PASSWORD})
    node = containers.run("rsdeploy/node-exporter:1.5", ports={"9100/tcp": LOOPBACK_ANY})
    metrics = {}
    for name, container, port in [("redis", exporter, "9121/tcp"), ("node", node, "9100/tcp")]:
        url = f"http://127.0.0.1:{probe.published_port(container, port)}/metrics"
        for _ in range(20):
            metrics[name] = probe.wait_http(url)[1]
            if name != "redis" or "\nredis_up 1" in metrics[name]:
                break
    assert "\nredis_up 1" in metrics["redis"], exporter.logs().decode()[-1000:]
    assert "node_cpu_seconds_total" in metrics["node"]



def test_postgres_exporter_reads_data_source_env_password_without_quotes(postgres, containers,
                                                                        probe, tmp_path):
    # postgres-exporter 0.11 (Debian) builds a key=value DSN and exits with "malformed dsn" when
    # the password has a space or a quote (checked by hand; newer upstream versions quote it).
    # The sandbox's random secrets are URL-safe, so this role's password is too ($ and # stay).
    db, network = postgres
    password = "monitor-pa$$w0rd#7"
    grant = db.exec_run(["psql", "-v", "ON_ERROR_STOP=1", "-U", "scheduler", "-d", "postgres", "-c",
                         f"CREATE ROLE rs_monitor LOGIN PASSWORD '{password}'; "
                         "GRANT pg_monitor TO rs_monitor"])
    assert grant.exit_code == 0, grant.output.decode()
    secret = _secret_file(tmp_path, "db_monitor_password", password, 65534)  # the exporter's uid
    exporter = containers.run(
        "rsdeploy/postgres-exporter:0.11", network=network.name,
        ports={"9187/tcp": LOOPBACK_ANY},
        environment={"DATA_SOURCE_URI": f"{db.name}:5432/residency_scheduler?sslmode=disable",
                     "DATA_SOURCE_USER": "rs_monitor",
                     "DATA_SOURCE_PASS_FILE": "/run/secrets/db_monitor_password"},
        volumes={str(secret): {"bind": "/run/secrets/db_monitor_password", "mode": "ro"}})
    url = f"http://127.0.0.1:{probe.published_port(exporter, '9187/tcp')}/metrics"
    status, metrics = probe.wait_http(url)
    assert status == 200
    assert "\npg_up 1" in metrics, exporter.logs().decode()[-1000:]


def test_bundle_files_match_their_manifest_and_load(infra_images, docker_client, tmp_path):
    import hashlib
    import json

    from rsdeploy_dev import images

    manifest = images.bundle(tmp_path, ["redis-exporter"], compressed=True, client=docker_client)
    (entry,) = json.loads(manifest.read_text())["images"]
    bundle_file = tmp_path / entry["file"]
    assert entry["image"] == "rsdeploy/redis-exporter:1.45"
    assert hashlib.sha256(bundle_file.read_bytes()).hexdigest() == entry["sha256"]
    loaded = docker_client.images.load(bundle_file.read_bytes())  # docker load reads gzip too
    assert [image.id for image in loaded] == [entry["id"]]
    assert "rsdeploy/redis-exporter:1.45" in loaded[0].tags
