"""Nginx reverse proxy + TLS: the real ``nginx -t`` on every example, layout and tls.mode, the
structure an operator relies on (redirects, TLS policy, headers, denied paths), the certbot
renewal units, and one real nginx serving the rendered systemd-layout site on loopback (and
switching to maintenance mode and back).
"""

from __future__ import annotations

import fnmatch

import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_SECRETS, INVENTORIES
from rsdeploy.roles import nginx, tls
from rsdeploy.render import write_tree
from rsdeploy.stack import load_inventory

SECURITY_HEADERS = {"Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
                    "Referrer-Policy", "Permissions-Policy"}
TLS_MODES = {
    "certbot": {"mode": "certbot", "email": "ops@example.org"},
    "provided": {"mode": "provided", "cert_path": "/srv/pki/site chain.pem",
                 "key_path": "/srv/pki/site.key"},
    "self-signed": {"mode": "self-signed"},
}


def web_host(example: str, **data):
    """The settings of the host carrying the web role, with ``data`` overriding host data."""
    hosts = load_inventory(str(INVENTORIES / f"{example}.py"), EXAMPLE_SECRETS,
                           override_data=data, env={})
    return next(hs for hs in hosts.values() if hs.has_role("web"))


def web_files(hs) -> list:
    """The web host's files of the nginx role and of the tls role (certbot renewal)."""
    return nginx.render(hs) + tls.render(hs)


def web_verdicts(tree: Path, hs) -> list:
    """The validators of both roles on a rendered tree."""
    return nginx.validate(tree, hs) + tls.validate(tree, hs)


def rendered(hs, tmp_path: Path) -> Path:
    """Write the nginx and tls roles' files for ``hs`` under ``tmp_path``; returns that tree."""
    write_tree(web_files(hs), tmp_path)
    return tmp_path


# --- a small nginx config reader (blocks, directives, includes resolved) ---------------------

_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|[{};]|[^\s{};"]+')


def parse(text: str) -> list:
    """Directives as ``(name, args, children or None)``; comments dropped, quotes removed."""
    tokens = _TOKEN.findall(re.sub(r"#[^\n]*", "", text))
    stack, words = [[]], []
    for token in tokens:
        if token == ";":
            stack[-1].append((words[0], words[1:], None))
            words = []
        elif token == "{":
            block = (words[0], words[1:], [])
            stack[-1].append(block)
            stack.append(block[2])
            words = []
        elif token == "}":
            stack.pop()
        else:
            words.append(token[1:-1] if token.startswith('"') else token)
    return stack[0]


def site(hs) -> tuple[list, dict[str, str]]:
    """The parsed site file and every rendered nginx file by the path nginx reads it at."""
    config_dir = nginx.config_dir(hs)
    files = {"/etc/nginx" + f.path.removeprefix(config_dir): f.content
             for f in nginx.render(hs) if f.path.startswith(config_dir)}
    return parse(files[nginx.site_path(hs).replace(config_dir, "/etc/nginx")]), files


def expand(directives: list, files: dict[str, str]) -> list:
    """Directives of one block with its ``include`` files inlined (recursively)."""
    out = []
    for name, args, children in directives:
        if name == "include":
            for path in sorted(fnmatch.filter(files, args[0])):  # none for an empty glob
                out += expand(parse(files[path]), files)
        else:
            out.append((name, args, children))
    return out


def servers(hs) -> tuple[list, dict[str, str]]:
    tree, files = site(hs)
    return [children for name, _, children in tree if name == "server"], files


def directive(block: list, name: str) -> list[list[str]]:
    return [args for n, args, _ in block if n == name]


def vhosts(hs, port: int):
    """The named (non-default) server blocks listening on ``port``."""
    found, files = servers(hs)
    return [s for s in found if not any("default_server" in a for a in directive(s, "listen"))
            and any(a[0].endswith(str(port)) for a in directive(s, "listen"))], files


def web_hosts(example_result):
    _, root, hosts = example_result
    return [(root / name, hs) for name, (hs, _) in hosts.items() if nginx.applies(hs)]


# --- nginx -t ----------------------------------------------------------------------------------


def test_nginx_t_passes_for_every_example_inventory(example):
    checked = 0
    for tree, hs in web_hosts(example):
        verdicts = web_verdicts(tree, hs)
        assert all(v.ok for v in verdicts), [(v.path, v.detail) for v in verdicts if not v.ok]
        assert {f.path for f in web_files(hs)} == {v.path for v in verdicts}
        checked += 1
    assert checked == 1  # every example has exactly one web host


@pytest.mark.parametrize("mode", sorted(TLS_MODES))
@pytest.mark.parametrize("example", ["example_docker", "example_systemd"])
def test_nginx_t_passes_for_every_layout_and_tls_mode(example, mode, tmp_path):
    hs = web_host(example, tls=TLS_MODES[mode])
    verdicts = web_verdicts(rendered(hs, tmp_path), hs)
    assert verdicts and all(v.ok for v in verdicts), [v.detail for v in verdicts if not v.ok]
    site_text = (tmp_path / nginx.site_path(hs).lstrip("/")).read_text()
    certificate, key = tls.certificate_paths(hs)
    assert f'ssl_certificate "{certificate}";' in site_text
    assert f'ssl_certificate_key "{key}";' in site_text


def test_broken_site_makes_validate_fail(tmp_path):
    hs = web_host("example_systemd")
    tree = rendered(hs, tmp_path)
    snippet = tree / nginx.snippets_dir(hs).lstrip("/") / "proxy.conf"
    snippet.write_text(snippet.read_text().replace("proxy_read_timeout", "proxy_reed_timeout"))
    verdicts = [v for v in nginx.validate(tree, hs) if v.tool.startswith("nginx -t")]
    assert verdicts and not any(v.ok for v in verdicts)
    assert "unknown directive \"proxy_reed_timeout\" in /etc/nginx/snippets/residency-scheduler/" \
           "proxy.conf" in verdicts[0].detail


def test_missing_certificate_directive_makes_validate_fail(tmp_path):
    hs = web_host("example_docker")
    tree = rendered(hs, tmp_path)
    site_file = tree / nginx.site_path(hs).lstrip("/")
    site_file.write_text(re.sub(r"\n\s*ssl_certificate_key [^\n]*", "", site_file.read_text()))
    assert not nginx.validate(tree, hs)[0].ok


# --- certificates --------------------------------------------------------------------------------


@pytest.mark.parametrize(("example", "mode", "nginx_sees", "host_has"), [
    ("example_docker", "certbot", "/etc/letsencrypt/live/scheduler.example.org",
     "/etc/letsencrypt/live/scheduler.example.org"),
    ("example_docker", "provided", "/etc/nginx/tls", "/opt/residency-scheduler/tls"),
    ("example_docker", "self-signed", "/etc/nginx/tls", "/opt/residency-scheduler/tls"),
    ("example_systemd", "certbot", "/etc/letsencrypt/live/scheduler.example.org",
     "/etc/letsencrypt/live/scheduler.example.org"),
    ("example_systemd", "self-signed", "/etc/ssl/residency-scheduler",
     "/etc/ssl/residency-scheduler"),
])
def test_certificate_paths_per_layout_and_mode(example, mode, nginx_sees, host_has):
    hs = web_host(example, tls=TLS_MODES[mode])
    assert tls.certificate_paths(hs) == (f"{nginx_sees}/fullchain.pem",
                                         f"{nginx_sees}/privkey.pem")
    assert tls.host_certificate_paths(hs) == (f"{host_has}/fullchain.pem",
                                              f"{host_has}/privkey.pem")


def test_provided_certificate_is_read_in_place_on_systemd_hosts():
    hs = web_host("example_systemd", tls=TLS_MODES["provided"])
    expected = ("/srv/pki/site chain.pem", "/srv/pki/site.key")
    assert tls.certificate_paths(hs) == tls.host_certificate_paths(hs) == expected


def test_certificate_path_with_dollar_is_refused_at_settings_time():
    from rsdeploy.errors import SettingsError

    with pytest.raises(SettingsError, match=r"tls.*\$"):
        web_host("example_systemd", tls={**TLS_MODES["provided"], "key_path": "/srv/$key.pem"})


# --- structure -------------------------------------------------------------------------------


@pytest.mark.parametrize("example", ["example_docker", "example_systemd", "example_multi"])
def test_http_serves_acme_challenges_first_then_redirects_308(example):
    hs = web_host(example)
    (http_server,), _ = vhosts(hs, hs.stack.nginx.http_port)
    locations = [(args, children) for name, args, children in http_server if name == "location"]
    assert locations[0][0] == ["^~", "/.well-known/acme-challenge/"]
    assert directive(locations[0][1], "root") == [[tls.ACME_WEBROOT]]
    assert locations[-1][0] == ["/"]
    assert directive(locations[-1][1], "return") == [["308", "https://$host$request_uri"]]


def test_redirect_keeps_a_non_standard_https_port():
    hs = web_host("example_systemd", nginx={"https_port": 8443})
    (http_server,), _ = vhosts(hs, hs.stack.nginx.http_port)
    assert ["308", "https://$host:8443$request_uri"] in [
        directive(children, "return")[0] for name, _, children in http_server
        if name == "location" and directive(children, "return")]


@pytest.mark.parametrize("example", ["example_docker", "example_systemd", "example_multi"])
def test_server_names_are_the_domain_and_extra_domains(example):
    hs = web_host(example)
    for port in (hs.stack.nginx.http_port, hs.stack.nginx.https_port):
        named, _ = vhosts(hs, port)
        assert [directive(s, "server_name") for s in named] == [[hs.stack.domains]]
    if example != "example_multi":
        assert "www.scheduler.example.org" in hs.stack.domains


@pytest.mark.parametrize("example", ["example_docker", "example_systemd"])
def test_tls_is_mozilla_intermediate_without_dhe_or_cbc(example):
    hs = web_host(example)
    found, files = servers(hs)
    for server in found:
        if not any("ssl" in args for args in directive(server, "listen")):
            continue
        block = expand(server, files)
        assert directive(block, "ssl_protocols") == [["TLSv1.2", "TLSv1.3"]]
        assert directive(block, "ssl_prefer_server_ciphers") == [["off"]]
        assert directive(block, "ssl_session_cache") == [["shared:MozSSL:10m"]]
        assert directive(block, "ssl_session_tickets") == [["off"]]
        assert directive(block, "ssl_stapling") == []  # OCSP stapling is opt-in
        (ciphers,), = directive(block, "ssl_ciphers")
        # What OpenSSL makes of the list, not just the text: ECDHE key exchange, AEAD only.
        suites = subprocess.run(["openssl", "ciphers", "-v", ciphers], check=True,
                                capture_output=True, text=True).stdout.splitlines()
        assert len(suites) >= 6
        tls12 = [line.split() for line in suites if "TLSv1.2" in line]
        assert tls12 and all(fields[2] == "Kx=ECDH" for fields in tls12)
        assert all(re.match(r"Enc=(AESGCM|CHACHA20)", fields[4]) for fields in tls12)
        assert not any("DHE-" in line.split()[0].replace("ECDHE-", "") for line in suites)


@pytest.mark.parametrize("hsts", [True, False])
@pytest.mark.parametrize("example", ["example_docker", "example_systemd"])
def test_every_response_gets_the_security_headers(example, hsts):
    """add_header is inherited only by blocks without add_header of their own: check each
    location's effective header set, as nginx computes it."""
    hs = web_host(example, nginx={"hsts": hsts})
    (server,), files = vhosts(hs, hs.stack.nginx.https_port)
    server_headers = directive(expand(server, files), "add_header")
    expected = SECURITY_HEADERS - (set() if hsts else {"Strict-Transport-Security"})
    assert {h[0] for h in server_headers} == expected
    for name, args, children in server:
        if name != "location":
            continue
        own = directive(expand(children, files), "add_header")
        effective = own or server_headers
        assert expected <= {h[0] for h in effective}, args
        assert all(h[-1] == "always" for h in effective), args
        assert len(directive(children, "include")) <= 2  # headers + proxy params, nothing else


@pytest.mark.parametrize("example", ["example_docker", "example_systemd"])
def test_api_and_health_go_to_the_backend_uncached_and_the_rest_to_the_frontend(example):
    hs = web_host(example)
    (server,), files = vhosts(hs, hs.stack.nginx.https_port)
    routes = {" ".join(args): expand(children, files)
              for name, args, children in server if name == "location"}
    for location in ("^~ /api/", "~ ^/health(/resilience)?$"):
        assert directive(routes[location], "proxy_pass")[0][0].endswith("rs_backend")
        assert ["Cache-Control", "no-store", "always"] in directive(routes[location], "add_header")
    assert directive(routes["/"], "proxy_pass")[0][0].endswith("rs_frontend")
    assert ["Upgrade", "$http_upgrade"] in directive(routes["/"], "proxy_set_header")


@pytest.mark.parametrize("example", ["example_docker", "example_systemd"])
def test_metrics_is_not_served_publicly(example):
    hs = web_host(example)
    (server,), _ = vhosts(hs, hs.stack.nginx.https_port)
    denied = {" ".join(args): directive(children, "return")
              for name, args, children in server if name == "location"}
    assert denied["= /metrics"] == [["404"]] and denied["^~ /metrics/"] == [["404"]]


@pytest.mark.parametrize("example", ["example_docker", "example_systemd"])
def test_unknown_host_names_are_dropped_on_both_ports(example):
    hs = web_host(example)
    found, _ = servers(hs)
    defaults = [s for s in found if any("default_server" in a for a in directive(s, "listen"))]
    ports = {a[0].rpartition(":")[2] for s in defaults for a in directive(s, "listen")}
    assert ports == {str(hs.stack.nginx.http_port), str(hs.stack.nginx.https_port)}
    for server in defaults:
        returns = directive(server, "return") or [
            ret for name, args, children in server
            if name == "location" and args == ["/"] for ret in directive(children, "return")]
        assert returns == [["444"]], server


def test_upstreams_per_layout_and_topology():
    docker = site(web_host("example_docker"))[1]
    assert 'set $rs_backend "backend:8000";' in docker["/etc/nginx/conf.d/residency-scheduler.conf"]
    assert "resolver 127.0.0.11 " in docker["/etc/nginx/conf.d/residency-scheduler.conf"]
    multi = site(web_host("example_multi"))[1]["/etc/nginx/conf.d/residency-scheduler.conf"]
    # Two app hosts: one upstream per target, a pin file per app host that its release rewrites.
    assert ("upstream rs_backend {\n"
            '    include "/etc/nginx/traffic/app1.example.org.backend.upstream";\n'
            '    include "/etc/nginx/traffic/app2.example.org.backend.upstream";\n}') in multi
    assert "upstream rs_frontend {" in multi
    assert "proxy_pass http://rs_backend;" in multi and "proxy_pass http://rs_frontend;" in multi
    assert "$rs_backend" not in multi and "resolver" not in multi
    systemd = site(web_host("example_systemd"))[1]["/etc/nginx/conf.d/residency-scheduler.conf"]
    # the first release slot by default; the release's pins name the serving slot
    assert 'set $rs_backend "127.0.0.1:8000";' in systemd
    assert 'include "/var/lib/residency-scheduler/traffic/*.conf";' in systemd
    assert "resolver" not in systemd  # an address needs none


@pytest.mark.parametrize(("example", "image", "directive_form"), [
    ("example_docker", "nginx:1.27-alpine", True),
    ("example_docker", "nginx:1.25.0", False),
    ("example_docker", "nginx:1.24-bookworm", False),
    ("example_docker", "nginx:alpine", True),
    ("example_systemd", "nginx:1.27-alpine", False),  # Debian 12's nginx 1.22 serves it
])
def test_http2_syntax_follows_the_nginx_version(example, image, directive_form):
    hs = web_host(example, nginx={"image": image})
    text = site(hs)[1]["/etc/nginx/conf.d/residency-scheduler.conf"]
    assert ("http2 on;" in text) is directive_form
    assert ("ssl http2" in text) is not directive_form


# --- certbot renewal -----------------------------------------------------------------------------


def test_systemd_layout_reloads_nginx_from_a_certbot_deploy_hook():
    files = {f.path: f for f in web_files(web_host("example_systemd"))}
    hook = files["/etc/letsencrypt/renewal-hooks/deploy/reload-nginx"]
    assert hook.mode == "755" and "systemctl reload nginx" in hook.content
    assert not any(p.startswith("/etc/systemd/") for p in files)  # the distro's certbot.timer


def test_docker_layout_renews_from_a_host_timer(tmp_path):
    hs = web_host("example_docker")
    tree = rendered(hs, tmp_path)
    verdicts = {v.path: v for v in web_verdicts(tree, hs)}
    service = (tree / "etc/systemd/system/rs-certbot-renew.service").read_text()
    timer = (tree / "etc/systemd/system/rs-certbot-renew.timer").read_text()
    for unit in ("rs-certbot-renew.service", "rs-certbot-renew.timer"):
        v = verdicts[f"/etc/systemd/system/{unit}"]
        assert v.tool == "systemd-analyze verify" and v.ok, v.detail
    assert ('"run" "--rm" "--no-deps" "certbot" "renew" "--webroot" "-w" "/var/www/certbot"'
            in service)
    assert 'ExecStartPost="/usr/bin/docker" "compose" "--project-name" "residency-scheduler"' \
        in service
    assert '"-f" "compose.yml" "-f" "compose.prod.yml"' in service  # the whole project
    assert "WorkingDirectory=/opt/residency-scheduler\n" in service
    assert '"exec" "-T" "nginx" "nginx" "-s" "reload"' in service
    assert "OnCalendar=*-*-* 00,12:00:00" in timer and "RandomizedDelaySec=" in timer


def test_broken_timer_makes_validate_fail(tmp_path):
    hs = web_host("example_docker")
    tree = rendered(hs, tmp_path)
    timer = tree / "etc/systemd/system/rs-certbot-renew.timer"
    timer.write_text(timer.read_text().replace("OnCalendar=*-*-* 00,12:00:00", "OnCalendar=often"))
    assert not {v.path: v for v in web_verdicts(tree, hs)}[f"/{timer.relative_to(tree)}"].ok


@pytest.mark.parametrize("mode", ["provided", "self-signed"])
@pytest.mark.parametrize("example", ["example_docker", "example_systemd"])
def test_no_certbot_files_without_certbot(example, mode):
    paths = [f.path for f in web_files(web_host(example, tls=TLS_MODES[mode]))]
    assert not [p for p in paths if "certbot" in p or "letsencrypt" in p]


def test_certbot_first_issuance_names_every_domain():
    args = tls.certbot_certonly_args(web_host("example_systemd"))
    assert args[:4] == ["certonly", "--webroot", "-w", tls.ACME_WEBROOT]
    assert args[args.index("--cert-name") + 1] == "scheduler.example.org"
    assert [args[i + 1] for i, a in enumerate(args) if a == "-d"] == [
        "scheduler.example.org", "www.scheduler.example.org"]


# --- a real nginx on loopback --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream(BaseHTTPRequestHandler):
    """Answers every GET with JSON naming the upstream, the path and the headers it received;
    with the status a ``status=NNN`` query asks for (200 otherwise)."""

    def do_GET(self):
        body = json.dumps({"upstream": self.server.name, "path": self.path,
                           "headers": dict(self.headers)}).encode()
        asked = re.search(r"[?&]status=(\d{3})\b", self.path)
        self.send_response(int(asked.group(1)) if asked else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "max-age=600")
        self.send_header("X-Powered-By", "Next.js")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def live_site(tmp_path):
    """Debian's nginx running the rendered systemd-layout site (self-signed) on loopback,
    in front of two tiny Python upstreams. ``paths.data_dir`` (the maintenance page's
    directory is in it) and the ACME webroot, ``<data_dir>/acme-webroot`` here, are in a
    directory that nginx's workers (www-data) can read."""
    if os.geteuid() != 0 or shutil.which("nginx") is None:
        pytest.skip("needs root and Debian's nginx")
    shared = Path(tempfile.mkdtemp(prefix="rsdeploy-live-nginx-"))  # tmp_path: root's only
    shared.chmod(0o755)
    upstreams = []
    for name in ("backend", "frontend"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        server.name = name
        threading.Thread(target=server.serve_forever, daemon=True).start()
        upstreams.append(server)
    ports = {"http_port": free_port(), "https_port": free_port()}
    hs = web_host("example_systemd", tls=TLS_MODES["self-signed"],
                  nginx={**ports, "listen_ipv6": False},
                  backend={"port": upstreams[0].server_port},
                  frontend={"port": upstreams[1].server_port},
                  paths={"data_dir": str(shared / "data")})
    root = tmp_path / "root"
    nginx.build_validation_root(rendered(hs, tmp_path / "tree"), hs, root)
    site_file = root / "etc/nginx/conf.d/residency-scheduler.conf"  # loopback only, for the test
    site_file.write_text(re.sub(r"listen (\d+)", r"listen 127.0.0.1:\1", site_file.read_text())
                         .replace(f"root {tls.ACME_WEBROOT};",
                                  f"root {hs.stack.paths.data_dir}/acme-webroot;"))
    proc = subprocess.Popen(["nginx", "-p", f"{root}/", "-c", f"{root}/etc/nginx/nginx.conf",
                             "-g", "daemon off;"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", ports["https_port"]), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.05)
        yield hs, ports
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for server in upstreams:
            server.shutdown()
        shutil.rmtree(shared)


def tls_context(version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # dummy certificate
    if version is not None:
        context.minimum_version = context.maximum_version = version
        context.set_ciphers("ALL:@SECLEVEL=0")  # so only the server can refuse old versions
    return context


def https_get(port: int, path: str, name="scheduler.example.org", context=None, method="GET"):
    """GET (or ``method``, without a body) over TLS with SNI ``name`` (http.client sends none
    to an IP address)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = (context or tls_context()).wrap_socket(raw, server_hostname=name)
    conn.sendall(f"{method} {path} HTTP/1.1\r\nHost: {name}\r\nContent-Length: 0\r\n"
                 "Connection: close\r\n\r\n".encode())
    response = http.client.HTTPResponse(conn, method=method)
    response.begin()
    body, version = response.read(), conn.version()
    conn.close()
    return response, body, version


def http_get(port: int, path: str, host: str) -> tuple[int, str]:
    """GET over plain HTTP with ``Host: host``; (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_live_nginx_redirects_serves_acme_and_proxies_with_headers(live_site):
    hs, ports = live_site
    plain = http.client.HTTPConnection("127.0.0.1", ports["http_port"], timeout=5)
    plain.request("GET", "/schedule?week=3", headers={"Host": "scheduler.example.org"})
    redirect = plain.getresponse()
    assert redirect.status == 308
    assert redirect.headers["Location"] == \
        f"https://scheduler.example.org:{ports['https_port']}/schedule?week=3"
    plain.close()
    plain.request("GET", "/.well-known/acme-challenge/token",
                  headers={"Host": "scheduler.example.org"})
    assert plain.getresponse().status == 404  # served from the webroot, not redirected

    response, body, _ = https_get(ports["https_port"], "/api/v1/people?x=1")
    answer = json.loads(body)
    assert response.status == 200 and answer["upstream"] == "backend"
    assert answer["path"] == "/api/v1/people?x=1"
    assert answer["headers"]["X-Forwarded-Proto"] == "https"
    assert answer["headers"]["Host"] == "scheduler.example.org"
    assert response.headers["Cache-Control"] == "no-store"
    assert "X-Powered-By" not in response.headers
    assert SECURITY_HEADERS <= set(response.headers)
    assert response.headers["Server"] == "nginx"  # no version

    response, body, _ = https_get(ports["https_port"], "/health/resilience")
    assert json.loads(body)["upstream"] == "backend"
    response, body, _ = https_get(ports["https_port"], "/dashboard")
    assert json.loads(body)["upstream"] == "frontend"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "max-age=600"  # the frontend's own caching
    response, _, _ = https_get(ports["https_port"], "/metrics")
    assert response.status == 404
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")  # offered on purpose
def test_live_nginx_speaks_only_tls12_and_tls13_and_drops_unknown_names(live_site):
    _, ports = live_site
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        response, _, negotiated = https_get(ports["https_port"], "/", context=tls_context(version))
        assert response.status == 200 and negotiated == version.name.replace("_", ".")
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError, match="(?i)protocol.version|unsupported protocol"):
            https_get(ports["https_port"], "/", context=tls_context(old))
    with pytest.raises(ssl.SSLError, match="(?i)unrecognized.name|internal.error"):
        https_get(ports["https_port"], "/", name="other.example.net")
    plain = http.client.HTTPConnection("127.0.0.1", ports["http_port"], timeout=5)
    # ACME challenges for any name (one being added to the certificate is not served yet).
    plain.request("GET", "/.well-known/acme-challenge/token", headers={"Host": "new.example.net"})
    assert plain.getresponse().status == 404  # from the webroot, not dropped
    plain.close()
    plain.request("GET", "/", headers={"Host": "other.example.net"})
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        plain.getresponse()  # 444: closed without an answer


def test_live_nginx_answers_503_with_the_page_while_it_exists(live_site):
    hs, ports = live_site
    page = Path(nginx.host_maintenance_dir(hs)) / nginx.MAINTENANCE_PAGE
    challenge = Path(hs.stack.paths.data_dir) / "acme-webroot/.well-known/acme-challenge/x"
    challenge.parent.mkdir(parents=True)
    challenge.write_text("token-x")
    # Off: the site is served, and an upstream's own 503 passes through as it is.
    response, body, _ = https_get(ports["https_port"], "/api/v1/people?status=503")
    assert response.status == 503 and json.loads(body)["upstream"] == "backend"
    assert "Retry-After" not in response.headers

    page.parent.mkdir(parents=True)
    page.write_text(nginx.maintenance_page(hs, "Back at 03:00 <b>"))
    for method, path in [("GET", "/"), ("GET", "/api/v1/people"), ("POST", "/api/v1/notes"),
                         ("DELETE", "/api/v1/notes/1"), ("GET", "/health"), ("HEAD", "/")]:
        response, body, _ = https_get(ports["https_port"], path, method=method)
        assert response.status == 503, (method, path)
        assert response.headers["Retry-After"] == str(hs.stack.nginx.maintenance_retry_after)
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert SECURITY_HEADERS <= set(response.headers)
        assert body == (b"" if method == "HEAD" else page.read_bytes()), (method, path)
    response, _, _ = https_get(ports["https_port"], "/.rs-maintenance.html")
    assert response.status == 404  # the page's own URI: internal, never served on its own
    # Port 80 still answers ACME challenges from the webroot, and redirects the rest.
    for host in ("scheduler.example.org", "new.example.net"):
        assert http_get(ports["http_port"], "/.well-known/acme-challenge/x", host) == \
            (200, "token-x")
    assert http_get(ports["http_port"], "/", "scheduler.example.org")[0] == 308

    page.unlink()  # off: no reload, the next request is served again
    response, body, _ = https_get(ports["https_port"], "/dashboard")
    assert response.status == 200 and json.loads(body)["upstream"] == "frontend"
    response, _, _ = https_get(ports["https_port"], "/.rs-maintenance.html")
    assert response.status == 404


# --- a release's reload (roles.nginx.reload_and_wait), on a real nginx --------------------------


@pytest.fixture
def bare_nginx(tmp_path):
    """A real nginx (two workers) with a minimal configuration; its pid file's path."""
    pid_file = tmp_path / "nginx.pid"
    (tmp_path / "logs").mkdir()
    (tmp_path / "nginx.conf").write_text(
        f"worker_processes 2;\npid {pid_file};\nerror_log {tmp_path}/logs/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log off; server {{ listen 127.0.0.1:{free_port()}; return 204; }} }}\n")
    subprocess.run(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], check=True)
    try:
        deadline = time.monotonic() + 30  # the daemon returns before its master starts workers
        while len(taking_requests(pid_file)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield pid_file
    finally:
        subprocess.run(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                        "-s", "stop"], check=False)


def taking_requests(pid_file: Path) -> set[int]:
    """The nginx master's workers that take new requests (not those shutting down)."""
    if not pid_file.is_file():
        return set()
    master = pid_file.read_text().strip()
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = stat.read_text().split()[3]
            title = (stat.parent / "cmdline").read_bytes().replace(b"\0", b"").decode()
        except OSError:
            continue
        if parent == master and title == "nginx: worker process":
            found.add(int(stat.parent.name))
    return found


def test_a_release_reload_ends_once_only_new_workers_take_requests(bare_nginx):
    before = taking_requests(bare_nginx)
    assert len(before) == 2
    run = subprocess.run(["sh", "-c", nginx.reload_and_wait('kill -HUP "$master"', str(bare_nginx))],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    after = taking_requests(bare_nginx)  # read at once: the old ones may still be finishing
    assert len(after) == 2 and not after & before, (before, after)


def test_a_reload_nginx_does_not_take_fails_in_one_line(bare_nginx):
    master = int(bare_nginx.read_text())
    os.kill(master, 19)  # SIGSTOP: the master never starts new workers
    try:
        run = subprocess.run(["sh", "-c", nginx.reload_and_wait('kill -HUP "$master"', str(bare_nginx),
                                                                seconds=1)],
                             capture_output=True, text=True, timeout=60)
    finally:
        os.kill(master, 18)  # SIGCONT
    assert run.returncode == 1
    assert run.stderr == "nginx did not replace its workers within 1 s of the reload\n"
