"""Alertmanager: amtool on every example, routing per severity (amtool config routes test),
receivers and inhibitions, secrets as files that carry any character and never enter the config.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLE_SECRETS, INVENTORIES, render_example
from rsdeploy.roles import alertmanager
from rsdeploy.component_files import MONITORING_SECRETS_DIR, secret_path, secret_read_path
from rsdeploy.layout import Reload
from rsdeploy.render import write_tree
from rsdeploy.stack import load_inventory

ODD_SECRETS = {  # quotes, $, #, backslash, spaces and a newline
    "RS_SMTP_PASSWORD": "smtp 'pa$$' \"w\" #3 \\z\nsecond line",
    "RS_SLACK_WEBHOOK_URL": "https://hooks.slack.example/services/T0/B0/a$b#c'd\"e",
    "RS_PAGERDUTY_ROUTING_KEY": "pd-key $HOME #4 'x' \"y\" \\",
}
SECRET_FILES = {"RS_SMTP_PASSWORD": "smtp_password", "RS_SLACK_WEBHOOK_URL": "slack_webhook_url",
                "RS_PAGERDUTY_ROUTING_KEY": "pagerduty_routing_key"}


def _monitoring(rendered: dict):
    return next((name, hs, files) for name, (hs, files) in rendered.items()
                if hs.has_role("monitoring"))


def _config_file(root: Path, name: str, hs) -> Path:
    return root / name / alertmanager.config_path(hs).lstrip("/")


def _routes_test(config: Path, receivers: str, *labels: str) -> subprocess.CompletedProcess:
    return subprocess.run(["amtool", "config", "routes", "test", f"--config.file={config}",
                           f"--verify.receivers={receivers}", *labels],
                          capture_output=True, text=True, timeout=60)


def _render_with(tmp_path: Path, override: dict, env: dict | None = None):
    """Render the docker example with ``override`` data; returns (hs, config file path)."""
    hs = load_inventory(str(INVENTORIES / "example_docker.py"), EXAMPLE_SECRETS, override,
                        env=env or {})["rs1.example.org"]
    write_tree(alertmanager.render(hs), tmp_path)
    return hs, tmp_path / alertmanager.config_path(hs).lstrip("/")


def test_amtool_accepts_config_and_routes(example):
    _, root, rendered = example
    name, hs, _ = _monitoring(rendered)
    verdicts = alertmanager.validate(root / name, hs)
    assert [v for v in verdicts if not v.ok] == []
    assert len(verdicts) == 1 + len(alertmanager.SEVERITIES)


def test_critical_pages_and_warning_does_not(example):
    _, root, rendered = example
    name, hs, _ = _monitoring(rendered)
    config = _config_file(root, name, hs)
    assert _routes_test(config, "pagerduty,slack,email", "severity=critical",
                        "alertname=PostgresDown").returncode == 0
    assert _routes_test(config, "slack,email", "severity=warning").returncode == 0
    assert _routes_test(config, "pagerduty,slack,email", "severity=warning").returncode == 1
    assert _routes_test(config, "null", "severity=info").returncode == 0
    assert _routes_test(config, "null", "alertname=NoSeverity").returncode == 0


def test_only_the_monitoring_host_renders_alertmanager(example):
    _, _, rendered = example
    for name, (hs, files) in rendered.items():
        has_config = any(f.path.endswith("/alertmanager.yml") for f in files)
        assert has_config == hs.has_role("monitoring"), name


def test_receivers_resolve_and_group_and_inhibit(example):
    _, root, rendered = example
    name, hs, _ = _monitoring(rendered)
    config = yaml.safe_load(_config_file(root, name, hs).read_text())
    assert config["route"]["group_by"] == ["alertname", "instance"]
    assert config["route"]["receiver"] == "null"
    assert config["route"]["repeat_interval"] == hs.stack.alertmanager.repeat_interval
    receivers = {r["name"]: r for r in config["receivers"]}
    assert set(receivers) == {"null", "pagerduty", "slack", "email"}
    for kind in ("pagerduty", "slack", "email"):
        assert receivers[kind][f"{kind}_configs"][0]["send_resolved"] is True
    assert receivers["email"]["email_configs"][0]["require_tls"] is True
    inhibit = config["inhibit_rules"]
    assert {"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
            "equal": ["alertname", "instance"]} in inhibit
    assert any(r["source_matchers"] == ['alertname="HostDown"'] and r["equal"] == ["instance"]
               for r in inhibit)


@pytest.mark.parametrize("name", ["example_docker", "example_systemd"])
def test_secrets_reach_their_files_intact_and_never_the_config(name, tmp_path):
    rendered = render_example(name, tmp_path, ODD_SECRETS)
    host, hs, files = _monitoring(rendered)
    by_path = {f.path: f for f in files}
    config_text = _config_file(tmp_path, host, hs).read_text()
    for env_name, secret_name in SECRET_FILES.items():
        f = by_path[secret_path(hs, secret_name, MONITORING_SECRETS_DIR)]
        assert f.content == ODD_SECRETS[env_name]
        assert (tmp_path / host / f.path.lstrip("/")).read_text() == ODD_SECRETS[env_name]
        assert f.secret and f.mode == "600"
        assert f.owner == ("65534" if hs.stack.layout == "docker" else "prometheus")
        assert f.reactions == ((Reload("alertmanager"),) if hs.stack.layout == "docker"
                               else (Reload("prometheus-alertmanager"),))
        assert secret_read_path(hs, secret_name, MONITORING_SECRETS_DIR) in config_text
        assert ODD_SECRETS[env_name].splitlines()[0] not in config_text
    assert [v for v in alertmanager.validate(tmp_path / host, hs) if not v.ok] == []


def test_explicit_routes_replace_the_default(tmp_path):
    override = {"alertmanager": {
        "slack": {"channel": "#rs"},
        "pagerduty": {},
        "routes": [{"severity": "critical", "receivers": ["pagerduty"]},
                   {"severity": "info", "receivers": ["slack"]}],
    }}
    hs, config = _render_with(tmp_path, override)
    assert _routes_test(config, "pagerduty", "severity=critical").returncode == 0
    assert _routes_test(config, "slack", "severity=info").returncode == 0
    assert _routes_test(config, "null", "severity=warning").returncode == 0
    assert [v for v in alertmanager.validate(tmp_path, hs) if not v.ok] == []
    secrets = sorted(Path(f.path).name for f in alertmanager.render(hs) if f.secret)
    assert secrets == ["pagerduty_routing_key", "slack_webhook_url"]  # no e-mail, no password


def test_no_receivers_is_a_valid_silent_config(tmp_path):
    hs, config = _render_with(tmp_path, {"alertmanager": {}})
    assert alertmanager.routes(hs) == {}
    assert [v for v in alertmanager.validate(tmp_path, hs) if not v.ok] == []
    assert _routes_test(config, "null", "severity=critical").returncode == 0


def test_unauthenticated_relay_writes_no_password(tmp_path):
    override = {"alertmanager": {"email": {"to": ["a@example.org"], "sender": "b@example.org",
                                           "smtp_host": "relay.example.org", "smtp_port": 25,
                                           "require_tls": False}}}
    hs, config = _render_with(tmp_path, override)
    email = yaml.safe_load(config.read_text())["receivers"][1]["email_configs"][0]
    assert "auth_password_file" not in email and email["smarthost"] == "relay.example.org:25"
    assert [f.path for f in alertmanager.render(hs) if f.secret] == []
    assert [v for v in alertmanager.validate(tmp_path, hs) if not v.ok] == []


def test_broken_config_fails_validate(example, tmp_path):
    _, root, rendered = example
    name, hs, _ = _monitoring(rendered)
    shutil.copytree(root / name, tmp_path / "tree")
    config = _config_file(tmp_path, "tree", hs)
    config.write_text(config.read_text().replace("routing_key_file:", "routing_key_fil:"))
    verdicts = alertmanager.validate(tmp_path / "tree", hs)
    assert not verdicts[0].ok and verdicts[0].tool == "amtool check-config"


def test_systemd_flags_bind_loopback_and_disable_clustering(tmp_path):
    rendered = render_example("example_systemd", tmp_path)
    default = (tmp_path / "rs1.example.org/etc/default/prometheus-alertmanager").read_text()
    assert 'ARGS="--web.listen-address=127.0.0.1:9093 --cluster.listen-address="' in default
    hs = rendered["rs1.example.org"][0]
    assert alertmanager.config_path(hs) == "/etc/prometheus/alertmanager.yml"


def test_characters_beyond_the_bmp_reach_alertmanager_as_go_reads_them(tmp_path):
    """Found by tests/test_hostile_input.py: JSON's surrogate pairs ("\\ud83d\\ude08") are
    refused by Go's yaml ("found invalid Unicode character escape code"); yaml_str writes
    \\U0001f608, which amtool and PyYAML read back as the character."""
    user = "ops 😈 ü 𐀀"
    email = {"to": ["oncall@example.org"], "sender": "alerts@example.org",
             "smtp_host": "smtp.example.org", "smtp_username": user}
    hs, config = _render_with(tmp_path, {"alertmanager": {"email": email}})
    check = subprocess.run(["amtool", "check-config", str(config)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    receivers = yaml.safe_load(config.read_text())["receivers"]
    email_config = next(r for r in receivers if r["name"] == "email")["email_configs"][0]
    assert email_config["auth_username"] == user
