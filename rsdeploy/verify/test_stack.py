"""After every rollout, in either layout: does each host serve what its settings say? nginx,
TLS, the ports only it exposes, Prometheus' targets, file owners and modes, the recorded release.
The layout's own checks: test_docker_stack.py, test_systemd_stack.py.

Every failure names the host, the service, what was expected and what was found.
"""

from __future__ import annotations

import json
import shlex
import socket
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest

from rsdeploy.roles import alertmanager, backend, flower, internal_tls, nginx, prometheus, redis
from rsdeploy import apply, release
from rsdeploy.stack import render_host
from rsdeploy.verify.support import settle

#: Ports that must never be reachable from outside the host (service, port setting).
INTERNAL = {
    "db": lambda s: s.postgres.port, "redis": lambda s: s.redis.port,
    "prometheus": lambda s: s.prometheus.port, "alertmanager": lambda s: s.alertmanager.port,
    "loki": lambda s: s.loki.port, "flower": lambda s: s.flower.port,
    "redis (TLS)": lambda s: s.redis.tls_port,
}


def test_only_nginx_listens_on_every_interface(host, hs):
    s = hs.stack
    if hs.has_role("web"):
        for port in (s.nginx.http_port, s.nginx.https_port):
            assert host.socket(f"tcp://0.0.0.0:{port}").is_listening, \
                f"{hs.name}: nginx: expected to listen on 0.0.0.0:{port}, found nothing"
    for service, port_of in INTERNAL.items():
        port = port_of(s)
        assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening, \
            f"{hs.name}: {service}: expected not on 0.0.0.0:{port}, found it listening there"


def knock(address: str, port: int, seconds: float = 3) -> bool:
    """Whether a TCP connection from this machine to ``address:port`` opens: False when it is
    refused or unanswered (a firewall dropping it); any other error fails the test, since it
    says nothing about the port (no route to the host)."""
    try:
        with socket.create_connection((address, port), timeout=seconds):
            return True
    except (ConnectionRefusedError, TimeoutError):
        return False
    except OSError as exc:
        pytest.fail(f"{address}:{port}: cannot tell whether the port is open from here: {exc}")


def knock_all(address: str, ports: dict[str, int]) -> dict[str, bool]:
    """:func:`knock` on every port at once (each unanswered one waits out its timeout), by name."""
    with ThreadPoolExecutor(max_workers=len(ports) or 1) as pool:
        return dict(zip(ports, pool.map(lambda port: knock(address, port), ports.values())))


def listening_to_the_world(host, hs) -> list[int]:
    """The ports of ``base.firewall_allow`` that something on the host listens on for every
    address (or the host's own): those must answer from anywhere."""
    sockets = host.socket.get_listening_sockets()
    bound = {f"tcp://{address}:{{}}" for address in ("0.0.0.0", ":::", hs.address)}
    return [port for port in hs.stack.base.firewall_allow
            if any(spec.format(port) in sockets for spec in bound)]


def test_internal_ports_are_not_reachable_from_outside(host, hs):
    """Probed from the machine running the suite, at the host's address: the ports open to the
    world that something listens on (SSH at least) answer from here, so the address is reached
    and a port that does not answer is closed there; and no internal port answers."""
    controls = {f"port {port}": port for port in listening_to_the_world(host, hs)}
    assert controls, (f"{hs.name}: nothing listens on a port of base.firewall_allow "
                      f"{hs.stack.base.firewall_allow}: no open port to compare with")
    internal = {f"{service}:{port_of(hs.stack)}": port_of(hs.stack)
                for service, port_of in INTERNAL.items()}
    answers = knock_all(hs.address, {**controls, **internal})
    silent = [name for name in controls if not answers[name]]
    assert not silent, (f"{hs.name}: expected {hs.address} {silent} (open to the world, "
                        "listening) to answer from here, found no answer: closed ports would "
                        "prove nothing")
    reachable = [name for name in internal if answers[name]]
    assert not reachable, f"{hs.name}: expected closed from outside, found open: {reachable}"


def https(host, hs, path: str):
    """curl through nginx on the web host, by the site's name, certificate not checked."""
    s = hs.stack
    return host.run("curl -sk --max-time 10 -w '\\n%%{http_code}' --resolve %s:%s:127.0.0.1 "
                    "https://%s:%s%s", s.domain, str(s.nginx.https_port),
                    s.domain, str(s.nginx.https_port), path)


def body_and_code(result) -> tuple[str, str]:
    body, _, code = result.stdout.rpartition("\n")
    return body, code


def test_health_through_nginx(host, hs):
    if not hs.has_role("web"):
        pytest.skip(f"{hs.name} carries no web role")
    body, code = settle(lambda: body_and_code(https(host, hs, "/health")), lambda r: r[1] == "200")
    assert code == "200", f"{hs.name}: nginx -> backend /health: expected 200, found {code}: {body}"
    health = json.loads(body)
    assert (health["status"], health["database"]) == ("healthy", "connected"), \
        f"{hs.name}: backend /health: expected healthy + connected, found {body}"
    body, code = body_and_code(https(host, hs, "/health/resilience"))
    assert code == "200" and json.loads(body)["status"] in ("operational", "degraded"), \
        f"{hs.name}: backend /health/resilience: expected operational|degraded, found {code} {body}"


def test_plain_http_redirects_to_https(host, hs):
    if not hs.has_role("web"):
        pytest.skip(f"{hs.name} carries no web role")
    s = hs.stack
    out = host.check_output("curl -s -o /dev/null -w '%%{http_code} %%{redirect_url}' "
                            "--resolve %s:%s:127.0.0.1 http://%s:%s/", s.domain,
                            str(s.nginx.http_port), s.domain, str(s.nginx.http_port))
    assert out.startswith("308 https://"), f"{hs.name}: nginx: expected 308 to https, found {out}"


def test_metrics_are_not_public(host, hs):
    if not hs.has_role("web"):
        pytest.skip(f"{hs.name} carries no web role")
    _, code = body_and_code(https(host, hs, "/metrics"))
    assert code in ("403", "404"), f"{hs.name}: nginx /metrics: expected 403/404, found {code}"


def test_flower_answers_only_with_its_login(host, hs):
    if not (hs.has_role("web") and flower.served(hs)):
        pytest.skip(f"{hs.name} serves no Flower")
    body, code = settle(lambda: body_and_code(https(host, hs, "/flower/")), lambda r: r[1] == "401")
    assert code == "401", f"{hs.name}: nginx -> flower /flower/ without a login: expected 401, found {code}"


#: TLS versions nginx must refuse, as openssl s_client's switches.
OLD_TLS = ("-tls1", "-tls1_1")
#: What OpenSSL prints when the server refuses the version offered (alert 70, protocol_version).
SERVER_REFUSED_VERSION = "alert protocol version"


def tls_handshake(host, hs, version: str):
    """openssl s_client offering only ``version`` (``-tls1_2``) to nginx, by the site's name. The
    old versions at OpenSSL's security level 0: at its default level OpenSSL 3's client refuses
    them itself ("legacy sigalg disallowed"), and the server would never be asked."""
    s = hs.stack
    level = "-cipher 'DEFAULT:@SECLEVEL=0'" if version in OLD_TLS else ""
    return host.run(f"openssl s_client -connect 127.0.0.1:{s.nginx.https_port} "
                    f"-servername {shlex.quote(s.domain)} {version} {level} </dev/null")


def test_tls_offers_only_tls12_and_tls13_for_the_domain(host, hs):
    """TLS 1.2 and 1.3 complete a handshake; TLS 1.0 and 1.1, offered by a client that would
    take them, are refused by nginx itself (its protocol_version alert)."""
    if not hs.has_role("web"):
        pytest.skip(f"{hs.name} carries no web role")
    s = hs.stack
    connect = f"127.0.0.1:{s.nginx.https_port}"
    for version in ("-tls1_2", "-tls1_3", *OLD_TLS):
        result = tls_handshake(host, hs, version)
        said = (result.stdout + result.stderr).strip().splitlines()
        errors = [line for line in said if ":error:" in line] or said[-1:]
        accepted = result.rc == 0 and "Cipher is (NONE)" not in result.stdout
        if version in OLD_TLS:
            assert not accepted and SERVER_REFUSED_VERSION in "\n".join(said), \
                f"{hs.name}: nginx TLS {version}: expected refused by nginx " \
                f"({SERVER_REFUSED_VERSION}), found {'accepted' if accepted else errors}"
        else:
            assert accepted, f"{hs.name}: nginx TLS {version}: expected accepted, found {errors}"
    names = host.check_output(
        "openssl s_client -connect %s -servername %s </dev/null 2>/dev/null | "
        "openssl x509 -noout -ext subjectAltName", connect, s.domain)
    for domain in s.domains:
        assert f"DNS:{domain}" in names, f"{hs.name}: certificate: expected {domain}, found {names}"


def test_prometheus_scrapes_every_expected_target(host, hs):
    if not prometheus.applies(hs):
        pytest.skip(f"{hs.name} runs no Prometheus")
    # A host's app runs in one release slot at a time (natively): one of its targets is enough.
    expected = {(job.name, t.instance) for job in prometheus.scrape_jobs(hs) for t in job.targets}

    def health():
        raw = host.check_output("curl -fsS --max-time 10 http://127.0.0.1:%s/api/v1/targets",
                                str(hs.stack.prometheus.port))
        found: dict[tuple, str] = {}
        for t in json.loads(raw)["data"]["activeTargets"]:
            key = (t["labels"]["job"], t["labels"]["instance"])
            found[key] = "up" if "up" in (found.get(key), t["health"]) else t["health"]
        return found

    found = settle(health, lambda h: all(h.get(k) == "up" for k in expected))
    down = {f"{job}@{inst}": found.get((job, inst), "absent") for job, inst in expected
            if found.get((job, inst)) != "up"}
    assert not down, f"{hs.name}: prometheus: expected every target up, found {down}"


def test_alertmanager_is_ready(host, hs):
    if not alertmanager.applies(hs):
        pytest.skip(f"{hs.name} runs no Alertmanager")
    code = host.check_output("curl -s -o /dev/null -w '%%{http_code}' http://127.0.0.1:%s/-/ready",
                             str(hs.stack.alertmanager.port))
    assert code == "200", f"{hs.name}: alertmanager /-/ready: expected 200, found {code}"


def test_rendered_files_have_their_owner_and_mode(host, hs):
    rendered = render_host(hs)
    # One stat for every file (a round trip per file made this the suite's slowest check).
    listing = host.run("stat -c '%n|%u|%U|%a' " + " ".join(shlex.quote(f.path) for f in rendered))
    found = {path: (uid, user, mode) for path, uid, user, mode in
             (line.split("|") for line in listing.stdout.splitlines())}
    wrong = []
    for f in rendered:
        if f.path not in found:
            wrong.append(f"{f.path}: missing")
            continue
        uid, user, mode = found[f.path]
        owner = uid if f.owner.isdigit() else user
        if int(mode, 8) != int(f.mode, 8) or owner != f.owner:
            wrong.append(f"{f.path}: expected {f.owner} {f.mode}, found {owner} {mode}")
    assert not wrong, f"{hs.name}: files: " + "; ".join(wrong)


def test_recorded_version_is_the_requested_one(host, hs):
    recorded = host.file(release.version_file(hs)).content_string.strip()
    assert recorded == hs.stack.version, \
        f"{hs.name}: recorded version: expected {hs.stack.version}, found {recorded}"


def test_no_deploy_left_a_reaction_undone(host, hs):
    owed = host.run("find %s -maxdepth 1 -type f -printf '%%f\\n' 2>/dev/null",
                    apply.due_dir(hs)).stdout.split()
    owed.sort()
    assert not owed, (f"{hs.name}: a deploy stopped before carrying out {', '.join(owed)}: "
                      "run the deploy again")


def _startup_without_tls(hs) -> str:
    """A PostgreSQL protocol 3.0 startup message for the app role, as printf escapes."""
    pg = hs.stack.postgres
    body = struct.pack("!i", 196608) + f"user\0{pg.user}\0database\0{pg.database}\0\0".encode()
    return "".join(f"\\x{byte:02x}" for byte in struct.pack("!i", len(body) + 4) + body)


def test_data_stores_elsewhere_speak_only_verified_tls(host, hs):
    """From an app host whose database or Redis is on another host: each presents a
    certificate of the stack CA for the address dialled (what sslmode=verify-full and
    ssl_cert_reqs=required check); PostgreSQL refuses a login without TLS, and Redis' plain
    port is closed to this host."""
    remote = [role for role in internal_tls.SERVICES if internal_tls.reaches(hs, role)]
    if not remote:
        pytest.skip(f"{hs.name} reaches no data store on another host")
    ca = backend.stack_ca_path(hs)
    for role in remote:
        carrier = hs.peer(role)
        port = carrier.stack.postgres.port if role == "db" else redis.client_port(carrier)
        starttls = "-starttls postgres" if role == "db" else ""
        shake = host.run(f"openssl s_client -connect {carrier.address}:{port} {starttls} "
                         f"-CAfile {ca} -verify_return_error -verify_ip {carrier.address} "
                         "</dev/null")
        assert shake.rc == 0 and "Verify return code: 0 (ok)" in shake.stdout, \
            f"{hs.name}: {role} at {carrier.address}:{port}: expected a certificate of the " \
            f"stack CA for that address, found: {(shake.stdout + shake.stderr)[-400:]}"
    if "db" in remote:
        pg = hs.peer("db")
        script = (f"exec 3<>/dev/tcp/{pg.address}/{pg.stack.postgres.port} && printf "
                  f"'{_startup_without_tls(pg)}' >&3 && timeout 5 cat <&3 | tr -c '[:print:]' ' '")
        answer = host.run("bash -c %s", script).stdout
        assert "no encryption" in answer, \
            f"{hs.name}: db at {pg.address}: expected a login without TLS refused, found {answer!r}"
    if "redis" in remote:
        store = hs.peer("redis")
        assert not _reaches(host, store.address, store.stack.redis.port), \
            f"{hs.name}: redis at {store.address}: expected its plain port closed, found it open"


def _reaches(host, address: str, port: int) -> bool:
    """Whether a TCP connection from ``host`` to ``address:port`` opens (4 s at most)."""
    return host.run("timeout 4 bash -c %s", f"</dev/tcp/{address}/{port}").rc == 0


def test_across_hosts_each_reaches_only_what_it_needs(host, hs):
    """From this host: the app reaches the database and Redis on their hosts, nginx every app
    host where it is pinned, and a host that is neither app nor data store reaches neither."""
    wanted, unwanted = [], []
    for role in ("db", "redis"):
        store = hs.peer(role)
        port = store.stack.postgres.port if role == "db" else redis.client_port(store)
        if store.name != hs.name and not hs.has_role(role):
            (wanted if hs.has_role("app") else unwanted).append((role, store.address, port))
    if nginx.balances_app_hosts(hs):
        for (app, traffic), _ in nginx.default_upstream_targets(hs).items():
            pins = host.check_output("cat %s", nginx.upstream_pin_file(hs, app, traffic))
            wanted += [(f"{app} {traffic}", *target.rsplit(":", 1))
                       for target in nginx.pinned_targets(pins)]
    missing = [f"{what} at {address}:{port}" for what, address, port in wanted
               if not _reaches(host, address, int(port))]
    open_ = [f"{what} at {address}:{port}" for what, address, port in unwanted
             if _reaches(host, address, int(port))]
    assert not missing, f"{hs.name}: expected to reach {missing}, found them closed"
    assert not open_, f"{hs.name}: expected no way to {open_} (not an app host), found them open"
