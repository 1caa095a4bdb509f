"""Settings and secrets validation: every bad input is one line naming file, host and key, exit 2,
no traceback, before any host is contacted."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rsdeploy.cli import main
from rsdeploy.secrets import load_secrets
from tests.conftest import EXAMPLE_SECRETS, load_example

GOOD_STACK = {
    "layout": "docker",
    "version": "v1.0.0",
    "domain": "scheduler.example.org",
    "tls": {"mode": "self-signed"},
    "app": {"delivery": "bundle", "bundle_dir": "bundles"},
}


def write_inventory(tmp_path: Path, stack: dict, host_data: dict | None = None,
                    name: str = "site") -> Path:
    """An inventory file with one host ``rs1`` carrying ``stack`` as group data."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(f"""\
        stack = {stack!r}
        residency = ([("rs1", {host_data or {}!r})], stack)
        """))
    return path


def run_check(capsys, inventory: Path, secrets: str | None = EXAMPLE_SECRETS, *extra: str):
    args = ["check", "-i", str(inventory), *extra]
    if secrets:
        args += ["--secrets", secrets]
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err.strip()


def with_key(stack: dict, dotted: str, value) -> dict:
    """A deep copy of ``stack`` with ``dotted`` set to ``value``."""
    import copy

    out = copy.deepcopy(stack)
    *parents, last = dotted.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("layout", "dokcer", "layout: Input should be 'docker' or 'systemd'"),
        ("domain", "not a domain", "domain: 'not a domain' is not a valid domain name"),
        ("domain", "Example.ORG", "is not a valid domain name"),
        ("tls.email", "ops-at-example.org", "tls.email: 'ops-at-example.org' is not a valid e-mail"),
        ("nginx.https_port", 70000, "nginx.https_port: Input should be less than or equal to 65535"),
        ("postgres.port", "fivefourthreetwo", "postgres.port: Input should be a valid integer"),
        ("backend.workers", "many", "backend.workers: Input should be a valid integer"),
        ("backend.log_level", "LOUD", "backend.log_level: 'LOUD' is not one of DEBUG"),
        ("prometheus.retention", "15 days", "prometheus.retention: '15 days' is not a duration"),
        ("nginx.client_max_body_sise", "10m", "nginx.client_max_body_sise: unknown key (did you "
                                              "mean client_max_body_size?)"),
        ("monitoring", True, "monitoring: unknown key"),
        ("roles", ["db", "cache"], "roles[1]: Input should be 'db', 'redis', 'app', 'web'"),
        ("version", "v1 .0", "version: 'v1 .0' is not a valid version tag"),
        ("paths.base_dir", "/opt/my app", "paths.base_dir: '/opt/my app' may hold only letters"),
        ("backend.cors_origins", ["*"], "backend.cors_origins[0]: must not contain '*'"),
        ("alertmanager.routes", [{"severity": "critical", "receivers": ["slack"]}],
         "alertmanager.routes[0].receivers: receiver slack is not configured"),
        ("app.build_args", {"BASE IMAGE": "x"}, "app.build_args: 'BASE IMAGE' is "
                                                "not a Dockerfile ARG name"),
        ("app.registry_username", "deploy", "app.registry_username: needs app.registry"),
    ],
)
def test_bad_setting_is_one_line_naming_file_host_and_key(tmp_path, capsys, key, value, expected):
    inventory = write_inventory(tmp_path, with_key(GOOD_STACK, key, value))
    code, err = run_check(capsys, inventory)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"rsdeploy: error: {inventory}: host rs1: "), err
    assert expected in err


def test_error_says_which_data_layer_set_the_bad_key(tmp_path, capsys):
    inventory = write_inventory(tmp_path, GOOD_STACK, host_data={"domain": "bad_domain"})
    code, err = run_check(capsys, inventory)
    assert code == 2 and err.endswith("(set in host data)"), err


def test_missing_required_setting(tmp_path, capsys):
    stack = {k: v for k, v in GOOD_STACK.items() if k != "tls"}
    code, err = run_check(capsys, write_inventory(tmp_path, stack))
    assert code == 2 and "host rs1: tls: required but not set" in err


def test_tls_certbot_needs_email(tmp_path, capsys):
    code, err = run_check(capsys, write_inventory(tmp_path, with_key(GOOD_STACK, "tls",
                                                                      {"mode": "certbot"})))
    assert code == 2 and "tls: tls.mode certbot needs tls.email" in err


def test_pull_delivery_needs_registry(tmp_path, capsys):
    stack = with_key(GOOD_STACK, "app", {"delivery": "pull"})
    code, err = run_check(capsys, write_inventory(tmp_path, stack))
    assert code == 2 and "app.registry: app.delivery pull needs app.registry" in err


def test_two_hosts_claiming_one_role(tmp_path, capsys):
    path = tmp_path / "two.py"
    path.write_text(f"stack = {GOOD_STACK!r}\n"
                    "residency = ([('a', {}), ('b', {'roles': ['db']})], stack)\n")
    code, err = run_check(capsys, path)
    assert code == 2 and f"{path}: host b: roles: role db is already carried by host a" in err


def test_hosts_of_one_stack_must_share_layout(tmp_path, capsys):
    path = tmp_path / "mixed.py"
    path.write_text(f"stack = {GOOD_STACK!r}\n"
                    "residency = ([('a', {'roles': ['db', 'redis', 'app', 'web'], 'address': '10.0.0.1'}),"
                    " ('b', {'roles': ['monitoring'], 'layout': 'systemd', 'address': '10.0.0.2'})],"
                    " stack)\n")
    code, err = run_check(capsys, path)
    assert code == 2 and "host b: layout: 'systemd' differs from host a's 'docker'" in err


def test_unreadable_inventory_and_broken_inventory(tmp_path, capsys):
    code, err = run_check(capsys, tmp_path / "nope.py")
    assert code == 2 and err.endswith("nope.py: inventory file not found")
    broken = tmp_path / "broken.py"
    broken.write_text("hosts = [\n")
    code, err = run_check(capsys, broken)
    assert code == 2 and "broken.py: cannot load inventory: SyntaxError" in err
    assert len(err.splitlines()) == 1


def test_untrusted_ca_file_is_rejected(tmp_path, capsys):
    (tmp_path / "ca.pem").write_text("not a certificate")
    stack = with_key(GOOD_STACK, "trusted_ca_certs", ["ca.pem"])
    code, err = run_check(capsys, write_inventory(tmp_path, stack))
    assert code == 2 and "trusted_ca_certs[0]:" in err and "not a readable PEM" in err


# --- secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RS_DB_PASSWORD": "short"},
         "environment RS_DB_PASSWORD: db_password: must be at least 12 characters"),
        ({"RS_REDIS_PASSWORD": "fifteen-chars!!"},
         "environment RS_REDIS_PASSWORD: redis_password: must be at least 16 characters"),
        ({"RS_SECRET_KEY": "x" * 40}, "secret_key: is a known weak value"),
        ({"RS_SECRET_KEY": "changeme"}, "secret_key: must be at least 32 characters"),
        ({"RS_SLACK_WEBHOOK_URL": "http://hooks.example/x"}, "slack_webhook_url: must be an https"),
    ],
)
def test_weak_secret_is_rejected_before_any_host(tmp_path, capsys, monkeypatch, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, err = run_check(capsys, Path("inventories/example_docker.py"))
    assert code == 2 and expected in err, err


def test_missing_secret_names_variable_and_file(tmp_path, capsys, monkeypatch):
    secrets = tmp_path / "secrets.yml"
    secrets.write_text("db_password: 'long-enough-password'\n")
    secrets.chmod(0o600)
    monkeypatch.delenv("RS_REDIS_PASSWORD", raising=False)
    code, err = run_check(capsys, Path("inventories/example_docker.py"), str(secrets))
    assert code == 2
    assert f"{secrets}: redis_password: missing secret, needed for Redis: set RS_REDIS_PASSWORD" in err


def test_unknown_secret_key_suggests_the_right_one(tmp_path, capsys):
    secrets = tmp_path / "secrets.yml"
    secrets.write_text("db_pasword: 'long-enough-password'\n")
    secrets.chmod(0o600)
    code, err = run_check(capsys, Path("inventories/example_docker.py"), str(secrets))
    assert code == 2 and f"{secrets}: db_pasword: unknown secret (did you mean db_password?)" in err


def test_secrets_file_from_environment_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RS_SECRETS_FILE", str(tmp_path / "missing.yml"))
    code, err = run_check(capsys, Path("inventories/example_docker.py"), None)
    assert code == 2 and "missing.yml: cannot read secrets file" in err


def test_world_readable_secrets_file_warns(tmp_path, capsys):
    secrets = tmp_path / "secrets.yml"
    secrets.write_text(Path(EXAMPLE_SECRETS).read_text())
    secrets.chmod(0o644)
    load_secrets(str(secrets), env={})
    assert "readable by others (chmod 600 it)" in capsys.readouterr().err


def test_environment_secret_wins_over_file():
    hosts = load_example("example_docker", env={"RS_DB_PASSWORD": "from-the-environment-1"})
    assert next(iter(hosts.values())).secrets.db_password == "from-the-environment-1"


def test_secrets_never_appear_in_repr_or_str():
    hs = next(iter(load_example("example_docker").values()))
    for text in (repr(hs.secrets), str(hs.secrets), repr(hs)):
        assert hs.secrets.db_password not in text
        assert hs.secrets.secret_key not in text


def test_cli_error_has_no_traceback_in_a_real_process(tmp_path):
    inventory = write_inventory(tmp_path, with_key(GOOD_STACK, "layout", "dokcer"))
    proc = subprocess.run(
        [sys.executable, "-m", "rsdeploy.cli", "check", "-i", str(inventory),
         "--secrets", EXAMPLE_SECRETS],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# --- topology ---------------------------------------------------------------------------------


def test_multi_host_endpoints_follow_the_topology():
    hosts = load_example("example_multi")
    app = hosts["app1.example.org"]
    assert app.endpoint("db", "db") == "10.0.0.21"  # the db host's address
    assert app.endpoint("app", "backend") == "backend"  # its own Compose service
    assert hosts["web1.example.org"].endpoint("app", "backend") == "10.0.0.22"
    assert app.reach("db1.example.org", "db", 5432) == "10.0.0.21:5432"
    assert [peer.name for peer in app.peers("db")] == ["db1.example.org"]
    systemd = next(iter(load_example("example_systemd").values()))
    assert systemd.endpoint("db", "db") == "127.0.0.1"


def test_multi_host_stack_needs_ip_addresses(tmp_path, capsys):
    path = tmp_path / "multi.py"
    path.write_text(f"stack = {GOOD_STACK!r}\n"
                    "residency = ([('a', {'roles': ['db', 'redis', 'app', 'web'], "
                    "'address': '10.0.0.1'}), ('b', {'roles': ['monitoring']})], stack)\n")
    code, err = run_check(capsys, path)
    assert code == 2 and "host b: address: 'b' is not an IP address" in err


def test_bundle_delivery_needs_bundle_dir(tmp_path, capsys):
    stack = with_key(GOOD_STACK, "app", {"delivery": "bundle"})
    code, err = run_check(capsys, write_inventory(tmp_path, stack))
    assert code == 2 and "app.bundle_dir: app.delivery bundle needs app.bundle_dir" in err
