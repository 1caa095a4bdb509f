"""Maintenance mode (``rsdeploy maintenance on|off``): the site's switch in nginx (checked by the
real ``nginx -t``; a real nginx switching on loopback is in tests/test_nginx.py), the page with a
hostile message escaped, where the page lives in each layout, and the CLI refusing a message
that is not one line before any host is contacted.
"""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pyinfra_cli.util import parse_cli_arg

from rsdeploy.roles import nginx
from rsdeploy import cli, escape
from rsdeploy.stack import render_host
from tests.conftest import EXAMPLE_SECRETS, INVENTORIES
from tests.test_nginx import (
    SECURITY_HEADERS,
    directive,
    expand,
    rendered,
    vhosts,
    web_host,
    web_verdicts,
)

HOSTILE = """Back at 03:00 <script>alert("x")</script> & 'done' </p><p onclick=x>"""
PAGE_URI = "/.rs-maintenance.html"  # where the switch sends nginx for the page


def https_site(hs) -> tuple[list, dict[str, str]]:
    """The HTTPS site's server block (includes inlined) and the rendered nginx files."""
    (server,), files = vhosts(hs, hs.stack.nginx.https_port)
    return expand(server, files), files


def locations(block: list) -> dict[str, list]:
    return {" ".join(args): children for name, args, children in block if name == "location"}


# --- the switch in nginx --------------------------------------------------------------------------


@pytest.mark.parametrize("example", ["example_docker", "example_systemd"])
def test_nginx_t_passes_with_the_maintenance_switch(example, tmp_path):
    hs = web_host(example, nginx={"maintenance_retry_after": 120})
    verdicts = web_verdicts(rendered(hs, tmp_path), hs)
    assert verdicts and all(v.ok for v in verdicts), [v.detail for v in verdicts if not v.ok]
    block, files = https_site(hs)
    page = f"{nginx.maintenance_dir(hs)}/{nginx.MAINTENANCE_PAGE}"
    checks = [(args, directive(children, "return"))
              for name, args, children in block if name == "if"]
    assert (["(-f", page, ")"], [["503"]]) in checks
    assert directive(block, "error_page") == [["503", PAGE_URI]]
    served = expand(locations(block)[f"= {PAGE_URI}"], files)
    assert directive(served, "internal") == [[]]
    assert directive(served, "root") == [[nginx.maintenance_dir(hs)]]
    assert directive(served, "try_files") == [[f"/{nginx.MAINTENANCE_PAGE}", "=503"]]
    headers = directive(served, "add_header")
    assert ["Retry-After", "120", "always"] in headers
    assert ["Cache-Control", "no-store", "always"] in headers
    assert SECURITY_HEADERS <= {h[0] for h in headers}


@pytest.mark.parametrize("example", ["example_docker", "example_systemd", "example_multi"])
def test_only_the_switch_answers_503_and_http_keeps_serving_acme(example):
    """error_page 503 shows the page for any 503 nginx makes itself, and for an upstream's when
    proxy_intercept_errors is on: the site must have neither but the switch's return."""
    hs = web_host(example)
    block, files = https_site(hs)
    everything = "\n".join(re.sub(r"#[^\n]*", "", text) for text in files.values())
    assert not re.search(r"\b(limit_req|limit_conn|proxy_intercept_errors|"
                         r"fastcgi_intercept_errors|uwsgi_intercept_errors)\b", everything)
    assert [args for name, args, _ in block if name == "return"] == []
    for route, children in locations(block).items():
        assert directive(children, "error_page") == [], route
        assert ["503"] not in directive(children, "return"), route
    (http_server,), _ = vhosts(hs, hs.stack.nginx.http_port)
    assert [name for name, _, _ in http_server if name in ("if", "error_page")] == []


def test_docker_mounts_the_host_directory_read_only_and_nginx_reads_it_there():
    hs = web_host("example_docker")
    host_dir, seen = nginx.host_maintenance_dir(hs), nginx.maintenance_dir(hs)
    assert (host_dir, seen) == ("/var/lib/residency-scheduler/maintenance", "/var/www/maintenance")
    compose = next(f for f in render_host(hs) if f.path.endswith("/compose.web.yml"))
    assert f"{host_dir}:{seen}:ro" in yaml.safe_load(compose.content)["services"]["nginx"]["volumes"]


def test_systemd_nginx_reads_the_host_directory_itself():
    hs = web_host("example_systemd", paths={"data_dir": "/srv/rs-state"})
    assert nginx.maintenance_dir(hs) == nginx.host_maintenance_dir(hs) == "/srv/rs-state/maintenance"


@pytest.mark.parametrize("example", ["example_docker", "example_systemd"])
def test_the_deploy_never_renders_nor_prunes_the_maintenance_directory(example):
    from rsdeploy.stack import owned_dirs

    hs = web_host(example)
    directory = nginx.host_maintenance_dir(hs)
    assert not [f.path for f in render_host(hs) if f.path.startswith(directory + "/")]
    assert not [d for d in owned_dirs(hs) if d == directory or d.startswith(directory + "/")]


# --- the page -------------------------------------------------------------------------------------


class _Text(HTMLParser):
    """Every element's text, by tag; any tag found."""

    def __init__(self):
        super().__init__()
        self.tags, self.text, self._open = [], {}, []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        self._open.append(tag)

    def handle_endtag(self, tag):
        self._open.pop()

    def handle_data(self, data):
        if self._open:
            self.text[self._open[-1]] = self.text.get(self._open[-1], "") + data


def read_page(html: str) -> _Text:
    page = _Text()
    page.feed(html)
    page.close()
    return page


def test_the_page_shows_a_hostile_message_as_text_never_as_markup():
    page = nginx.maintenance_page(web_host("example_docker"), HOSTILE)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;done&#x27;" in page
    read = read_page(page)
    assert read.text["p"] == HOSTILE  # exactly the message, read back as a browser would
    assert [tag for tag, _ in read.tags] == ["html", "head", "meta", "meta", "title", "body",
                                             "h1", "p"]


@settings(database=None, max_examples=300)
@given(st.text())
def test_html_text_reads_back_exactly_and_never_opens_markup(value):
    escaped = escape.html_text(value)
    assert not set("<>\"'") & set(escaped)
    assert read_page(f"<p title=\"{escaped}\">{escaped}</p>").text.get("p", "") == value


def test_the_page_without_a_message_says_the_default_text():
    hs = web_host("example_docker")
    read = read_page(nginx.maintenance_page(hs))
    assert read.text["p"] == nginx.MAINTENANCE_MESSAGE
    assert read.text["title"] == "scheduler.example.org: down for maintenance"
    assert ("charset", "utf-8") in read.tags[2][1]


# --- the command ----------------------------------------------------------------------------------


def run_cli(capsys, monkeypatch, *args: str) -> tuple[int, str, str, list]:
    """``rsdeploy maintenance ARGS`` against the docker example; pyinfra is never started but
    its command line is kept."""
    started = []
    monkeypatch.setattr(cli.subprocess, "run", lambda command, **_: started.append(command) or
                        type("Done", (), {"returncode": 0})())
    code = cli.main(["maintenance", *args, "-i", str(INVENTORIES / "example_docker.py"),
                     "--secrets", EXAMPLE_SECRETS])
    out, err = capsys.readouterr()
    return code, out, err, started


@pytest.mark.parametrize("message", ["Back at 03:00\nor later", "tab\there", "nul\x00",
                                     "line\u2028separator", "   "])
def test_a_message_that_is_not_one_line_is_refused_before_any_host(capsys, monkeypatch, message):
    code, out, err, started = run_cli(capsys, monkeypatch, "on", "--message", message)
    assert (code, out, started) == (2, "", [])
    assert len(err.splitlines()) == 1 and err.startswith("rsdeploy: error: --message: "), err


def test_the_message_reaches_the_deploy_as_text_exactly(capsys, monkeypatch):
    for message in (HOSTILE, "1.0", "true", '{"a": 1}', "Zurück um 03:00 ✓"):
        code, _, _, (command,) = run_cli(capsys, monkeypatch, "on", "--message", message)
        assert code == 0 and command[command.index("-y") + 2].endswith("deploys/maintenance.py")
        data = dict(value.split("=", 1) for value in command[command.index("--data") + 1::2])
        # pyinfra reads each --data value as it reads any (deploys see what parse_cli_arg gives)
        assert {key: parse_cli_arg(value) for key, value in data.items()} == \
            {"maintenance": "on", "maintenance_message": message}


def test_off_needs_no_message(capsys, monkeypatch):
    code, _, _, (command,) = run_cli(capsys, monkeypatch, "off")
    assert code == 0 and command[command.index("--data") + 1] == f"maintenance={json.dumps('off')}"
    assert command.count("--data") == 1


def test_plain_pyinfra_data_is_checked_like_any_setting():
    from rsdeploy.errors import SettingsError

    hs = web_host("example_docker", maintenance="on", maintenance_message="Back at 03:00")
    assert (hs.stack.maintenance, hs.stack.maintenance_message) == ("on", "Back at 03:00")
    with pytest.raises(SettingsError, match=r"maintenance: .*'on' or 'off'"):
        web_host("example_docker", maintenance="yes")
    with pytest.raises(SettingsError, match="maintenance_message: .*one line"):
        web_host("example_docker", maintenance="on", maintenance_message="a\nb")


#: A deploy of two steps; the first fails on the first host (``root1``). Each step leaves a
#: file saying which host ran it, in the directory given as data ``out``.
TWO_STEPS = """\
from pyinfra import host
from pyinfra.operations import server

where = f"{host.data.out}/{host.name.rsplit('/', 1)[-1]}"
server.shell(name="first step",
             commands=[f"touch {where}-first; [ {where} != {host.data.out}/root1 ]"])
server.shell(name="second step", commands=[f"touch {where}-second"])
"""


def test_a_host_failing_a_step_stops_every_host_after_it(capsys, monkeypatch, tmp_path):
    """rsdeploy's own pyinfra command line (maintenance on's) run for real on two hosts, chroot
    connections to this machine's / (no host is touched but these files): the first host fails
    the first step, and neither host runs the second (later stages, the app after its database
    or the web host after the app, never start)."""
    code, _, _, (command,) = run_cli(capsys, monkeypatch, "on")
    monkeypatch.undo()  # subprocess.run is itself again
    assert code == 0
    roots = [tmp_path / name for name in ("root1", "root2")]
    inventory, deploy = tmp_path / "hosts.py", tmp_path / "two_steps.py"
    inventory.write_text(f"hosts = {[f'@chroot/{root}' for root in roots]!r}\n")
    deploy.write_text(TWO_STEPS)
    at = command.index("-y") + 1  # the inventory, then the deploy file
    command[at:at + 2] = [str(inventory), str(deploy)]
    for root in roots:
        root.symlink_to("/")
    try:
        run = subprocess.run([*command, "--data", f"out={tmp_path}"], capture_output=True,
                             text=True, timeout=120)
    finally:  # no link to / left behind in the temporary directory
        for root in roots:
            root.unlink()
    assert run.returncode != 0, run.stderr[-2000:]
    ran = sorted(path.name for path in tmp_path.glob("root*-*"))
    assert ran == ["root1-first", "root2-first"], (ran, run.stderr[-2000:])
