"""Prometheus and exporters: promtool on every example's rendered tree, scrape targets per
layout and topology, promtool unit tests for every alert, exporter files and their secrets.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import render_example
from rsdeploy.roles import exporters, prometheus
from rsdeploy import TEMPLATES_DIR
from rsdeploy_dev import REPO_ROOT
from rsdeploy.component_files import MONITORING_SECRETS_DIR, secret_path

RULES_DIR = TEMPLATES_DIR / "prometheus" / "rules"
PROMTOOL_TESTS = REPO_ROOT / "tests" / "promtool"
ANNOTATIONS = ("summary", "description", "runbook")
ODD_SECRETS = {  # quotes, $, #, backslash, spaces and a newline: must reach the files intact
    "RS_DB_MONITOR_PASSWORD": "mon 'pa$$' \"w0rd\" #1 \\x\nline2",
    "RS_REDIS_PASSWORD": "redis \"pa$s\" #2 \\y 'q' long",
}


@pytest.fixture(scope="module")
def rendered_examples(tmp_path_factory):
    """render(name, env) -> {"root": Path, "hosts": {...}}, each (name, env) rendered once."""
    cache: dict[str, dict] = {}

    def render(name: str, env: dict | None = None) -> dict:
        key = name + json.dumps(env or {}, sort_keys=True)
        if key not in cache:
            root = tmp_path_factory.mktemp(name)
            cache[key] = {"root": root, "hosts": render_example(name, root, env)}
        return cache[key]

    return render


def _monitoring(rendered: dict):
    """(host name, hs, files) of the example's monitoring host."""
    return next((name, hs, files) for name, (hs, files) in rendered.items()
                if hs.has_role("monitoring"))


def _scrape_config(root: Path, name: str, hs) -> dict:
    path = root / name / prometheus.config_dir(hs).lstrip("/") / "prometheus.yml"
    return yaml.safe_load(path.read_text())


def _targets(config: dict) -> dict[str, dict[str, str]]:
    """{job: {instance label: address}}"""
    return {job["job_name"]: {sc["labels"]["instance"]: sc["targets"][0]
                              for sc in job["static_configs"]}
            for job in config["scrape_configs"]}


def _rules(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


# --- real validators --------------------------------------------------------------------------


def test_promtool_accepts_config_and_rules(example):
    _, root, rendered = example
    name, hs, files = _monitoring(rendered)
    verdicts = prometheus.validate(root / name, hs)
    assert [v for v in verdicts if not v.ok] == []
    tools = [v.tool for v in verdicts]
    assert tools.count("promtool check config") == 1
    assert tools.count("promtool check rules") == len(prometheus.rule_files(hs)) >= 5


def test_only_the_monitoring_host_renders_prometheus(example):
    _, _, rendered = example
    for name, (hs, files) in rendered.items():
        has_config = any(f.path.endswith("/prometheus.yml") for f in files)
        assert has_config == hs.has_role("monitoring"), name


def test_broken_rendered_files_fail_validate(example, tmp_path):
    _, root, rendered = example
    name, hs, _ = _monitoring(rendered)
    tree = tmp_path / "tree"
    shutil.copytree(root / name, tree)
    directory = tree / prometheus.config_dir(hs).lstrip("/")
    (directory / "rules" / "backend.yml").write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(up[5m]\n")
    failed = {v.tool for v in prometheus.validate(tree, hs) if not v.ok}
    assert failed == {"promtool check config", "promtool check rules"}
    (directory / "prometheus.yml").write_text(
        (directory / "prometheus.yml").read_text().replace("scrape_interval:", "scrape_intervall:"))
    assert not prometheus.validate(tree, hs)[0].ok


# --- prometheus.yml ---------------------------------------------------------------------------


def test_global_settings_alerting_and_relative_rule_files(example):
    _, root, rendered = example
    name, hs, _ = _monitoring(rendered)
    config = _scrape_config(root, name, hs)
    assert config["global"]["external_labels"] == {"environment": "production"}
    assert config["global"]["scrape_interval"] == hs.stack.prometheus.scrape_interval
    assert config["rule_files"] == ["rules/*.yml"]
    expected_am = "alertmanager:9093" if hs.stack.layout == "docker" else "127.0.0.1:9093"
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [expected_am]


def test_docker_single_host_scrapes_compose_services(rendered_examples):
    rendered = rendered_examples("example_docker")
    name, hs, _ = _monitoring(rendered["hosts"])
    targets = _targets(_scrape_config(rendered["root"], name, hs))
    assert targets["node"] == {name: "172.30.0.1:9100"}  # host network: the Compose gateway
    assert targets["cadvisor"] == {name: "cadvisor:8080"}
    assert targets["postgres"] == {name: "postgres-exporter:9187"}
    assert targets["redis"] == {name: "redis-exporter:9121"}
    assert targets["backend"] == {name: "backend:8000"}
    assert set(targets) == {"prometheus", "alertmanager", "backend", "node", "postgres", "redis",
                            "loki", "grafana", "alloy", "cadvisor"}


def test_systemd_scrapes_loopback_and_no_cadvisor(rendered_examples):
    rendered = rendered_examples("example_systemd")
    name, hs, _ = _monitoring(rendered["hosts"])
    targets = _targets(_scrape_config(rendered["root"], name, hs))
    assert "cadvisor" not in targets
    for job in ("prometheus", "alertmanager", "backend", "node", "postgres", "redis"):
        assert targets[job][name].startswith("127.0.0.1:"), job


def test_multi_host_scrapes_other_hosts_by_address_with_inventory_instances(rendered_examples):
    rendered = rendered_examples("example_multi")
    name, hs, _ = _monitoring(rendered["hosts"])
    targets = _targets(_scrape_config(rendered["root"], name, hs))
    assert targets["node"] == {"db1.example.org": "10.0.0.21:9100",
                               "app1.example.org": "10.0.0.22:9100",
                               "app2.example.org": "10.0.0.25:9100",
                               "web1.example.org": "10.0.0.23:9100",
                               "mon1.example.org": "172.30.0.1:9100"}
    assert targets["cadvisor"]["web1.example.org"] == "10.0.0.23:8080"
    # Every app host, on both ports of its published range (a release's new instance takes the
    # one the serving instance does not); BackendDown takes the best of a host's two.
    backend = [(sc["labels"]["instance"], sc["labels"]["slot"], sc["targets"][0])
               for job in _scrape_config(rendered["root"], name, hs)["scrape_configs"]
               if job["job_name"] == "backend" for sc in job["static_configs"]]
    assert backend == [("app1.example.org", "a", "10.0.0.22:8000"),
                       ("app1.example.org", "b", "10.0.0.22:8001"),
                       ("app2.example.org", "a", "10.0.0.25:8000"),
                       ("app2.example.org", "b", "10.0.0.25:8001")]
    assert targets["postgres"] == {"db1.example.org": "10.0.0.21:9187"}
    assert targets["redis"] == {"db1.example.org": "10.0.0.21:9121"}


def test_disabled_exporter_is_not_scraped():
    from rsdeploy.stack import load_inventory

    from tests.conftest import EXAMPLE_SECRETS, INVENTORIES

    override = {"exporters": {"redis_exporter": {"enabled": False,
                                                 "image": "oliver006/redis_exporter:v1.74.0",
                                                 "port": 9121}}}
    hs = load_inventory(str(INVENTORIES / "example_docker.py"), EXAMPLE_SECRETS, override,
                        env={})["rs1.example.org"]
    assert "redis" not in [job.name for job in prometheus.scrape_jobs(hs)]
    assert "redis.yml" not in prometheus.rule_files(hs)


def test_release_rules_only_where_node_exporter_serves_the_release_metrics():
    from rsdeploy.stack import load_inventory

    from tests.conftest import EXAMPLE_SECRETS, INVENTORIES

    hs = load_inventory(str(INVENTORIES / "example_multi.py"), EXAMPLE_SECRETS, env={})[
        "mon1.example.org"]
    assert "release.yml" in prometheus.rule_files(hs)
    hs = load_inventory(str(INVENTORIES / "example_multi.py"), EXAMPLE_SECRETS,
                        {"exporters": {"node_exporter": {"enabled": False}}}, env={})[
        "mon1.example.org"]
    assert "release.yml" not in prometheus.rule_files(hs)


def test_backup_rules_only_where_a_db_host_publishes_its_backups():
    from rsdeploy.stack import load_inventory

    from tests.conftest import EXAMPLE_SECRETS, INVENTORIES

    def chosen(overrides: dict) -> list[str]:
        return prometheus.rule_files(load_inventory(
            str(INVENTORIES / "example_multi.py"), EXAMPLE_SECRETS, overrides,
            env={})["mon1.example.org"])
    assert "backup.yml" in chosen({})
    assert "backup.yml" not in chosen({"backup": {"enabled": False}})
    assert "backup.yml" not in chosen({"exporters": {"node_exporter": {"enabled": False}}})


def test_command_flags_enable_reload_and_retention_and_systemd_loopback(example):
    _, root, rendered = example
    name, hs, files = _monitoring(rendered)
    flags = prometheus.command_flags(hs)
    assert "--web.enable-lifecycle" in flags
    assert f"--storage.tsdb.retention.time={hs.stack.prometheus.retention}" in flags
    if hs.stack.layout == "systemd":
        default = (root / name / "etc/default/prometheus").read_text()
        assert 'ARGS="' in default and "--web.listen-address=127.0.0.1:9090" in default


# --- alert rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("rule_file", sorted(p.name for p in RULES_DIR.glob("*.yml")))
def test_every_alert_has_severity_and_operator_annotations(rule_file):
    for rule in _rules(RULES_DIR / rule_file):
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert set(ANNOTATIONS) <= set(rule["annotations"]), rule["alert"]


def _unit_tests() -> dict[str, list[dict]]:
    """{alertname: [alert_rule_test, ...]} over every promtool test file."""
    found: dict[str, list[dict]] = {}
    for path in PROMTOOL_TESTS.glob("*.test.yml"):
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group["alert_rule_test"]:
                found.setdefault(case["alertname"], []).append(case)
    return found


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    cases = _unit_tests()
    alerts = {r["alert"] for p in RULES_DIR.glob("*.yml") for r in _rules(p)}
    for alert in sorted(alerts):
        assert any(c["exp_alerts"] for c in cases.get(alert, [])), f"{alert}: no firing case"
        assert any(not c["exp_alerts"] for c in cases.get(alert, [])), f"{alert}: no silent case"


def _without_annotations(source: Path, target: Path) -> None:
    rules = yaml.safe_load(source.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    target.write_text(yaml.safe_dump(rules))


def test_promtool_unit_tests_pass_on_the_rendered_rules(example, tmp_path):
    """Labels and timing: run on copies without annotations (checked separately below)."""
    _, root, rendered = example
    name, hs, _ = _monitoring(rendered)
    rules_dir = root / name / prometheus.config_dir(hs).lstrip("/") / "rules"
    test_files = []
    for rule_file in sorted(rules_dir.glob("*.yml")):
        _without_annotations(rule_file, tmp_path / rule_file.name)
        test_file = PROMTOOL_TESTS / rule_file.name.replace(".yml", ".test.yml")
        assert test_file.is_file(), f"no promtool tests for {rule_file.name}"
        test_files.append(shutil.copy(test_file, tmp_path))
    proc = _promtool("test", "rules", *map(str, test_files), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_annotation_templates_render(example, tmp_path):
    _, root, rendered = example
    name, hs, _ = _monitoring(rendered)
    rules_dir = root / name / prometheus.config_dir(hs).lstrip("/") / "rules"
    for rule_file in rules_dir.glob("*.yml"):
        shutil.copy(rule_file, tmp_path)
    shutil.copy(PROMTOOL_TESTS / "annotations.test.yml", tmp_path)
    proc = _promtool("test", "rules", "annotations.test.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_layout_specific_rules(example):
    _, _, rendered = example
    _, hs, _ = _monitoring(rendered)
    chosen = prometheus.rule_files(hs)
    assert ("containers.yml" in chosen) == (hs.stack.layout == "docker")
    assert ("systemd.yml" in chosen) == (hs.stack.layout == "systemd")


# --- exporters --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["example_docker", "example_systemd"])
def test_exporter_secrets_reach_files_intact(name, rendered_examples):
    rendered = rendered_examples(name, ODD_SECRETS)
    hs, files = rendered["hosts"]["rs1.example.org"]
    by_path = {f.path: f for f in files}
    pg = by_path[secret_path(hs, exporters.POSTGRES_PASSWORD_SECRET, MONITORING_SECRETS_DIR)]
    redis = by_path[secret_path(hs, exporters.REDIS_PASSWORD_SECRET, MONITORING_SECRETS_DIR)]
    assert pg.content == ODD_SECRETS["RS_DB_MONITOR_PASSWORD"]
    assert json.loads(redis.content) == {exporters.redis_exporter_address(hs):
                                         ODD_SECRETS["RS_REDIS_PASSWORD"]}
    expected_owners = ({"65534", "59000"} if hs.stack.layout == "docker" else {"prometheus"})
    assert {pg.owner, redis.owner} == expected_owners
    assert pg.secret and redis.secret and pg.mode == redis.mode == "600"
    for f in files:  # no other file carries the passwords
        if not f.secret:
            assert "pa$$" not in f.content and "pa$s" not in f.content, f.path


def test_systemd_exporter_defaults_read_the_password_from_a_file(rendered_examples):
    rendered = rendered_examples("example_systemd", ODD_SECRETS)
    root = rendered["root"] / "rs1.example.org" / "etc/default"
    pg = (root / "prometheus-postgres-exporter").read_text()
    assert 'DATA_SOURCE_PASS_FILE="/etc/prometheus/secrets/db_monitor_password"' in pg
    assert 'DATA_SOURCE_URI="127.0.0.1:5432/residency_scheduler?sslmode=disable"' in pg
    assert "DATA_SOURCE_NAME" not in pg  # it would win over the URI/USER/PASS_FILE trio
    redis = (root / "prometheus-redis-exporter").read_text()
    assert "-redis.password-file=/etc/prometheus/secrets/redis_exporter_passwords" in redis
    node = (root / "prometheus-node-exporter").read_text()
    assert "--collector.systemd " in node and "residency-.+" in node  # Celery unit alerts


def test_node_exporter_flags_per_layout(rendered_examples):
    docker = rendered_examples("example_docker")["hosts"]["rs1.example.org"][0]
    assert exporters.node_exporter_flags(docker) == [
        "--web.listen-address=172.30.0.1:9100",
        "--collector.textfile.directory=/host/var/lib/residency-scheduler/metrics",
        "--path.rootfs=/host"]
    systemd = rendered_examples("example_systemd")["hosts"]["rs1.example.org"][0]
    assert exporters.node_exporter_flags(systemd)[:2] == [
        "--web.listen-address=127.0.0.1:9100",
        "--collector.textfile.directory=/var/lib/residency-scheduler/metrics"]
    multi = rendered_examples("example_multi")["hosts"]["db1.example.org"][0]
    assert exporters.node_exporter_flags(multi)[0] == "--web.listen-address=10.0.0.21:9100"
    assert exporters.postgres_exporter_environment(multi) == {
        "DATA_SOURCE_URI": "db:5432/residency_scheduler?sslmode=disable",
        "DATA_SOURCE_USER": "rs_monitor",
        "DATA_SOURCE_PASS_FILE": "/run/secrets/db_monitor_password",
    }
