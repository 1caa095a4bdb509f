"""Settings and secrets validation: every bad input is one line naming file, host and key, exit 2,
no traceback, before any host is contacted."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rsdeploy.roles import backend, postgres
from rsdeploy.cli import main
from rsdeploy.stack import load_inventory
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


def write_two_hosts(tmp_path: Path, a: dict, b: dict) -> Path:
    """An inventory with hosts ``a`` (10.0.0.1) and ``b`` (10.0.0.2) sharing GOOD_STACK; ``a``
    and ``b`` are their host data."""
    hosts = [("a", {**a, "address": "10.0.0.1"}), ("b", {**b, "address": "10.0.0.2"})]
    path = tmp_path / "two_hosts.py"
    path.write_text(f"stack = {GOOD_STACK!r}\nresidency = ({hosts!r}, stack)\n")
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


def test_several_app_hosts_need_a_web_host_of_their_own(tmp_path, capsys):
    path = tmp_path / "apps.py"
    path.write_text(f"stack = {GOOD_STACK!r}\n"
                    "residency = ([('a', {'roles': ['db', 'redis', 'app', 'web'], 'address': '10.0.0.1'}),"
                    " ('b', {'roles': ['app'], 'address': '10.0.0.2'})], stack)\n")
    code, err = run_check(capsys, path)
    assert code == 2 and f"{path}: host a: roles: carries web and app while 2 hosts carry app" in err
    assert len(err.splitlines()) == 1


def test_several_app_hosts_share_out_the_app():
    hosts = load_example("example_multi")
    apps = [hs for hs in hosts.values() if hs.has_role("app")]
    assert [hs.name for hs in apps] == backend.app_hosts(apps[0]) == ["app1.example.org",
                                                                      "app2.example.org"]
    # Celery beat and the forward migration on the first; every app host in pg_hba.
    assert [backend.runs_beat(hs) for hs in apps] == [True, False]
    assert [u.service for u in backend.release_units(apps[1])] == ["backend", "celery-worker"]
    assert [r.target for r in backend.app_env_reactions(apps[1])] == ["backend", "celery-worker",
                                                                       "migrate"]
    assert postgres.app_client_addresses(hosts["db1.example.org"]) == ["10.0.0.22/32", "10.0.0.25/32"]


def test_hosts_of_one_stack_must_share_layout(tmp_path, capsys):
    path = write_two_hosts(tmp_path, {"roles": ["db", "redis", "app", "web"]},
                           {"roles": ["monitoring"], "layout": "systemd"})
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


# --- issue 9: every class of bad input, one line, exit 2, before any host ------------------------

#: A well-formed value for every text setting that has no text default (walked below).
TEXT_EXAMPLES = {
    "trusted_ca_certs": "ca.pem", "alertmanager.email.to": "a@example.org",
    "base.deploy_user_keys": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA ops@x",
    "base.extra_packages": "jq", "backend.cors_origins": "https://scheduler.example.org",
    "extra_domains": "www.scheduler.example.org", "backend.resources.memory": "2g",
    "app.build_args": "value", "backend.extra_env": "value",
    "address": "10.0.0.1", "app.registry": "registry.example.org:5000/residency",
    "app.registry_username": "deploy", "app.source_repo": "../app", "app.bundle_dir": "bundles",
    "tls.email": "ops@example.org", "tls.cert_path": "/etc/ssl/site.pem",
    "tls.key_path": "/etc/ssl/site.key", "tls.acme_server": "https://acme.example.org/dir",
    "nginx.resolver": "10.0.0.53", "alertmanager.email.sender": "alerts@example.org",
    "alertmanager.email.smtp_host": "smtp.example.org",
    "alertmanager.email.smtp_username": "alerts", "alertmanager.slack.channel": "#rs-alerts",
    "maintenance_message": "Back at 03:00",
}
#: Text settings that may hold several lines (env files carry them; see tests/test_app_env.py).
MULTI_LINE = {"backend.extra_env"}


def _text_settings() -> list[tuple[str, str]]:
    """(dotted key, kind) of every text setting of the model: kind is "str", "list" or "dict"."""
    from pydantic import BaseModel

    from rsdeploy.stack.settings import StackSettings

    found = []

    def kinds(annotation) -> set[str]:
        origin = getattr(annotation, "__origin__", None)
        if annotation is str or origin is str:
            return {"str"}
        if origin in (list, dict):
            inner = kinds(annotation.__args__[-1])
            return {origin.__name__} if "str" in inner else set()
        return set().union(*(kinds(arg) for arg in getattr(annotation, "__args__", ())))

    def walk(model, prefix: str) -> None:
        for name, info in model.model_fields.items():
            subs = [arg for arg in (*getattr(info.annotation, "__args__", ()), info.annotation)
                    if isinstance(arg, type) and issubclass(arg, BaseModel)]
            for sub in subs:
                walk(sub, f"{prefix}{name}.")
            found.extend((prefix + name, kind) for kind in kinds(info.annotation))

    walk(StackSettings, "")
    return sorted(set(found))


def _example(key: str):
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    from rsdeploy.stack.settings import StackSettings

    if key in TEXT_EXAMPLES:
        return TEXT_EXAMPLES[key]
    if key in GOOD_STACK:
        return GOOD_STACK[key]
    node = StackSettings  # a model class, or a default value once one is found
    for part in key.split("."):
        if not isinstance(node, type):
            node = getattr(node, part)
            continue
        info = node.model_fields[part]
        models = [arg for arg in (*getattr(info.annotation, "__args__", ()), info.annotation)
                  if isinstance(arg, type) and issubclass(arg, BaseModel)]
        default = info.get_default(call_default_factory=True)
        node = default if default not in (None, PydanticUndefined) or not models else models[0]
    value = node[0] if isinstance(node, list) and node else node
    assert isinstance(value, str), f"add a well-formed value of {key} to TEXT_EXAMPLES"
    return value


def _stack_with(key: str, value) -> dict:
    stack = with_key(GOOD_STACK, key, value)
    if key.startswith("tls."):
        stack["tls"] = {"mode": "provided", "cert_path": "/etc/ssl/a.pem",
                        "key_path": "/etc/ssl/a.key", key.split(".")[1]: value}
    if key.startswith("alertmanager.email."):
        stack["alertmanager"]["email"] = {"to": ["a@example.org"], "sender": "b@example.org",
                                          "smtp_host": "smtp.example.org",
                                          key.split(".")[2]: value}
    if key == "alertmanager.slack.channel":
        stack["alertmanager"] = {"slack": {"channel": value}}
    if key == "app.registry_username":
        stack["app"]["registry"] = "registry.example.org"
    return stack


def _values(key: str, kind: str, text: str):
    return {"str": text, "list": [text], "dict": {"NAME": text}}[kind]


TEXT_SETTINGS = _text_settings()
#: The text settings that must be one line: every one but the multi-line ones.
ONE_LINE_SETTINGS = [(key, kind) for key, kind in TEXT_SETTINGS if key not in MULTI_LINE]


def test_every_text_setting_has_a_well_formed_example(tmp_path, capsys):
    """The examples below are accepted, so each refusal is the control character's doing."""
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    stacks = [_stack_with(key, _values(key, kind, _example(key))) for key, kind in TEXT_SETTINGS]
    for i, stack in enumerate(stacks):
        inventory = write_inventory(tmp_path, stack, name=f"good{i}")
        code = main(["render", "-i", str(inventory), "--secrets", EXAMPLE_SECRETS,
                     "--out", str(tmp_path / "out")])
        assert code == 0, (TEXT_SETTINGS[i], capsys.readouterr().err)


@pytest.mark.parametrize(("key", "kind"), ONE_LINE_SETTINGS, ids=lambda v: str(v))
@pytest.mark.parametrize("ending", ["\n", "\t"], ids=repr)
def test_every_one_line_setting_refuses_a_control_character(tmp_path, capsys, key, kind, ending):
    """Anchored at both ends: a well-formed value with a line break or tab after it is refused,
    whatever the setting: one line naming the key. (Other characters: test_hostile_input.)"""
    stack = _stack_with(key, _values(key, kind, _example(key) + ending))
    code, err = run_check(capsys, write_inventory(tmp_path, stack))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"host rs1: {key}" in err, err


@pytest.mark.parametrize(("key", "kind"), [(key, kind) for key, kind in TEXT_SETTINGS
                                           if key in MULTI_LINE], ids=lambda v: str(v))
@pytest.mark.parametrize("ending", ["\n", "\t"], ids=repr)
def test_multi_line_settings_accept_a_line_break_and_a_tab(tmp_path, capsys, key, kind, ending):
    """What the one-line settings refuse, the multi-line ones keep: their files carry it (read
    back by Docker Compose in tests/test_app_env.py and tests/test_hostile_input.py)."""
    stack = _stack_with(key, _values(key, kind, _example(key) + ending))
    code, err = run_check(capsys, write_inventory(tmp_path, stack))
    assert (code, err) == (0, ""), err


@pytest.mark.parametrize(("key", "name"), [("backend.extra_env", "A\n"),
                                           ("app.build_args", "ARG\n")])
def test_names_in_mappings_are_anchored_too(tmp_path, capsys, key, name):
    code, err = run_check(capsys, write_inventory(tmp_path, with_key(GOOD_STACK, key, {name: "x"})))
    assert code == 2 and f"{key}: {name!r} is not" in err, err


@pytest.fixture
def no_pyinfra(monkeypatch):
    """Fails the test if the CLI starts pyinfra (which would contact the hosts)."""
    started = []

    def run(command, *args, **kwargs):
        started.append(command)
        raise AssertionError(f"pyinfra started: {command}")

    monkeypatch.setattr("rsdeploy.cli.subprocess.run", run)
    return started


def run_deploy(capsys, inventory: Path, *extra: str) -> tuple[int, str]:
    code = main(["deploy", "-i", str(inventory), "--secrets", EXAMPLE_SECRETS, "--dry", *extra])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(("key", "port", "expected"), [
    ("redis.port", 5432, "redis.port: 5432 is already postgres.port on this host"),
    ("nginx.https_port", 80, "nginx.https_port: 80 is already nginx.http_port on this host"),
    ("prometheus.port", 8000, "prometheus.port: 8000 is already backend.port on this host"),
    ("exporters.node_exporter.port", 3000,
     "exporters.node_exporter.port: 3000 is already frontend.port on this host"),
    ("log_shipper.alloy_port", 9093,
     "log_shipper.alloy_port: 9093 is already alertmanager.port on this host"),
    ("grafana.port", 9096, "grafana.port: 9096 is already Loki's gRPC port (fixed) on this host"),
])
def test_two_services_on_one_port_of_one_host(tmp_path, capsys, no_pyinfra, key, port,
                                               expected):
    inventory = write_inventory(tmp_path, with_key(GOOD_STACK, key, port))
    for code, err in (run_check(capsys, inventory), run_deploy(capsys, inventory)):
        assert code == 2 and err == f"rsdeploy: error: {inventory}: host rs1: {expected}"
    assert no_pyinfra == []


def test_one_port_on_two_hosts_and_ports_of_what_does_not_run_are_fine(tmp_path, capsys):
    stack = with_key(with_key(GOOD_STACK, "redis.port", 8000), "prometheus.enabled", False)
    path = tmp_path / "two.py"
    path.write_text(f"stack = {with_key(stack, 'exporters.cadvisor.port', 9090)!r}\n"
                    "residency = ([('a', {'roles': ['db', 'redis', 'web', 'monitoring'], "
                    "'address': '10.0.0.1'}), ('b', {'roles': ['app'], 'address': '10.0.0.2'})],"
                    " stack)\n")
    assert main(["render", "-i", str(path), "--secrets", EXAMPLE_SECRETS,
                 "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(("extra", "expected"), [
    (["scheduler.example.org"], "extra_domains: 'scheduler.example.org' is the domain already"),
    (["www.example.org", "www.example.org"], "extra_domains: 'www.example.org' is listed twice"),
])
def test_certificate_and_site_names_are_each_listed_once(tmp_path, capsys, extra, expected):
    code, err = run_check(capsys, write_inventory(tmp_path, with_key(GOOD_STACK, "extra_domains",
                                                                      extra)))
    assert code == 2 and expected in err, err


def test_the_served_names_are_the_same_on_every_host(tmp_path, capsys):
    path = write_two_hosts(tmp_path, {"roles": ["db", "redis", "app", "monitoring"]},
                           {"roles": ["web"], "extra_domains": ["www.example.org"]})
    code, err = run_check(capsys, path)
    assert code == 2 and "host b: extra_domains: ['www.example.org'] differs from host a's []" \
        in err, err


def test_two_ca_files_of_one_name_and_a_ca_file_that_is_no_text(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    stack = with_key(GOOD_STACK, "trusted_ca_certs", ["a/ca.pem", "b/ca.pem"])
    code, err = run_check(capsys, write_inventory(tmp_path, stack))
    assert code == 2 and "'b/ca.pem' and 'a/ca.pem' would both be installed as ca.crt" in err
    (tmp_path / "bin.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n\xff\xfe\n")
    stack = with_key(GOOD_STACK, "trusted_ca_certs", ["bin.pem"])
    code, err = run_check(capsys, write_inventory(tmp_path, stack, name="bin"))
    assert code == 2 and "trusted_ca_certs[0]:" in err and "(UTF-8 text" in err


@pytest.mark.parametrize("name", ["../etc", "a b", "@local", "rs1,rs2", "rs*", "rs1\n", 7])
def test_host_name_that_is_no_host_name(tmp_path, capsys, name):
    path = tmp_path / "hosts.py"
    path.write_text(f"residency = ([({name!r}, {{}})], {GOOD_STACK!r})\n")
    code, err = run_check(capsys, path)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "not a host name or IP address" in err or "cannot load inventory" in err, err


@pytest.mark.parametrize(("body", "expected"), [
    ("residency = ([('rs1', {})], [1, 2])\n", "group 'residency''s data must be a mapping, not list"),
    (f"residency = ([('rs1', {{1: 'x'}})], {GOOD_STACK!r})\n", "host rs1: 1: a data key must be a string"),
    ("x = undefined_name\n", "cannot load inventory: line 1: NameError: name 'undefined_name' is not "
                             "defined"),
    ("import sys\nsys.exit(3)\n", "cannot load inventory: line 2: SystemExit: 3"),
    ("raise ValueError('two\\nlines')\n", "cannot load inventory: line 1: ValueError: two lines"),
    (f"residency = ([('rs1', {{'ssh_hostname': 'x\\nProxyCommand sh'}})], {GOOD_STACK!r})\n",
     "host rs1: ssh_hostname: 'x\\nProxyCommand sh' is not one word of text"),
    (f"residency = ([('rs1', {{'ssh_key': '/my keys/id'}})], {GOOD_STACK!r})\n",
     "host rs1: ssh_key: '/my keys/id' is not one word of text"),
])
def test_inventory_that_breaks_is_one_line(tmp_path, capsys, body, expected):
    path = tmp_path / "inv.py"
    path.write_text(body)
    code, err = run_check(capsys, path)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"rsdeploy: error: {path}: {expected}"), err


def test_render_out_that_is_a_file_or_cannot_be_written(tmp_path, capsys):
    inventory = write_inventory(tmp_path, GOOD_STACK)
    taken = tmp_path / "taken"
    taken.write_text("")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "rs1").write_text("")
    for out, expected in ((taken, f"--out {taken}: exists and is not a directory"),
                          (tmp_path / "out", f"--out {tmp_path / 'out'}: cannot write "),
                          (Path("/proc/rsdeploy-out"), "--out /proc/rsdeploy-out: cannot write")):
        code = main(["render", "-i", str(inventory), "--secrets", EXAMPLE_SECRETS,
                     "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("nginx.http_port", True, "nginx.http_port: True is a boolean, which this setting does not take"),
    ("base.firewall_allow", [22, True], "base.firewall_allow: True is a boolean"),
    ("extra_domains", {"www.example.org"}, "extra_domains: a set has no order"),
    ("backend.extra_env", {"A": "\ud800"}, "backend.extra_env: '\\ud800' holds a lone surrogate"),
    ("nginx.resources", {"cpus": "inf"}, "nginx.resources.cpus: Input should be a finite number"),
    ("nginx.resources", {"cpus": 1e9}, "nginx.resources.cpus: Input should be less than or equal to 1024"),
    ("nginx.proxy_read_timeout", -1, "nginx.proxy_read_timeout: Input should be greater than or equal to 1"),
    ("postgres.max_connections", 10**20, "postgres.max_connections: Input should be less than or equal"),
    ("docker.log_max_file", 0, "docker.log_max_file: Input should be greater than or equal to 1"),
    ("compose.subnet", "10.0.0.0/32", "compose.subnet: '10.0.0.0/32' is not a private IPv4 network"),
    ("compose.subnet", "fd00::/64", "is not a private IPv4 network"),
    ("compose.subnet", "8.8.8.0/24", "is not a private IPv4 network"),
    ("address", "fe80::1%eth0", "address: 'fe80::1%eth0' is not a host name or IP address"),
    ("base.timezone", "../../etc/shadow", "base.timezone: '../../etc/shadow' is not a time zone"),
    ("nginx.resolver", "1.1.1.1; include /etc/shadow", "nginx.resolver: '1.1.1.1; include"),
    ("alertmanager.slack", {"channel": "{{ .CommonLabels }}"}, "alertmanager.slack.channel:"),
    ("alertmanager.email", {"to": ["a{{x}}@example.org"], "sender": "a@example.org",
                            "smtp_host": "smtp.example.org"}, "alertmanager.email.to[0]:"),
    ("backend.celery_queues", ["default,evil"], "backend.celery_queues[0]: 'default,evil' is not"),
    ("backend.image", "backend:latest", "backend.image: 'backend:latest' is not an image repository"),
    ("app.source_repo", "--upload-pack=touch /tmp/x", "app.source_repo: '--upload-pack=touch /tmp/x' "
                                                      "starts with '-'"),
    ("app.registry_username", "   ", "app.registry_username: '   ' is blank"),
    ("domain", "10.0.0.1", "domain: '10.0.0.1' is not a valid domain name"),
    ("nginx.http_port", 10**400, "nginx.http_port: Input should be less than or equal to 65535 (got"),
])
def test_values_that_would_not_be_kept_as_written(tmp_path, capsys, key, value, expected):
    code, err = run_check(capsys, write_inventory(tmp_path, with_key(GOOD_STACK, key, value)))
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert len(err) < 400, err  # a huge value is shown cut short


def test_a_partial_exporter_section_keeps_the_other_defaults(tmp_path, capsys):
    stack = with_key(GOOD_STACK, "exporters", {"cadvisor": {"enabled": False},
                                               "node_exporter": {"port": 9101}})
    hosts = load_inventory(str(write_inventory(tmp_path, stack)), EXAMPLE_SECRETS, env={})
    exporters = hosts["rs1"].stack.exporters
    assert exporters.cadvisor.image == "ghcr.io/google/cadvisor:0.53.0"
    assert (exporters.node_exporter.port, exporters.node_exporter.image) == (
        9101, "prom/node-exporter:v1.9.1")


# --- --version and deploy: refused before pyinfra, and passed to it as written -----------------


@pytest.mark.parametrize("version", ["v1.0.0\n", "v1 .0", "-v1", "", "v1\u2028"])
def test_bad_version_argument_stops_deploy_before_pyinfra(capsys, no_pyinfra, version):
    code, err = run_deploy(capsys, Path("inventories/example_docker.py"), f"--version={version}")
    assert code == 2 and len(err.splitlines()) == 1 and "version:" in err, err
    assert no_pyinfra == []


@pytest.mark.parametrize("version", ["1.0", "100", "true", "null"])
def test_version_reaches_pyinfra_as_text(capsys, monkeypatch, version):
    """pyinfra's --data reads 1.0 as a number and true as a boolean: the CLI passes JSON."""
    from pyinfra_cli.util import parse_cli_arg

    commands = []
    monkeypatch.setattr("rsdeploy.cli.subprocess.run",
                        lambda command, **kwargs: commands.append(command) or
                        subprocess.CompletedProcess(command, 0))
    code, err = run_deploy(capsys, Path("inventories/example_docker.py"), "--version", version)
    assert code == 0, err
    data = commands[0][commands[0].index("--data") + 1]
    assert parse_cli_arg(data.partition("=")[2]) == version


def test_missing_bundle_stops_deploy_before_pyinfra(tmp_path, capsys, no_pyinfra):
    code, err = run_deploy(capsys, write_inventory(tmp_path, GOOD_STACK))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"app.bundle_dir: cannot read {tmp_path}/bundles/manifest.json: No such file" in err


# --- secrets: text exactly as written, or refused ------------------------------------------------


@pytest.mark.parametrize(("line", "expected"), [
    ("db_password: 0123456701234567", "db_password: YAML reads the unquoted 0123456701234567 as a "
                                      "number (5744368105847): quote the value to keep it as written"),
    ("db_password: 1234_5678_9012_345", "db_password: YAML reads the unquoted 1234_5678_9012_345 as a number "
                                        "(123456789012345)"),
    ("db_password: yes", "db_password: YAML reads the unquoted yes as a boolean (True)"),
    ("db_password: 2001-12-14", "db_password: YAML reads the unquoted 2001-12-14 as a date (2001-12-14)"),
    ("db_password: 1:20", "db_password: YAML reads the unquoted 1:20 as a number (80)"),
    ("db_password: ~", "db_password: YAML reads the unquoted ~ as no value"),
    ("db_password:", "db_password: has no value"),
    ("db_password: !!binary aGVsbG8=", "db_password: has the YAML tag !!binary: remove the tag and quote"),
    ("db_password: [a, b]", "db_password: must be a string, not a list"),
    ("db_password: '   '", "db_password: is blank (empty or only whitespace)"),
    ('db_password: "a\\0bcdefghijklm"', "db_password: holds a NUL character"),
    ("db_password: ' padded-password '", "db_password: begins or ends with whitespace"),
    ("db_password: 'first-password'\ndb_password: 'other-password'",
     "db_password: set twice (lines 1 and 2): keep one"),
    ("db_password:\t'x'", "not valid YAML: line 1, column 13: found character '\\t' that cannot "
                          "start any token"),
    ("db_password: \"x\x01\"", "not valid YAML: line 1: character #x0001: special characters are "
                               "not allowed"),
    ("- a", "must be a mapping of secret names to values"),
])
def test_secrets_file_value_is_text_as_written_or_refused(tmp_path, capsys, line, expected):
    secrets = tmp_path / "secrets.yml"
    secrets.write_text(line + "\n")
    secrets.chmod(0o600)
    code, err = run_check(capsys, Path("inventories/example_docker.py"), str(secrets))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"rsdeploy: error: {secrets}: {expected}"), err


def test_secrets_file_that_is_not_utf8(tmp_path, capsys):
    secrets = tmp_path / "secrets.yml"
    secrets.write_bytes(b"db_password: '\xff'\n")
    secrets.chmod(0o600)
    code, err = run_check(capsys, Path("inventories/example_docker.py"), str(secrets))
    assert code == 2 and err.endswith("not UTF-8 text (byte 0xff at offset 14)"), err


@pytest.mark.parametrize(("env", "expected"), [
    ({"RS_REDIS_PASSWORD": "    "}, "environment RS_REDIS_PASSWORD: redis_password: is blank"),
    ({"RS_REDIS_PASSWORD": "redis-password-long\n"}, "redis_password: begins or ends with"),
    ({"RS_REDIS_PASSWORD": "redis-password-\udcff"}, "redis_password: is not UTF-8 text"),
    ({"RS_SLACK_WEBHOOK_URL": "https://"}, "slack_webhook_url: must be an https:// URL with a "
                                           "host: has no host"),
    ({"RS_SLACK_WEBHOOK_URL": "https://hooks.example/a b"}, "holds a space or control character"),
    ({"RS_PAGERDUTY_ROUTING_KEY": " \t "}, "pagerduty_routing_key: is blank"),
    ({"RS_REGISTRY_PASSWORD": "registry-pw\r"}, "registry_password: begins or ends with"),
])
def test_secret_empty_in_effect_is_refused(capsys, monkeypatch, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, err = run_check(capsys, Path("inventories/example_docker.py"))
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


def test_every_secrets_file_readable_by_others_warns_whatever_its_name(tmp_path, capsys):
    secrets = tmp_path / "secrets.example.yml"
    secrets.write_text(Path(EXAMPLE_SECRETS).read_text())
    secrets.chmod(0o644)
    load_secrets(str(secrets), env={})
    assert "readable by others (chmod 600 it)" in capsys.readouterr().err
    load_secrets(EXAMPLE_SECRETS, env={})  # the tests' private copy
    assert capsys.readouterr().err == ""
