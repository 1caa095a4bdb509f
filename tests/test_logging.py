"""Loki and the log shipper (Alloy by default, Promtail as the legacy option).

No offline binary of Loki, Alloy or Promtail exists here (no Debian package, no registry): these
tests parse the rendered files and check their structure and cross-references, and say so in
their names. The Alloy checks use a small parser of Alloy syntax written after Alloy's own
scanner (syntax/scanner): blocks, attributes, expressions, string escapes.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from rsdeploy.roles import log_shipper, loki
from rsdeploy.layout import Restart
from rsdeploy.escape import alloy_str
from tests.conftest import EXAMPLES, load_example

# --- a small parser of Alloy syntax -----------------------------------------------------------

#: Alloy's single-character escapes (syntax/scanner scanEscape), with what they stand for.
ALLOY_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                 "\\": "\\", '"': '"'}
#: Numeric escapes: letter -> (digits, base).
ALLOY_NUMERIC_ESCAPES = {"x": (2, 16), "u": (4, 16), "U": (8, 16)}
TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n]+) | (?P<comment>//[^\n]*|/\*.*?\*/) |
    (?P<string>"(?:[^"\\\n]|\\.)*") | (?P<raw>`[^`]*`) |
    (?P<number>[0-9]+(?:\.[0-9]+)?) | (?P<ident>[^\W\d]\w*) | (?P<punct>[{}\[\]().,=])
""", re.VERBOSE | re.DOTALL)


def alloy_unquote(literal: str) -> str:
    """The value of a double-quoted Alloy string literal; raises ValueError like Alloy would."""
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        esc = body[i + 1]
        if esc in ALLOY_ESCAPES:
            out.append(ALLOY_ESCAPES[esc])
            i += 2
        elif esc in ALLOY_NUMERIC_ESCAPES or esc in "01234567":
            digits, base = ALLOY_NUMERIC_ESCAPES.get(esc, (3, 8))
            start = i + (1 if esc in "01234567" else 2)
            code = int(body[start:start + digits], base)
            if len(body[start:start + digits]) != digits or 0xD800 <= code < 0xE000:
                raise ValueError(f"invalid escape in {literal}")
            out.append(chr(code))
            i = start + digits
        else:
            raise ValueError(f"unknown escape sequence \\{esc} in {literal}")
    return "".join(out)


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text):
        match = TOKEN.match(text, pos)
        if not match:
            raise ValueError(f"illegal character at {text[pos:pos + 20]!r}")
        kind = match.lastgroup
        if kind not in ("space", "comment"):
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


@dataclasses.dataclass
class Block:
    name: str  # e.g. "loki.write"
    label: str | None
    attributes: dict = dataclasses.field(default_factory=dict)
    blocks: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Ref:
    """A reference to another component's export, e.g. loki.write.default.receiver."""

    path: str


class AlloyParser:
    """Recursive descent over Alloy's grammar: body = (attribute | block)*."""

    def __init__(self, text: str):
        self.tokens, self.pos = tokenize(text), 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else ("eof", "")

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        tok_kind, tok = self.peek()
        if (value is not None and tok != value) or (kind is not None and tok_kind != kind):
            raise ValueError(f"expected {value or kind}, got {tok!r} at token {self.pos}")
        self.pos += 1
        return tok

    def body(self, closing: str | None) -> Block:
        block = Block("", None)
        while self.peek()[1] != (closing or "") or (closing is None and self.peek()[0] != "eof"):
            if closing is None and self.peek()[0] == "eof":
                break
            name = self.dotted()
            if self.peek()[1] == "=":
                if "." in name or name in block.attributes:
                    raise ValueError(f"bad or repeated attribute {name}")
                self.take("=")
                block.attributes[name] = self.expr()
                continue
            label = alloy_unquote(self.take(kind="string")) if self.peek()[0] == "string" else None
            self.take("{")
            child = self.body("}")
            self.take("}")
            block.blocks.append(dataclasses.replace(child, name=name, label=label))
        return block

    def dotted(self) -> str:
        parts = [self.take(kind="ident")]
        while self.peek()[1] == ".":
            self.take(".")
            parts.append(self.take(kind="ident"))
        return ".".join(parts)

    def expr(self):
        kind, tok = self.peek()
        if kind == "string":
            self.pos += 1
            return alloy_unquote(tok)
        if kind in ("number", "raw"):
            self.pos += 1
            return tok
        if tok in ("[", "{"):
            return self.collection(tok)
        path = self.dotted()
        if path in ("true", "false", "null"):
            return path
        if self.peek()[1] == "(":
            self.take("(")
            args = self.items(")", self.expr)
            return (path, args)
        return Ref(path)

    def collection(self, opening: str):
        self.take(opening)
        if opening == "[":
            return self.items("]", self.expr)
        return dict(self.items("}", self.pair))

    def pair(self):
        key = self.take()
        key = alloy_unquote(key) if key.startswith('"') else key
        self.take("=")
        return key, self.expr()

    def items(self, closing: str, item):
        found = []
        while self.peek()[1] != closing:
            found.append(item())
            if self.peek()[1] != closing:
                self.take(",")
        self.take(closing)
        return found


def parse_alloy(text: str) -> list[Block]:
    parser = AlloyParser(text)
    top = parser.body(None)
    assert not top.attributes, "top-level attributes are not components"
    return top.blocks


def refs_in(value) -> list[Ref]:
    if isinstance(value, Ref):
        return [value]
    if isinstance(value, dict):
        return [r for v in value.values() for r in refs_in(v)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in refs_in(v)]
    return []


def all_refs(block: Block) -> list[Ref]:
    return [r for v in block.attributes.values() for r in refs_in(v)] + [
        r for child in block.blocks for r in all_refs(child)]


#: Components the config may use and the exports each offers (Alloy reference docs).
COMPONENT_EXPORTS = {
    "discovery.docker": {"targets"},
    "discovery.relabel": {"output", "rules"},
    "local.file_match": {"targets"},
    "loki.relabel": {"receiver", "rules"},
    "loki.source.docker": set(),
    "loki.source.file": set(),
    "loki.source.journal": set(),
    "loki.write": {"receiver"},
}


# --- helpers ----------------------------------------------------------------------------------


ROLES = {"loki": loki, "log_shipper": log_shipper}


@pytest.fixture(scope="module", params=EXAMPLES)
def example_hosts(request):
    """Every host of each example inventory (this module renders only its own roles)."""
    return load_example(request.param)


def files_of(hs, role: str) -> dict[str, str]:
    """The files one of this module's roles renders for ``hs`` (none when it does not apply)."""
    module = ROLES[role]
    return {f.path: f.content for f in module.render(hs)} if module.applies(hs) else {}


def with_settings(hs, **sections):
    """``hs`` with some settings sections replaced, e.g. log_shipper={"kind": "promtail"}."""
    stack = hs.stack.model_copy(update={
        name: getattr(hs.stack, name).model_copy(update=values) for name, values in sections.items()
    })
    everyone = {**hs.stack_settings, hs.name: stack}
    return dataclasses.replace(hs, stack=stack, stack_settings=everyone)


def alloy_components(hs) -> dict[tuple[str, str], Block]:
    (path, text), = files_of(hs, "log_shipper").items()
    assert path.endswith("config.alloy")
    blocks = parse_alloy(text)
    components = {(b.name, b.label): b for b in blocks}
    assert len(components) == len(blocks), "a component name + label is declared twice"
    return components


def loki_push_url_expected(hs) -> str:
    mon = hs.peer("monitoring")
    host = "loki" if mon.name == hs.name and hs.stack.layout == "docker" else (
        "127.0.0.1" if mon.name == hs.name else mon.address)
    return f"http://{host}:3100/loki/api/v1/push"


# --- Loki -------------------------------------------------------------------------------------


def test_loki_config_static_structure_no_offline_loki(example_hosts):
    checked = 0
    for hs in example_hosts.values():
        for f in (loki.render(hs) if loki.applies(hs) else []):
            config = yaml.safe_load(f.content)
            data_dir = {"docker": "/loki", "systemd": "/var/lib/loki"}[hs.stack.layout]
            assert config["auth_enabled"] is False
            assert config["server"]["http_listen_port"] == hs.stack.loki.port
            assert config["common"]["path_prefix"] == data_dir
            for key, path in config["common"]["storage"]["filesystem"].items():
                assert path.startswith(data_dir + "/"), key
            (schema,) = config["schema_config"]["configs"]
            assert (schema["store"], schema["schema"], schema["index"]["period"]) == (
                "tsdb", "v13", "24h")
            assert schema["object_store"] == "filesystem"
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", schema["from"])
            compactor = config["compactor"]
            assert compactor["retention_enabled"] is True
            assert compactor["delete_request_store"] == "filesystem"
            assert compactor["working_directory"].startswith(data_dir + "/")
            assert config["limits_config"]["retention_period"] == hs.stack.loki.retention
            assert config["analytics"]["reporting_enabled"] is False
            assert f.reactions == (Restart("loki"),)
            checked += 1
    assert checked == 1, "exactly the monitoring host runs Loki"


@pytest.mark.parametrize("example_name, path, data_dir", [
    ("example_docker", "/opt/residency-scheduler/config/loki/config.yml", "/loki"),
    ("example_systemd", "/etc/loki/config.yml", "/var/lib/loki"),
])
def test_loki_paths_per_layout_no_offline_loki(example_name, path, data_dir):
    (hs,) = load_example(example_name).values()
    config = yaml.safe_load(files_of(hs, "loki")[path])
    assert config["common"]["path_prefix"] == data_dir


def test_loki_burst_below_rate_is_rejected():
    with pytest.raises(ValueError, match="ingestion_burst_mb"):
        loki.Settings(ingestion_rate_mb=32, ingestion_burst_mb=16)


def test_loki_listens_where_shippers_reach_it_no_offline_loki():
    (single,) = load_example("example_systemd").values()
    assert loki.listen_address(single) == "127.0.0.1"  # only local shippers: loopback
    mon = load_example("example_multi")["mon1.example.org"]
    assert loki.listen_address(mon) == "0.0.0.0"  # container; Compose publishes privately


# --- Alloy ------------------------------------------------------------------------------------


def test_alloy_config_structure_no_offline_alloy(example_hosts):
    for hs in example_hosts.values():
        components = alloy_components(hs)
        for (name, label), block in components.items():
            assert name in COMPONENT_EXPORTS, f"unknown component {name}"
            assert label and re.fullmatch(r"[A-Za-z_]\w*", label), (name, label)
            for ref in all_refs(block):
                *component, ref_label, export = ref.path.split(".")
                target = (".".join(component), ref_label)
                assert target in components, f"{name}.{label} references missing {ref.path}"
                assert export in COMPONENT_EXPORTS[target[0]], f"{ref.path} is no export"
        sources = {key: b for key, b in components.items() if key[0].startswith("loki.source.")}
        for (name, label), block in sources.items():
            assert block.attributes["forward_to"] == [Ref("loki.write.default.receiver")], name
        expected = {"loki.source.journal", "loki.source.file"}
        if hs.stack.layout == "docker":
            expected.add("loki.source.docker")
        assert {name for name, _ in sources} == expected


def test_alloy_labels_streams_by_the_guides_container_names_service_unit_host_no_offline_alloy(example_hosts):
    for hs in example_hosts.values():
        components = alloy_components(hs)
        write = components[("loki.write", "default")]
        assert write.attributes["external_labels"] == {
            "host": hs.name, "environment": hs.stack.environment}
        (endpoint,) = write.blocks
        assert endpoint.attributes["url"] == loki_push_url_expected(hs)
        journal_rules = {(r.attributes["source_labels"][0], r.attributes["target_label"])
                         for r in components[("loki.relabel", "journal")].blocks}
        assert ("__journal__systemd_unit", "unit") in journal_rules
        journal = components[("loki.source.journal", "units")]
        assert journal.attributes["relabel_rules"] == Ref("loki.relabel.journal.rules")
        (target,) = components[("local.file_match", "app_logs")].attributes["path_targets"]
        assert target["__path__"] == f"{hs.stack.paths.log_dir}/*.log"
        if hs.stack.layout == "docker":
            assert components[("loki.source.docker", "containers")].attributes["targets"] == Ref(
                "discovery.relabel.containers.output")
        assert_guide_names_match(
            hs, [r.attributes for r in components[("discovery.relabel", "containers")].blocks]
            if hs.stack.layout == "docker" else [],
            [r.attributes for r in components[("loki.relabel", "journal")].blocks])


def relabel(rules: list[dict], labels: dict[str, str]) -> dict[str, str]:
    """Prometheus-style relabelling (Alloy and Promtail alike) of one target's labels: the
    source labels joined by ";", the regex anchored, $N replaced (the "replace" action only)."""
    out = dict(labels)
    for rule in rules:
        value = ";".join(out.get(name, "") for name in rule["source_labels"])
        found = re.fullmatch(rule.get("regex", "(.*)"), value)
        if found:
            replaced = re.sub(r"\$(\d+)", lambda m: found.group(int(m.group(1))) or "",
                              rule.get("replacement", "$1"))
            if replaced:
                out[rule["target_label"]] = replaced
    return {k: v for k, v in out.items() if not k.startswith("__")}


def assert_guide_names_match(hs, container_rules: list[dict], journal_rules: list[dict]) -> None:
    """The operations guide's Loki queries select what runs: a container of any release has
    container="<project>-<service>" ({container="residency-scheduler-backend"}) and service=;
    natively the app's units of every release slot carry service= as well."""
    if hs.stack.layout == "docker":
        project = hs.stack.compose.project
        labels = relabel(container_rules, {
            "__meta_docker_container_name": f"/{project}-backend-2",
            "__meta_docker_container_label_com_docker_compose_project": project,
            "__meta_docker_container_label_com_docker_compose_service": "backend"})
        assert labels == {"container": f"{project}-backend", "container_name": f"{project}-backend-2",
                          "service": "backend", "compose_project": project}
        assert "container" not in relabel(container_rules, {"__meta_docker_container_name": "/other"})
    units = {"docker.service": None, "ssh.service": None}
    if hs.stack.layout == "systemd" and hs.has_role("app"):
        units.update({"residency-backend@green.service": "backend",
                      "residency-celery-worker@blue.service": "celery-worker"})
    if hs.stack.layout == "systemd" and hs.has_role("db"):
        units[f"postgresql@{hs.stack.postgres.version}-main.service"] = "db"
    for unit, service in units.items():
        labels = relabel(journal_rules, {"__journal__systemd_unit": unit})
        assert (labels["unit"], labels.get("service")) == (unit, service), labels


@pytest.mark.parametrize("value", [
    'plain', 'q"uote', "back\\slash", "new\nline", "tab\t$HOME ${x} #", "ünï €", "emoji 🏥",
    "ctrl \x01\x7f", "\\\"\\n",
])
def test_alloy_string_escaping_round_trips_no_offline_alloy(value):
    literal = alloy_str(value)
    assert tokenize(literal) == [("string", literal)], "one string token, newline-free"
    assert alloy_unquote(literal) == value


def test_alloy_string_escaping_reaches_the_file_no_offline_alloy():
    (hs,) = load_example("example_docker").values()
    odd = with_settings(hs, paths={"log_dir": '/var/log/rs "quoted" \\dir'})
    components = alloy_components(odd)
    (target,) = components[("local.file_match", "app_logs")].attributes["path_targets"]
    assert target["__path__"] == '/var/log/rs "quoted" \\dir/*.log'


def test_alloy_parser_rejects_broken_configs_no_offline_alloy():
    """The structural checker itself must fail on what Alloy rejects."""
    for broken in ('a.b "x" {', 'a.b "x" { y = "\\q" }', 'a.b "x" { y = [1, 2 }', 'a.b "x" } {'):
        with pytest.raises((ValueError, AssertionError)):
            parse_alloy(broken)


# --- Promtail (legacy) ------------------------------------------------------------------------


def test_promtail_config_static_structure_no_offline_promtail(example_hosts):
    for hs in example_hosts.values():
        legacy = with_settings(hs, log_shipper={"kind": "promtail"})
        (path, text), = files_of(legacy, "log_shipper").items()
        assert path.endswith("/promtail/config.yml")
        assert "end-of-life on 2026-03-02" in text.split("server:")[0]
        config = yaml.safe_load(text)
        (client,) = config["clients"]
        assert client["url"] == loki_push_url_expected(hs)
        assert client["external_labels"] == {"host": hs.name, "environment": hs.stack.environment}
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        assert {"journal", "app_logs"} <= set(jobs)
        assert {"source_labels": ["__journal__systemd_unit"], "target_label": "unit"} in jobs[
            "journal"]["relabel_configs"]
        (static,) = jobs["app_logs"]["static_configs"]
        assert static["labels"]["__path__"] == f"{hs.stack.paths.log_dir}/*.log"
        assert ("docker" in jobs) == (hs.stack.layout == "docker")
        if "docker" in jobs:
            assert jobs["docker"]["docker_sd_configs"][0]["host"] == log_shipper.DOCKER_HOST
        assert_guide_names_match(
            hs, [r for r in jobs["docker"]["relabel_configs"] if "source_labels" in r]
            if "docker" in jobs else [], jobs["journal"]["relabel_configs"])


# --- both shippers ----------------------------------------------------------------------------


def test_every_host_ships_logs_to_the_monitoring_host_no_offline_alloy():
    hosts = load_example("example_multi")
    urls = {name: loki.push_url(hs) for name, hs in hosts.items()}
    assert urls == {
        "db1.example.org": "http://10.0.0.24:3100/loki/api/v1/push",
        "app1.example.org": "http://10.0.0.24:3100/loki/api/v1/push",
        "app2.example.org": "http://10.0.0.24:3100/loki/api/v1/push",
        "web1.example.org": "http://10.0.0.24:3100/loki/api/v1/push",
        "mon1.example.org": "http://loki:3100/loki/api/v1/push",
    }
    for hs in hosts.values():
        assert len(files_of(hs, "log_shipper")) == 1, f"{hs.name} ships no logs"


def test_no_shipper_without_loki():
    (hs,) = load_example("example_docker").values()
    assert not log_shipper.applies(with_settings(hs, loki={"enabled": False}))
    assert not log_shipper.applies(with_settings(hs, log_shipper={"kind": "none"}))
