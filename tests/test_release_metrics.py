"""Release metrics (:mod:`rsdeploy.release_metrics`): the text node-exporter's textfile collector
serves, accepted by ``promtool check metrics`` and read back by a real Prometheus with hostile
label values intact; where node-exporter reads it in each layout; the release alert rules and
Grafana's deploy annotation naming only metrics the text has (their PromQL parsed by promtool).
"""

from __future__ import annotations

import doctest
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from rsdeploy.roles import exporters, grafana
from rsdeploy import TEMPLATES_DIR, release_metrics
from rsdeploy.release_metrics import metrics_dir, render_metrics, stack_label
from tests.conftest import load_example
from tests.test_grafana import metric_names
from tests.test_nginx import free_port

STACK = "scheduler.example.org"
OK = {"version": "v1.1.0", "commit": "3f2c9a1e", "result": "ok",
      "started": "2026-11-30T15:38:00Z", "ended": "2026-11-30T15:40:00Z"}
FAILED = {"version": "v1.2.0", "commit": "", "result": "failed",
          "started": "2026-12-01T09:00:00Z", "ended": "2026-12-01T09:03:20Z"}
#: Metric families by the record they come from.
CURRENT_FAMILIES = {"rsdeploy_release_info", "rsdeploy_release_deployed_timestamp_seconds"}
LAST_FAMILIES = {"rsdeploy_release_last_attempt_success",
                 "rsdeploy_release_last_attempt_timestamp_seconds",
                 "rsdeploy_release_last_attempt_info"}
#: Label values that break a naive writer: the format's escapes, a sample line or a comment
#: smuggled in, an escape written literally, characters beyond ASCII.
HOSTILE = [
    'v1.0 "quoted" \\ back\\slash',
    "line one\nline two",
    '\\n is no newline, \\" no quote',
    '"} 1\nfake_metric{a="b"} 2\n# TYPE x counter',
    "ü 😀 \u2028 tab\tend",
]


def _samples(text: str) -> dict[str, str]:
    """{metric name: sample line} of the text (one sample per family here)."""
    return {line.split("{", 1)[0]: line for line in text.split("\n")  # the format's only line end
            if line and not line.startswith("#")}


def _promtool_check_metrics(text: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)


# --- the text ---------------------------------------------------------------------------------


@pytest.mark.parametrize("current, last", [
    (OK, OK), (OK, FAILED), (None, FAILED), (OK, None), ({**OK, "commit": ""}, None)],
    ids=["deployed", "failed-after-ok", "first-failed", "no-attempt-record", "commit-unknown"])
def test_promtool_check_metrics_accepts_the_text_without_lint_findings(current, last):
    proc = _promtool_check_metrics(render_metrics(STACK, current, last))
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@pytest.mark.parametrize("value", HOSTILE)
def test_promtool_check_metrics_accepts_hostile_label_values(value):
    record = {**FAILED, "version": value, "commit": value, "result": value}
    proc = _promtool_check_metrics(render_metrics(value, {**record, "result": "ok"}, record))
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
    assert len(_samples(render_metrics(value, record, record))) == 5  # nothing smuggled in


def test_promtool_check_metrics_rejects_an_unescaped_label_value():
    """The check above is real: a raw newline in a label value breaks the format."""
    text = render_metrics(STACK, OK, None).replace('version="v1.1.0"', 'version="v1\n.1.0"')
    assert _promtool_check_metrics(text).returncode != 0


def test_absent_records_give_no_sample_lines():
    assert render_metrics(STACK, None, None) == ""
    assert set(_samples(render_metrics(STACK, OK, None))) == CURRENT_FAMILIES
    assert set(_samples(render_metrics(STACK, None, FAILED))) == LAST_FAMILIES
    assert set(_samples(render_metrics(STACK, OK, FAILED))) == CURRENT_FAMILIES | LAST_FAMILIES


@pytest.mark.parametrize("result, success", [("ok", "1"), ("failed", "0"), ("rolled_back", "0")])
def test_last_attempt_success_is_1_only_for_ok(result, success):
    samples = _samples(render_metrics(STACK, OK, {**FAILED, "result": result}))
    assert samples["rsdeploy_release_last_attempt_success"] == (
        f'rsdeploy_release_last_attempt_success{{stack="{STACK}"}} {success}')
    assert samples["rsdeploy_release_last_attempt_info"] == (
        f'rsdeploy_release_last_attempt_info{{stack="{STACK}",version="v1.2.0",'
        f'result="{result}"}} 1')


def test_timestamps_are_the_records_ended_in_unix_seconds():
    samples = _samples(render_metrics(STACK, OK, FAILED))
    assert samples["rsdeploy_release_deployed_timestamp_seconds"].endswith(" 1796053200")
    assert samples["rsdeploy_release_last_attempt_timestamp_seconds"].endswith(" 1796115800")
    unix = release_metrics.unix_seconds
    assert unix("2026-11-30T15:40:00Z") == unix("2026-11-30T15:40:00+00:00") == 1796053200
    assert unix("2026-11-30T15:40:00") == 1796053200  # records are UTC
    assert unix("2026-11-30T16:40:00+01:00") == 1796053200


def test_docstring_examples_hold():
    assert doctest.testmod(release_metrics).failed == 0


# --- read back by a real Prometheus ------------------------------------------------------------


class _Targets(BaseHTTPRequestHandler):
    """Serves ``texts[i]`` at ``/<i>`` as node-exporter serves its metrics."""

    texts: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = self.texts[int(self.path.strip("/"))].encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)["data"]["result"]


def _scraped(texts: list[str], tmp_path, wanted: int) -> list[dict]:
    """Every rsdeploy_release_* series a real Prometheus scraped from ``texts`` (one target
    each, ``instance`` = its index), once ``wanted`` series are there."""
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed (Debian package prometheus)")
    handler = type("Targets", (_Targets,), {"texts": texts})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_port}"
    # One job per text: the path is a job's setting, and a job scrapes one address once.
    config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [
        {"job_name": f"node{i}", "metrics_path": f"/{i}",
         "static_configs": [{"targets": [address], "labels": {"instance": str(i)}}]}
        for i in range(len(texts))]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found: list[dict] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                found = _query(port, '{__name__=~"rsdeploy_release_.+"}')
                if len(found) >= wanted:
                    return found
            except OSError:
                pass  # not listening yet
            time.sleep(0.2)
        pytest.fail(f"Prometheus scraped {len(found)} of {wanted} series within 60 s: "
                    f"{sorted({s['metric']['instance'] for s in found})} of the texts parsed")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server.shutdown()


def test_prometheus_reads_hostile_label_values_back_exactly(tmp_path):
    texts = [render_metrics(value, {**OK, "version": value, "commit": value},
                            {**FAILED, "version": value, "result": value}) for value in HOSTILE]
    found = _scraped(texts, tmp_path, wanted=5 * len(HOSTILE))
    assert len(found) == 5 * len(HOSTILE)
    for series in found:
        labels, value = series["metric"], HOSTILE[int(series["metric"]["instance"])]
        assert labels["stack"] == value, labels
        for key in ("version", "commit", "result"):
            assert labels.get(key, value) == value, labels
    values = {(s["metric"]["__name__"], s["metric"]["instance"]): s["value"][1] for s in found}
    assert values[("rsdeploy_release_deployed_timestamp_seconds", "0")] == "1796053200"
    assert values[("rsdeploy_release_last_attempt_success", "0")] == "0"


# --- where node-exporter reads it -------------------------------------------------------------


def test_metrics_dir_and_stack_label_per_host():
    hosts = load_example("example_multi")
    assert {metrics_dir(hs) for hs in hosts.values()} == {"/var/lib/residency-scheduler/metrics"}
    assert {stack_label(hs) for hs in hosts.values()} == {STACK}


def test_node_exporter_reads_the_metrics_dir_in_each_layout(example):
    _, root, rendered = example
    for name, (hs, files) in rendered.items():
        host_dir = metrics_dir(hs)
        if hs.layout.runs_in_containers:
            compose = yaml.safe_load((root / name / hs.stack.paths.base_dir.lstrip("/")
                                      / "compose.monitoring.yml").read_text())
            service = compose["services"]["node-exporter"]
            # The host's root, read-only, holds the directory: made before or after start.
            assert f"/:{exporters.HOST_ROOT}:ro,rslave" in service["volumes"]
            expected = f"--collector.textfile.directory={exporters.HOST_ROOT}{host_dir}"
            assert expected in service["command"], name
        else:
            default = (root / name / "etc/default/prometheus-node-exporter").read_text()
            assert f"--collector.textfile.directory={host_dir} " in default, name


# --- what reads it: the alert rules and Grafana ------------------------------------------------


FAMILIES = CURRENT_FAMILIES | LAST_FAMILIES


def test_release_rules_name_only_metrics_the_text_has():
    rules = yaml.safe_load((TEMPLATES_DIR / "prometheus/rules/release.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert {name for expr in exprs for name in metric_names(expr)} <= FAMILIES


def test_grafana_deploy_annotation_on_every_dashboard_parses_with_promtool(tmp_path):
    (hs,) = [hs for hs in load_example("example_docker").values() if grafana.applies(hs)]
    boards = grafana.dashboards(hs)
    assert boards and all(grafana.DEPLOY_ANNOTATION in board["annotations"]["list"]
                          for board in boards.values())
    expr = grafana.DEPLOY_ANNOTATION["expr"]
    assert metric_names(expr) <= FAMILIES
    path = tmp_path / "annotation.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "annotations", "rules": [
        {"record": "dashboard:deploys", "expr": expr}]}]}))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
