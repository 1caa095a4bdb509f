"""Grafana: provisioning, server settings, the admin password file and the four dashboards.

No offline Grafana exists here (no Debian package, no registry): provisioning and dashboards are
checked for structure and cross-references, and the test names say so. The PromQL in the
dashboards is checked for real with promtool (as recording rules); LogQL structurally.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import re
import subprocess

import pytest
import yaml

from rsdeploy.roles import grafana, log_shipper
from rsdeploy.layout import Restart
from tests.conftest import EXAMPLES, load_example

#: Metric names the stack's targets export: the app (APP_CONTRACT), node-exporter, cAdvisor,
#: postgres-exporter, redis-exporter, and Prometheus itself.
KNOWN_METRICS = {
    "up",
    "http_requests_total", "http_request_duration_seconds_bucket",
    "http_request_duration_highr_seconds_bucket",
    "resilience_utilization_rate", "resilience_utilization_level", "resilience_defense_level",
    "node_cpu_seconds_total", "node_memory_MemAvailable_bytes", "node_memory_MemTotal_bytes",
    "node_filesystem_avail_bytes", "node_filesystem_size_bytes", "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total", "node_uname_info", "node_systemd_unit_state",
    "container_memory_working_set_bytes", "container_last_seen", "container_start_time_seconds",
    "pg_up", "pg_stat_activity_count", "pg_settings_max_connections",
    "pg_stat_database_xact_commit", "pg_stat_database_xact_rollback",
    "pg_stat_database_deadlocks", "pg_database_size_bytes",
    "redis_up", "redis_memory_used_bytes", "redis_memory_max_bytes", "redis_connected_clients",
}
#: Labels the log shippers put on streams (see tests/test_logging.py).
SHIPPED_LOG_LABELS = {"service", "container", "compose_project", "unit", "level", "job", "host",
                      "environment", "filename"}
EXPECTED_UIDS = {"rs-app-overview", "rs-database", "rs-system", "rs-resilience"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset", "inf", "nan"}


@pytest.fixture(scope="module", params=EXAMPLES)
def monitoring(request):
    """The monitoring host of each example and the files Grafana gets there."""
    hosts = load_example(request.param)
    (hs,) = [hs for hs in hosts.values() if grafana.applies(hs)]
    return hs, {f.path: f for f in grafana.render(hs)}


def dashboards_of(files) -> dict[str, dict]:
    return {p: json.loads(f.content) for p, f in files.items() if p.endswith(".json")}


def provisioned(files, kind: str) -> dict:
    (f,) = [f for p, f in files.items() if f"/provisioning/{kind}/" in p]
    return yaml.safe_load(f.content)


def panels_of(dashboards) -> list[dict]:
    return [panel for d in dashboards.values() for panel in d["panels"]]


def queries(dashboards, datasource_type: str) -> list[str]:
    return [t["expr"] for panel in panels_of(dashboards) for t in panel["targets"]
            if t["datasource"]["type"] == datasource_type]


def grafana_vars_as_promql(expr: str) -> str:
    """Grafana's variables replaced by values it would put there, so promtool can parse."""
    return re.sub(r"\$__\w+_interval|\$__range", "5m", re.sub(r'"\$\w+"', '".+"', expr))


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are no function, keyword, label."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)  # matchers, ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = {m.group(1) for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\(?)", text)
             if not m.group(2)}  # followed by "(": a function or aggregation
    return {n for n in names if n.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d.*", n)}


# --- provisioning -----------------------------------------------------------------------------


def test_datasources_provisioning_static_structure_no_offline_grafana(monitoring):
    hs, files = monitoring
    config = provisioned(files, "datasources")
    assert config["apiVersion"] == 1 and config["prune"] is True
    by_uid = {ds["uid"]: ds for ds in config["datasources"]}
    assert set(by_uid) == {"rs-prometheus", "rs-loki"}
    assert [ds["uid"] for ds in config["datasources"] if ds["isDefault"]] == ["rs-prometheus"]
    local = "prometheus" if hs.stack.layout == "docker" else "127.0.0.1"
    assert by_uid["rs-prometheus"]["url"] == f"http://{local}:{hs.stack.prometheus.port}"
    local = "loki" if hs.stack.layout == "docker" else "127.0.0.1"
    assert by_uid["rs-loki"]["url"] == f"http://{local}:{hs.stack.loki.port}"
    assert all(ds["access"] == "proxy" and ds["editable"] is False for ds in by_uid.values())


def test_grafana_reaches_the_loki_the_shippers_push_to_no_offline_grafana():
    """Multi-host: Grafana (mon1) and every shipper reach the same Loki, on mon1."""
    hosts = load_example("example_multi")
    mon = hosts["mon1.example.org"]
    loki_url = {ds["uid"]: ds["url"] for ds in grafana.datasources(mon)}["rs-loki"]
    assert loki_url == "http://loki:3100"
    for name, hs in hosts.items():
        (f,) = log_shipper.render(hs)
        expected = "loki:3100" if name == mon.name else f"{mon.stack.address}:3100"
        assert f'url = "http://{expected}/loki/api/v1/push"' in f.content, name


def test_dashboard_provider_static_structure_no_offline_grafana(monitoring):
    hs, files = monitoring
    (provider,) = provisioned(files, "dashboards")["providers"]
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    base = hs.stack.paths.base_dir
    host_dir = (f"{base}/config/grafana/dashboards" if hs.stack.layout == "docker"
                else "/var/lib/grafana/dashboards")
    assert {p.rsplit("/", 1)[0] for p in dashboards_of(files)} == {host_dir}
    provisioning = (f"{base}/config/grafana/provisioning" if hs.stack.layout == "docker"
                    else "/etc/grafana/provisioning")
    assert all(p.startswith(provisioning + "/") for p in files if p.endswith(".yml"))


# --- admin password and server settings -------------------------------------------------------


def test_admin_password_file_holds_the_secret_intact_no_offline_grafana(monitoring):
    hs, files = monitoring
    (secret,) = [f for f in files.values() if f.secret]
    assert secret.content == hs.secrets.grafana_admin_password  # spaces, '#': no trailing newline
    assert secret.mode == "600"
    if hs.stack.layout == "docker":
        assert secret.path == f"{hs.stack.paths.base_dir}/secrets/grafana_admin_password"
        assert secret.owner == "472"  # the grafana user of the image
    else:
        assert (secret.owner, secret.group) == ("grafana", "grafana")


def test_grafana_ini_parses_and_reads_password_from_file_no_offline_grafana():
    (hs,) = load_example("example_systemd").values()
    files = {f.path: f for f in grafana.render(hs)}
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(files["/etc/grafana/grafana.ini"].content)
    assert ini["security"]["admin_password"] == "$__file{/etc/grafana/grafana_admin_password}"
    assert "/etc/grafana/grafana_admin_password" in files
    assert ini["security"]["admin_user"] == hs.stack.grafana.admin_user
    assert (ini["server"]["http_addr"], ini["server"]["http_port"]) == ("127.0.0.1", "3001")
    assert ini["analytics"]["reporting_enabled"] == "false"
    assert ini["users"]["allow_sign_up"] == "false"
    assert files["/etc/grafana/grafana.ini"].reactions == (Restart("grafana-server"),)


def test_docker_environment_mirrors_grafana_ini_no_offline_grafana():
    (hs,) = load_example("example_docker").values()
    env = grafana.environment(hs)
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert env["GF_SECURITY_ADMIN_USER"] == "admin"
    assert not any(k.startswith("GF_SERVER_") for k in env), "the image's port 3000 stays"
    assert env["GF_ANALYTICS_REPORTING_ENABLED"] == "false"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env, "the password never sits in the environment"
    assert not any(p.endswith("grafana.ini") for p in (f.path for f in grafana.render(hs)))


# --- dashboards -------------------------------------------------------------------------------


def test_dashboards_uids_unique_and_stable_no_offline_grafana(monitoring):
    hs, files = monitoring
    dashboards = dashboards_of(files)
    assert {d["uid"] for d in dashboards.values()} == EXPECTED_UIDS
    assert {p.rsplit("/", 1)[1] for p in dashboards} == {f"{uid}.json" for uid in EXPECTED_UIDS}
    again = {f.path: f.content for f in grafana.render(hs)}
    assert all(again[p] == f.content for p, f in files.items()), "rendering is deterministic"
    for d in dashboards.values():
        assert d["editable"] is False and d["id"] is None
        ids = [panel["id"] for panel in d["panels"]]
        assert len(set(ids)) == len(ids)


def test_dashboard_panels_fit_the_grid_without_overlap_no_offline_grafana(monitoring):
    _, files = monitoring
    for d in dashboards_of(files).values():
        cells = set()
        for panel in d["panels"]:
            g = panel["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
            area = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                    for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & area, f"{d['uid']}: {panel['title']} overlaps"
            cells |= area


def test_dashboard_datasource_uids_are_provisioned_no_offline_grafana(monitoring):
    _, files = monitoring
    provisioned_uids = {(ds["type"], ds["uid"]) for ds in provisioned(files, "datasources")[
        "datasources"]}
    dashboards = dashboards_of(files)
    refs = [panel["datasource"] for panel in panels_of(dashboards)]
    refs += [t["datasource"] for panel in panels_of(dashboards) for t in panel["targets"]]
    refs += [v["datasource"] for d in dashboards.values() for v in d["templating"]["list"]]
    assert refs and {(r["type"], r["uid"]) for r in refs} <= provisioned_uids


def test_dashboard_promql_parses_with_promtool(monitoring, tmp_path):
    _, files = monitoring
    exprs = queries(dashboards_of(files), "prometheus")
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:query_{i}", "expr": grafana_vars_as_promql(e)}
        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(exprs)} rules found" in proc.stdout


def test_promtool_rejects_a_broken_dashboard_query(tmp_path):
    """The check above is real: promtool fails on a malformed expression."""
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [
        {"record": "dashboard:broken", "expr": "sum by (le (rate(x[5m]))"}]}]}))
    assert subprocess.run(["promtool", "check", "rules", str(path)],
                          capture_output=True).returncode != 0


def test_dashboard_metrics_are_exported_by_the_targets(monitoring):
    _, files = monitoring
    used = {name for e in queries(dashboards_of(files), "prometheus") for name in metric_names(e)}
    assert used, "no metric found: the extractor is broken"
    assert used <= KNOWN_METRICS, f"unknown metrics: {sorted(used - KNOWN_METRICS)}"


def test_metric_name_extractor():
    expr = ('histogram_quantile(0.95, sum by (le, handler) (rate('
            'http_request_duration_seconds_bucket{handler!="/metrics"}[5m]))) > bool (time() - 60)')
    assert metric_names(expr) == {"http_request_duration_seconds_bucket"}


def test_dashboard_logql_structure_no_offline_loki(monitoring):
    hs, files = monitoring
    dashboards = dashboards_of(files)
    exprs = queries(dashboards, "loki")
    assert exprs, "the dashboards show logs"
    variables = {v["name"] for d in dashboards.values() for v in d["templating"]["list"]}
    (shipper_file,) = log_shipper.render(hs)
    shipper_config = re.sub(r"\s+", " ", shipper_file.content)
    for expr in exprs:
        selector = re.match(r"\{([^}]*)\}", expr)
        assert selector, expr
        matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', selector.group(1))
        assert matchers and {label for label, _, _ in matchers} <= SHIPPED_LOG_LABELS, expr
        for label, _, value in matchers:
            if label == "job":  # a fixed job label: the shipper must set exactly this one
                assert f'job = "{value}"' in shipper_config, expr
        for var in re.findall(r"\$(\w+)", expr):
            assert var in variables, f"{expr}: ${var} is no dashboard variable"
        pipeline = expr[selector.end():].strip()
        assert not pipeline or re.fullmatch(r'(\|[=~]\s*"(?:[^"\\]|\\.)*"\s*)+', pipeline), expr
    (overview,) = [d for d in dashboards.values() if d["uid"] == "rs-app-overview"]
    assert {v["name"] for v in overview["templating"]["list"]} == {"service", "unit"}  # both layouts


def test_dashboards_cover_the_operators_questions_no_offline_grafana(monitoring):
    """Each dashboard shows what its name promises (metric names per dashboard)."""
    hs, files = monitoring
    by_uid = {d["uid"]: d for d in dashboards_of(files).values()}
    wanted = {
        "rs-app-overview": {"http_requests_total", "http_request_duration_highr_seconds_bucket",
                            "http_request_duration_seconds_bucket"},
        "rs-database": {"pg_up", "pg_stat_activity_count", "pg_settings_max_connections",
                        "pg_stat_database_xact_commit", "pg_stat_database_deadlocks",
                        "pg_database_size_bytes", "redis_up", "redis_memory_used_bytes",
                        "redis_connected_clients"},
        "rs-system": {"node_cpu_seconds_total", "node_memory_MemAvailable_bytes",
                      "node_filesystem_avail_bytes", "node_network_receive_bytes_total"},
        "rs-resilience": {"resilience_utilization_rate", "resilience_utilization_level",
                          "resilience_defense_level"},
    }
    if hs.stack.layout == "docker":
        wanted["rs-system"] |= {"container_memory_working_set_bytes",
                                "container_start_time_seconds"}
    for uid, metrics in wanted.items():
        used = {n for e in queries({uid: by_uid[uid]}, "prometheus") for n in metric_names(e)}
        assert metrics <= used, f"{uid} lacks {sorted(metrics - used)}"


def test_resilience_levels_have_named_value_mappings_no_offline_grafana(monitoring):
    _, files = monitoring
    (resilience,) = [d for d in dashboards_of(files).values() if d["uid"] == "rs-resilience"]
    (level,) = [p for p in resilience["panels"] if p["title"] == "Utilization level"]
    texts = {value: option["text"] for m in level["fieldConfig"]["defaults"]["mappings"]
             for value, option in m["options"].items()}
    assert texts == {"0": "GREEN", "1": "YELLOW", "2": "ORANGE", "3": "RED", "4": "BLACK"}


def test_no_dashboards_without_prometheus_no_offline_grafana():
    (hs,) = load_example("example_docker").values()
    stack = hs.stack.model_copy(update={"prometheus": hs.stack.prometheus.model_copy(
        update={"enabled": False})})
    without = dataclasses.replace(hs, stack=stack, stack_settings={hs.name: stack})
    assert grafana.dashboards(without) == {}
    assert [ds["uid"] for ds in grafana.datasources(without)] == ["rs-loki"]
