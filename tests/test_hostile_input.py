"""Hostile input, generated with Hypothesis: every text setting and every secret either reaches
each file that carries it exactly, read back by that file's real reader, or is refused with exit
code 2 and one line on stderr; a well-formed value is never refused (each property draws
well-formed values beside hostile ones, so a validator refusing everything fails). Settings that
no rendered file carries (they go to the deploy's operations) are read back from the validated
settings the deploy reads. Generated inventories never end in a traceback, and a refused one
never starts pyinfra.

The CLI runs in-process (``rsdeploy.cli.main``): ``render`` writes the files and the test reads
them back. Readers: PyYAML for Compose, Prometheus and Alertmanager files; Docker Compose v2
(``docker compose config``) for env files; redis-server for redis.conf; json for the
redis-exporter's password map; bash for shell words; the files themselves for secret files;
the unit file's own key=value lines for systemd timers.
Slow readers get fewer examples; RS_HYPOTHESIS_SCALE=4 runs four times as many (a deeper
search, minutes instead of seconds). Each family's cases are counted and printed at the end of
the module (``pytest -s``); examples that once broke the code are kept as ``@example``.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import re
import shutil
import shlex
import subprocess
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rsdeploy import cli, escape
from rsdeploy.roles.backend import MANAGED_ENV
from rsdeploy.secrets import load_secrets
from rsdeploy.stack import load_inventory
from rsdeploy.stack.docker.project import compose_binary
from tests.conftest import EXAMPLE_SECRETS
from tests.test_app_env import compose_environment
from tests.test_postgres_redis import _bulk, _resp, running_redis

#: Hypothesis for this module: no example database in the repository, no per-example deadline
#: (real readers start processes), and capsys may be shared by the examples of one test.
HYPOTHESIS = dict(database=None, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.too_slow])
#: A factor on every max_examples below (RS_HYPOTHESIS_SCALE, default 1).
SCALE = float(os.environ.get("RS_HYPOTHESIS_SCALE", "1"))


def examples(count: int) -> int:
    return max(1, round(count * SCALE))


#: Cases run per field family, by outcome ("kept" exactly or "refused"), printed at the end.
CASES: dict[str, Counter] = {}

BASE = "/opt/residency-scheduler"
REGISTRY = "registry.example.org:5000/residency"
#: One host with every role and every receiver (so that every setting lands in some file).
STACK = {
    "layout": "docker",
    "version": "v1.0.0",
    "domain": "scheduler.example.org",
    "tls": {"mode": "self-signed"},
    "app": {"delivery": "pull", "registry": REGISTRY, "registry_username": "deploy"},
    "alertmanager": {
        "email": {"to": ["oncall@example.org"], "sender": "alerts@example.org",
                  "smtp_host": "smtp.example.org", "smtp_username": "alerts@example.org"},
        "slack": {"channel": "#rs-alerts"},
        "pagerduty": {},
    },
}
#: The SSH port of every generated host: closed, so that any contact would fail loudly.
HOST_DATA = {"ssh_hostname": "127.0.0.1", "ssh_port": 1}


# --- running the CLI ---------------------------------------------------------------------------

_WORK = Path(tempfile.mkdtemp(prefix="rsdeploy-hostile-"))
atexit.register(shutil.rmtree, _WORK, ignore_errors=True)


@contextmanager
def case():
    """A fresh directory for one generated case, removed after it (pyinfra caches inventory code
    by file name: every inventory gets a path of its own). Example: ``with case() as where:``
    """
    with tempfile.TemporaryDirectory(dir=_WORK) as name:
        yield Path(name)


def inventory(stack: Any, where: Path, hosts: Any = None) -> Path:
    """An inventory file in ``where`` whose group data is ``stack`` (any Python objects, through
    pickle). Example: ``inventory({**STACK, "domain": "x.org\\n"}, where)``
    """
    hosts = [("rs1", HOST_DATA)] if hosts is None else hosts
    path = where / "site.py"
    data = pickle.dumps((stack, hosts))
    path.write_text(f"import pickle\nstack, hosts = pickle.loads({data!r})\n"
                    "residency = (hosts, stack)\n")
    return path


@dataclass
class Run:
    code: int
    out: str
    err: list[str]


def run(capsys, *argv: str) -> Run:
    """``rsdeploy ARGV`` in this process; a traceback fails the test by itself."""
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err.strip().splitlines())


def render(capsys, stack: Any, where: Path, secrets: str = EXAMPLE_SECRETS) -> tuple[Run, Path]:
    """``rsdeploy render`` of ``stack`` in ``where``; returns the run and the host's tree."""
    result = run(capsys, "render", "-i", str(inventory(stack, where)), "--secrets", secrets,
                 "--out", str(where / "out"))
    return result, where / "out" / "rs1"


def assert_refused(result: Run, key: str) -> None:
    """Exit code 2 and exactly one line on stderr, naming ``key``."""
    assert result.code == 2, (result.code, result.err)
    assert len(result.err) == 1, result.err
    assert result.err[0].startswith("rsdeploy: error: ") and key in result.err[0], result.err


def kept(result: Run, key: str, well_formed: bool) -> bool:
    """Whether ``result`` kept the value (the caller then reads it back): a refusal is exit code 2
    and one line naming ``key``, and a ``well_formed`` value is never refused."""
    if result.code != 0 and not well_formed:
        assert_refused(result, key)
        return False
    assert result.code == 0 and result.err == [], result.err
    return True


def assert_no_output(result: Run) -> None:
    assert result.err == [], result.err


def tally(family: str, kept: bool) -> None:
    CASES.setdefault(family, Counter())["kept" if kept else "refused"] += 1


@pytest.fixture(scope="module", autouse=True)
def report_cases():
    yield
    print("\ngenerated cases per field family (kept exactly / refused with one line):")
    for family, outcomes in CASES.items():
        print(f"  {family:40} {outcomes['kept'] + outcomes['refused']:4}  "
              f"kept {outcomes['kept']:3}  refused {outcomes['refused']:3}")


# --- generated text ----------------------------------------------------------------------------

#: Characters that break a careless file or command line: line breaks and other control
#: characters, Unicode line separators, a lone surrogate, quotes, shell and template syntax.
HOSTILE = ["\n", "\r", "\t", "\0", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\u2028", "\u2029",
           "\ud800", " ", '"', "'", "`", "$", "\\", "#", "%", "{{", "}}", ";", ":", ",", "/", "@",
           "*", "?", "[", "]", "=", "&", "|", "<", ">", "~", "!", "ä", "😈", "\u200b", "\ufeff",
           "..", "-", "${HOME}", "$(id)", "A"]


def _put(value: str, piece: str, where: int) -> str:
    at = where % (len(value) + 1)
    return value[:at] + piece + value[at:]


def mutated(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Well-formed values with hostile characters put in (at either end or inside), with a
    trailing newline, or arbitrary text."""
    pieces = st.lists(st.sampled_from(HOSTILE), min_size=1, max_size=3).map("".join)
    return st.one_of(
        st.builds(_put, valid, pieces, st.integers(min_value=0)),
        valid.map(lambda value: value + "\n"),
        st.lists(st.sampled_from([*HOSTILE, "a", "b", "0", "."]), max_size=8).map("".join),
    )


def _put_item(items: list, item, where: int) -> list:
    at = where % (len(items) + 1)
    return [*items[:at], item, *items[at:]]


def hostile(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Well-formed values and mutated ones."""
    return st.one_of(valid, mutated(valid))


def regex(pattern: str) -> st.SearchStrategy[str]:
    return st.from_regex(pattern, fullmatch=True)


_LABEL = regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?")
DOMAINS = st.builds(lambda labels, top: ".".join([*labels, top]),
                    st.lists(_LABEL, min_size=1, max_size=3), regex(r"[a-z]{2,6}"))
NAMES = regex(r"[a-z_][a-z0-9_-]{0,15}")
TAGS = regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,15}")
EMAILS = regex(r"[A-Za-z0-9.!#$%&'*+/=?^_`|~-]{1,10}@[a-z0-9-]{1,8}\.[a-z]{2,4}")
IMAGES = regex(r"[a-z0-9]{1,8}(/[a-z0-9]{1,8})?(:[A-Za-z0-9_.-]{1,8})?")
REPOSITORIES = regex(r"[a-z0-9]{1,8}([._-][a-z0-9]{1,8})?(/[a-z0-9]{1,8})?")
REGISTRIES = st.builds(lambda host, port, path: f"{host}{port}{path}", DOMAINS,
                       st.sampled_from(["", ":5000", ":443"]), regex(r"(/[a-z0-9]{1,8})?"))
DURATIONS = regex(r"([1-9][0-9]{0,2}(ms|s|m|h|d|w|y)){1,3}")
SIZES = regex(r"[1-9][0-9]{0,3}(m|g|M|G|mb|k)")
SLACK_CHANNELS = regex(r"#[a-z0-9._-]{1,20}")
HOSTS = st.one_of(DOMAINS, st.ip_addresses().map(str))
#: One line of any text (no control character, no lone surrogate).
LINES = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1,
                max_size=24)
QUEUES = regex(r"[A-Za-z0-9_.-]{1,12}")
SUBNETS = st.sampled_from(["10.1.0.0/16", "192.168.7.0/24", "172.20.0.0/26"])
TIME_ZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires",
                              "Etc/GMT+5"])
PACKAGES = regex(r"[a-z0-9][a-z0-9+.-]{1,12}")
CALENDARS = st.sampled_from(["daily", "*-*-* 02:30:00 UTC", "Mon *-*-* 03:00"])
URLS = st.builds("https://{}/directory".format, DOMAINS)
ORIGINS = st.builds("https://{}{}".format, DOMAINS, st.sampled_from(["", ":8443"]))
#: Free text with every kind of character but NUL and lone surrogates (refused: no file or
#: environment can carry them).
TEXT = st.lists(st.one_of(st.characters(blacklist_categories=("Cs",)), st.sampled_from(HOSTILE)),
               max_size=30).map("".join)
#: Passwords: TEXT (often too short or blank: refused), or TEXT amid ordinary characters.
PASSWORDS = st.one_of(TEXT, TEXT.map(lambda text: f"Pw-0123456789abc{text}-end"))
#: Passwords every reader takes: 16 to 40 printable ASCII characters, no space or quote.
GOOD_PASSWORD = re.compile(r"[A-Za-z0-9!#%*+,./:;=?@^_~-]{16,40}")
GOOD_PASSWORDS = regex(GOOD_PASSWORD.pattern)
#: TEXT that UTF-8 can hold (no lone surrogate), for the escaping filters themselves.
UTF8_TEXT = TEXT.map(lambda text: text.replace("\ud800", "\U0001d800"))


# --- where each setting lands, as its reader reads it ---------------------------------------------


def yaml_file(tree: Path, path: str) -> Any:
    return yaml.safe_load((tree / path.lstrip("/")).read_text())


def compose_file(tree: Path, name: str) -> dict:
    return yaml_file(tree, f"{BASE}/{name}")


def service(tree: Path, name: str, compose: str = "compose.yml") -> dict:
    return compose_file(tree, compose)["services"][name]


def alertmanager(tree: Path, receiver: str) -> dict:
    config = yaml_file(tree, f"{BASE}/config/alertmanager/alertmanager.yml")
    return next(r for r in config["receivers"] if r["name"] == receiver)[f"{receiver}_configs"][0]


def app_env(tree: Path) -> dict[str, str]:
    """app.env as Docker Compose v2 reads it."""
    command = compose_binary()
    if command is None:
        pytest.skip("no Docker Compose v2 here")
    return compose_environment(command, tree / f"{BASE.lstrip('/')}/app.env")


def backend_image(tree: Path) -> str:
    return service(tree, "backend")["image"]


def unit_setting(tree: Path, path: str, key: str) -> str:
    """A systemd unit file's setting as systemd reads it: the value of its ``key=`` line, with
    the whitespace around it dropped."""
    lines = (tree / path.lstrip("/")).read_text().splitlines()
    [value] = [line.partition("=")[2].strip() for line in lines
               if line.partition("=")[0].strip() == key]
    return value


def setting(dotted: str) -> Callable[[Path], Any]:
    """A reader for a setting that no rendered file carries: its value in the validated host
    settings that the deploy's operations read (the inventory ``render`` read, beside the
    rendered tree). Example: ``setting("base.timezone")(tree)`` -> ``"UTC"``"""
    def read(tree: Path) -> Any:
        node: Any = load_inventory(str(tree.parents[1] / "site.py"), EXAMPLE_SECRETS,
                                   env={})["rs1"].stack
        for part in dotted.split("."):
            node = getattr(node, part)
        return node
    return read


@dataclass(frozen=True)
class Field:
    """One text setting: its key, its well-formed values, and where it lands (``read``: the
    value as its reader sees it, from the rendered tree)."""

    key: str
    valid: st.SearchStrategy
    read: Callable[[Path], Any]
    many: bool = False  # a list setting

    def values(self, bad: bool) -> st.SearchStrategy:
        """Well-formed values, or (``bad``) values with at least one mutated item."""
        if not self.many:
            return mutated(self.valid) if bad else self.valid
        if not bad:
            return st.lists(self.valid, min_size=1, max_size=3, unique=True)
        return st.builds(lambda items, one, at: _put_item(items, one, at),
                         st.lists(hostile(self.valid), max_size=2), mutated(self.valid),
                         st.integers(min_value=0))

    def __str__(self) -> str:
        return self.key


#: Settings in files that PyYAML or a line split reads (fast).
FAST_FIELDS = [
    Field("version", TAGS, lambda t: backend_image(t).rpartition(":")[2]),
    Field("environment", NAMES, lambda t: yaml_file(
        t, f"{BASE}/config/prometheus/prometheus.yml")["global"]["external_labels"]["environment"]),
    Field("nginx.image", IMAGES, lambda t: service(t, "nginx", "compose.web.yml")["image"]),
    Field("backend.image", REPOSITORIES,
          lambda t: backend_image(t).removeprefix(f"{REGISTRY}/").rpartition(":")[0]),
    Field("app.registry", REGISTRIES,
          lambda t: backend_image(t).rpartition("/residency-scheduler-backend:")[0]),
    Field("prometheus.scrape_interval", DURATIONS, lambda t: yaml_file(
        t, f"{BASE}/config/prometheus/prometheus.yml")["global"]["scrape_interval"]),
    Field("nginx.resources.memory", SIZES, lambda t: service(
        t, "nginx", "compose.web.yml")["deploy"]["resources"]["limits"]["memory"]),
    Field("grafana.admin_user", NAMES, lambda t: service(
        t, "grafana", "compose.monitoring.yml")["environment"]["GF_SECURITY_ADMIN_USER"]),
    Field("postgres.monitor_user", NAMES, lambda t: service(
        t, "postgres-exporter", "compose.monitoring.yml")["environment"]["DATA_SOURCE_USER"]),
    Field("alertmanager.slack.channel", SLACK_CHANNELS,
          lambda t: alertmanager(t, "slack")["channel"]),
    Field("alertmanager.email.sender", EMAILS, lambda t: alertmanager(t, "email")["from"]),
    Field("alertmanager.email.to", EMAILS, lambda t: alertmanager(t, "email")["to"].split(", "),
          many=True),
    Field("alertmanager.email.smtp_host", HOSTS,
          lambda t: alertmanager(t, "email")["smarthost"].rpartition(":")[0]),
    Field("alertmanager.email.smtp_username", LINES,
          lambda t: alertmanager(t, "email")["auth_username"]),
    Field("backend.celery_queues", QUEUES, lambda t: next(
        arg for arg in service(t, "celery-worker")["entrypoint"]
        if arg.startswith("--queues=")).removeprefix("--queues=").split(","), many=True),
    Field("compose.subnet", SUBNETS,
          lambda t: compose_file(t, "compose.yml")["networks"]["backend"]["ipam"]["config"][0][
              "subnet"]),
    Field("backup.on_calendar", CALENDARS,
          lambda t: unit_setting(t, "/etc/systemd/system/rs-backup.timer", "OnCalendar")),
]
#: Settings that no rendered file of this host carries: the deploy's operations read them (the
#: time zone, packages, keys, certbot's account) or rsdeploy on this machine (the source).
SETTINGS_ONLY_FIELDS = [Field(key, valid, setting(key), many) for key, valid, many in (
    ("tls.email", EMAILS, False),
    ("tls.acme_server", URLS, False),
    ("address", HOSTS, False),
    ("nginx.resolver", HOSTS, False),
    ("base.timezone", TIME_ZONES, False),
    ("base.extra_packages", PACKAGES, True),
    ("base.deploy_user_keys", st.just("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA ops@x"), True),
    ("app.source_repo", st.just("../residency-scheduler"), False),
)]
#: Settings in app.env, read by Docker Compose (a process per example: fewer examples).
ENV_FIELDS = [
    Field("domain", DOMAINS, lambda t: json.loads(app_env(t)["CORS_ORIGINS"])[0][8:]),
    Field("extra_domains", DOMAINS,
          lambda t: [origin[8:] for origin in json.loads(app_env(t)["CORS_ORIGINS"])[1:]],
          many=True),
    Field("backend.cors_origins", ORIGINS, lambda t: json.loads(app_env(t)["CORS_ORIGINS"]),
          many=True),
]


def with_key(stack: dict, dotted: str, value: Any) -> dict:
    """A copy of ``stack`` with ``dotted`` set. Example: ``with_key(STACK, "nginx.image", "x")``"""
    out = json.loads(json.dumps(stack))
    *parents, last = dotted.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out


def check_field(capsys, field: Field, value: Any, well_formed: bool = False) -> None:
    """The property: ``value`` at ``field.key`` reaches its file exactly, or is refused (a
    ``well_formed`` one never is)."""
    stack = with_key(STACK, field.key, value)
    if field.key == "tls.email":
        stack["tls"]["mode"] = "certbot"
    with case() as where:
        result, tree = render(capsys, stack, where)
        tally(field.key, result.code == 0)
        if not kept(result, field.key, well_formed):
            return
        items = value if field.many else [value]
        assert all("\n" not in item and "\0" not in item for item in items)
        assert field.read(tree) == value


@pytest.mark.parametrize("field", FAST_FIELDS, ids=str)
@settings(max_examples=examples(25), **HYPOTHESIS)
@given(data=st.data())
def test_text_setting_reaches_its_file_exactly_or_is_refused(capsys, field, data):
    bad = data.draw(st.booleans(), label="mutated")
    check_field(capsys, field, data.draw(field.values(bad), label=field.key), not bad)


@pytest.mark.parametrize("field", SETTINGS_ONLY_FIELDS, ids=str)
@settings(max_examples=examples(25), **HYPOTHESIS)
@given(data=st.data())
def test_text_setting_in_no_file_is_kept_in_the_settings_exactly_or_refused(capsys, field, data):
    bad = data.draw(st.booleans(), label="mutated")
    check_field(capsys, field, data.draw(field.values(bad), label=field.key), not bad)


#: Values Hypothesis found that broke the code (fixed since), kept as regular cases.
FOUND = [
    # yaml_str wrote JSON's surrogate pair "\ud800\udc00": Go's yaml (Alertmanager, amtool)
    # refuses the whole file, PyYAML reads two lone surrogates.
    ("alertmanager.email.smtp_username", "\U00010000"),
    ("alertmanager.email.smtp_username", "ops \U0001f608"),
]


@pytest.mark.parametrize(("key", "value"), FOUND)
def test_found_examples_reach_their_files_exactly(capsys, key, value):
    check_field(capsys, next(f for f in FAST_FIELDS if f.key == key), value)


@pytest.mark.parametrize("field", ENV_FIELDS, ids=str)
@settings(max_examples=examples(15), **HYPOTHESIS)
@given(data=st.data())
def test_text_setting_reaches_app_env_exactly_or_is_refused(capsys, field, data):
    bad = data.draw(st.booleans(), label="mutated")
    check_field(capsys, field, data.draw(field.values(bad), label=field.key), not bad)


ENV_NAME_PATTERN = re.compile(r"[A-Z_][A-Z0-9_]{0,10}")
ENV_NAMES = regex(ENV_NAME_PATTERN.pattern)


def _env_value_carried(value: str) -> bool:
    """Whether an env file can carry ``value``: no NUL, no lone surrogate (no UTF-8)."""
    return "\0" not in value and not any("\ud800" <= char <= "\udfff" for char in value)


@settings(max_examples=examples(25), **HYPOTHESIS)
@given(name=hostile(ENV_NAMES), value=TEXT)
@example(name="NIGHT_SHIFT", value="line one\nline two\t'$HOME' \"#x\" \\ \U0001f608")
@example(name="NIGHT_SHIFT", value="a\0b")  # no env file carries NUL
def test_extra_env_reaches_app_env_exactly_or_is_refused(capsys, name, value):
    """Free text: every character Compose's env file can carry arrives, read by Compose; a
    well-formed name that rsdeploy does not set itself is never refused with such a value."""
    well_formed = (ENV_NAME_PATTERN.fullmatch(name) is not None and name not in MANAGED_ENV
                   and _env_value_carried(value))
    with case() as where:
        result, tree = render(capsys, with_key(STACK, "backend.extra_env", {name: value}), where)
        tally("backend.extra_env", result.code == 0)
        if kept(result, "backend.extra_env", well_formed):
            assert app_env(tree)[name] == value


# --- secrets -----------------------------------------------------------------------------------

PASSWORD_FILES = {"db_password": f"{BASE}/secrets/db_password",
                  "redis_password": f"{BASE}/secrets/redis_password"}


def secrets_file(values: dict[str, str], where: Path) -> str:
    """The example secrets with ``values`` instead, as a 0600 YAML file (PyYAML quotes them;
    with escapes for all but ASCII: its allow_unicode mode writes NEL raw, which reads back as
    a line break)."""
    path = where / "secrets.yml"
    data = {**yaml.safe_load(Path(EXAMPLE_SECRETS).read_text()), **values}
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return str(path)


def assert_passwords_arrive(tree: Path, db: str, redis: str) -> None:
    """Each password as its readers read it: the secret files byte for byte, the URLs (percent-
    decoded), app.env (Compose), the redis-exporter's JSON map."""
    for name, value in (("db_password", db), ("redis_password", redis)):
        assert (tree / PASSWORD_FILES[name].lstrip("/")).read_bytes() == value.encode()
    env = app_env(tree)
    assert unquote(urlsplit(env["DATABASE_URL"]).password) == db
    assert unquote(urlsplit(env["REDIS_URL"]).password) == redis
    assert env["REDIS_PASSWORD"] == redis
    exporter = tree / f"{BASE.lstrip('/')}/secrets/redis_exporter_passwords"
    assert list(json.loads(exporter.read_text()).values()) == [redis]


@settings(max_examples=examples(25), **HYPOTHESIS)
@given(db=st.one_of(GOOD_PASSWORDS, PASSWORDS), redis=st.one_of(GOOD_PASSWORDS, PASSWORDS))
@example(db="  ", redis="x" * 16)  # blank in effect
@example(db="pw-with-\0-inside", redis="x" * 16)  # no file or environment carries NUL
@example(db="Pw-0123456789abc", redis="Pw-0123456789abc\r")  # trimmed by readers: refused
@example(db="Pw:0123@456/789%ab", redis="Rd#0123456789,abc=")  # URL syntax, escaped
def test_passwords_reach_every_reader_exactly_or_are_refused(capsys, db, redis):
    """Refused or read back exactly; two well-formed passwords are always kept."""
    well_formed = all(GOOD_PASSWORD.fullmatch(value) for value in (db, redis))
    with case() as where:
        secrets = secrets_file({"db_password": db, "redis_password": redis}, where)
        result, tree = render(capsys, STACK, where, secrets)
        tally("secrets (db_password, redis_password)", result.code == 0)
        if kept(result, "password", well_formed):
            assert_passwords_arrive(tree, db, redis)


@settings(max_examples=examples(10), **HYPOTHESIS)
@given(password=st.one_of(GOOD_PASSWORDS, TEXT.map(lambda text: "Pw-0123456789abc" + text)))
@example(password="Rd#0123456789;abc\"'\\")  # redis.conf's quotes and escapes
def test_redis_server_requires_exactly_the_rendered_password(capsys, password):
    """Refused, or redis-server takes exactly it; a well-formed password is always kept."""
    with case() as where:
        result, tree = render(capsys, STACK, where, secrets_file({"redis_password": password},
                                                                 where))
        tally("redis.conf requirepass (redis-server)", result.code == 0)
        if not kept(result, "redis_password", GOOD_PASSWORD.fullmatch(password) is not None):
            return
        config = (tree / f"{BASE.lstrip('/')}/config/redis/redis.conf").read_text()
        (where / "redis").mkdir()
        with running_redis(config, where / "redis") as sock:
            assert _resp(sock, "AUTH", password) == b"+OK\r\n"
            assert _bulk(password) in _resp(sock, "CONFIG", "GET", "requirepass")


#: Unquoted YAML scalars that YAML reads as something other than the text written.
AMBIGUOUS = st.one_of(
    regex(r"0[0-7]{4,16}"), regex(r"[1-9][0-9]{0,4}(_[0-9]{1,4}){1,4}"), regex(r"[0-9]{12,20}"),
    st.sampled_from(["yes", "no", "on", "off", "true", "False", "null", "~", "", ".inf", "-.nan",
                     "0x1F", "1:20", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "1e3", "!!binary aGk=",
                     "[a]", "{a: 1}", "&a x", "'quoted'", '"x\\0y"', '"\\t\\t"']),
    regex(r"[A-Za-z][A-Za-z0-9$#@%^&*!-]{11,20}"),
)


#: Unquoted scalars that YAML reads as the very text written (letters and digits, a letter
#: first, long enough for any password rule).
PLAIN_SCALAR = re.compile(r"[A-Za-z][A-Za-z0-9]{15,24}")
PLAIN_SCALARS = regex(PLAIN_SCALAR.pattern)


@settings(max_examples=examples(100), **HYPOTHESIS)
@given(raw=st.one_of(AMBIGUOUS, PLAIN_SCALARS))
@example(raw="0123456701234567")  # octal: another number
@example(raw="1234_5678_9012_345")  # YAML 1.1 drops the underscores
@example(raw="yes")  # True
@example(raw="NightShift2026Swap")  # plain text: kept
def test_secret_in_yaml_is_the_text_written_or_refused(capsys, raw):
    """A secret is text exactly as written: an unquoted scalar is the text of its line, or the
    file is refused naming the key (quote it); a plain word of letters and digits is kept."""
    with case() as where:
        path = where / "secrets.yml"
        others = [line for line in Path(EXAMPLE_SECRETS).read_text().splitlines()
                  if not line.startswith("db_password:")]
        path.write_text("\n".join([*others, f"db_password: {raw}"]) + "\n")
        path.chmod(0o600)
        result, tree = render(capsys, STACK, where, str(path))
        tally("secrets file scalars (YAML)", result.code == 0)
        if not kept(result, str(path), PLAIN_SCALAR.fullmatch(raw) is not None):
            return
        written = yaml.safe_load(f"db_password: {raw}")["db_password"]
        assert isinstance(written, str) and written.strip()
        assert load_secrets(str(path), env={})[0].db_password == written
        secret = tree / PASSWORD_FILES["db_password"].lstrip("/")
        assert secret.read_bytes() == written.encode()


# --- generated inventories -----------------------------------------------------------------------

#: Every key of the settings model (and some that are not), for generated inventories.
def _keys() -> list[str]:
    from pydantic import BaseModel

    from rsdeploy.stack.settings import StackSettings

    keys: list[str] = []

    def walk(model, prefix: str) -> None:
        for name, info in model.model_fields.items():
            keys.append(prefix + name)
            for arg in (*getattr(info.annotation, "__args__", ()), info.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    walk(arg, f"{prefix}{name}.")

    walk(StackSettings, "")
    return [*keys, "unknown", "nginx.unknown", "ssh_port", "ssh_hostname", "_private", "roles"]


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2, 70000),
                    st.floats(), hostile(st.sampled_from(["docker", "v1.0.0", "db", "app", "80",
                                                          "scheduler.example.org", "10.0.0.1"])),
                    st.binary(max_size=6), st.just(frozenset({"a"})))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner, inner),
    st.dictionaries(st.one_of(st.sampled_from(_keys()), st.integers(), TEXT), inner,
                    max_size=3)), max_leaves=6)
HOST_NAMES = st.one_of(st.just("rs1"), hostile(st.sampled_from(["rs1", "db1.example.org"])),
                       st.integers())


def generated_stack(changes: list[tuple[str, Any]]) -> dict:
    """STACK with each (dotted key, value) of ``changes`` set, whatever the value."""
    stack = STACK
    for key, value in changes:
        stack = _set(stack, key, value)
    return stack


def _set(stack: dict, dotted: str, value: Any) -> dict:
    """``with_key`` for any value (bytes, tuples, sets, NaN) and any place (a part that is no
    mapping is left alone)."""
    out = pickle.loads(pickle.dumps(stack))
    *parents, last = dotted.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
        node[last] = value
    return out


INVENTORIES = st.tuples(
    st.lists(st.tuples(st.sampled_from(_keys()), VALUES), max_size=3),
    st.lists(st.tuples(HOST_NAMES, st.one_of(st.just(HOST_DATA), VALUES)), min_size=1,
             max_size=2),
)


@settings(max_examples=examples(120), **HYPOTHESIS)
@given(generated=INVENTORIES)
@example(generated=([], [("rs1", [1, 2])]))  # host data that is no mapping
@example(generated=([("compose.subnet", "10.0.0.0/32")], [("rs1", HOST_DATA)]))  # no addresses
@example(generated=([("backend.extra_env", {"A": "\ud800"})], [("rs1", HOST_DATA)]))  # no UTF-8
# Found by Hypothesis: an unknown key holding a dot crashed the message's key lookup (KeyError).
@example(generated=([("prometheus", {"paths.base_dir": None})], [("rs1", HOST_DATA)]))
def test_generated_inventory_ends_in_files_or_one_line(capsys, generated, monkeypatch):
    """Whatever an inventory holds: render exits 0, or 2 with one line; and deploy --dry then
    refuses it the same way without starting pyinfra (no host is contacted)."""
    changes, hosts = generated
    with case() as where:
        path = inventory(generated_stack(changes), where, hosts)
        result = run(capsys, "render", "-i", str(path), "--secrets", EXAMPLE_SECRETS,
                     "--out", str(where / "out"))
        tally("generated inventories", result.code == 0)
        if result.code == 0:
            return assert_no_output(result)
        assert_refused(result, str(path))

        def no_pyinfra(*args, **kwargs):
            raise AssertionError(f"pyinfra started for a refused inventory: {args}")

        monkeypatch.setattr(cli.subprocess, "run", no_pyinfra)
        deploy = run(capsys, "deploy", "-i", str(path), "--secrets", EXAMPLE_SECRETS, "--dry")
        assert (deploy.code, deploy.err) == (2, result.err)


# --- the escaping filters, read back by real readers (fast) -----------------------------------------

SHELL_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                     max_size=30)


@settings(max_examples=examples(200), **HYPOTHESIS)
@given(value=UTF8_TEXT)
@example(value="\U0001f608")  # beyond U+FFFF: JSON's surrogate pair broke Go's yaml
@example(value="\x7f")  # DEL: printable to JSON, not to YAML
def test_yaml_and_compose_strings_read_back_exactly(value):
    tally("escape: yaml_str / compose_str / alloy_str (PyYAML, json)", True)
    assert yaml.safe_load(f"key: {escape.yaml_str(value)}")["key"] == value
    # Compose interpolates $ after YAML; $$ is its literal dollar.
    assert yaml.safe_load(escape.compose_str(value)).replace("$$", "$") == value
    assert json.loads(escape.alloy_str(value)) == value


@settings(max_examples=examples(200), **HYPOTHESIS)
@given(value=UTF8_TEXT)
def test_url_parts_read_back_exactly(value):
    tally("escape: url_part (urllib)", True)
    url = f"postgresql://user:{escape.url_part(value)}@db:5432/app"
    assert unquote(urlsplit(url).password) == value and urlsplit(url).hostname == "db"


@settings(max_examples=examples(40), **HYPOTHESIS)
@given(values=st.lists(SHELL_TEXT, min_size=1, max_size=3))
def test_shell_words_read_back_exactly_by_bash(values):
    tally("escape: shell (bash)", True)
    script = "printf '%s\\0' " + " ".join(escape.shell(v) for v in values)
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout
    assert out.decode("utf-8", "surrogateescape").split("\0")[:-1] == values
    assert shlex.split(" ".join(escape.shell(v) for v in values)) == values
