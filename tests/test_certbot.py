"""tls.mode certbot against any ACME CA: the ``--server`` a private CA (step-ca, the sandbox's
pebble) needs, its exclusion with Let's Encrypt's staging CA, and the certbot service trusting
the host's CA store (real ``docker compose config`` on the rendered project).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rsdeploy.roles import tls
from rsdeploy.roles.tls import ACME_WEBROOT  # the test below has a parameter named tls
from rsdeploy.stack.docker import project as compose
from rsdeploy.render import write_tree
from rsdeploy.stack import render_host
from tests.test_nginx import web_host
from tests.test_settings import GOOD_STACK, run_check, with_key, write_inventory

ACME = "https://ca.internal.example:14000/dir"
CERTBOT = {"mode": "certbot", "email": "ops@example.org"}
HOST_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def server_of(args: list[str]) -> str | None:
    return args[args.index("--server") + 1] if "--server" in args else None


@pytest.mark.parametrize("example", ["example_docker", "example_systemd"])
def test_private_ca_is_asked_for_the_first_certificate(example):
    hs = web_host(example, tls={**CERTBOT, "acme_server": ACME})
    webroot, standalone = tls.certbot_certonly_args(hs), tls.first_certificate_args(hs)
    assert server_of(webroot) == server_of(standalone) == ACME
    assert "--staging" not in webroot
    assert standalone[:2] == ["certonly", "--standalone"] and "--webroot" not in standalone
    # Everything after the method is the same request (names, account, lineage, CA).
    assert standalone[2:] == webroot[webroot.index("--cert-name"):]


def test_lets_encrypt_is_the_default_ca_and_staging_its_test_ca():
    assert server_of(tls.certbot_certonly_args(web_host("example_docker"))) is None
    staging = tls.first_certificate_args(web_host("example_docker",
                                                  tls={**CERTBOT, "staging": True}))
    assert "--staging" in staging and server_of(staging) is None


def test_staging_and_a_private_ca_are_refused_together(tmp_path, capsys):
    stack = with_key(GOOD_STACK, "tls", {**CERTBOT, "staging": True, "acme_server": ACME})
    code, err = run_check(capsys, write_inventory(tmp_path, stack))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "tls.staging" in err and "tls.acme_server" in err and "exclude each other" in err


@pytest.mark.parametrize("url", ["http://ca.internal.example/dir", "ca.internal.example/dir",
                                 "https:///dir", "https://ca.example/dir with space"])
def test_acme_server_must_be_an_https_url(tmp_path, capsys, url):
    stack = with_key(GOOD_STACK, "tls", {**CERTBOT, "acme_server": url})
    code, err = run_check(capsys, write_inventory(tmp_path, stack))
    assert code == 2 and "tls.acme_server" in err and "https:// URL" in err, err


def private_ca(tmp_path: Path) -> str:
    """A throwaway CA certificate file (what an operator lists in trusted_ca_certs)."""
    cert = tmp_path / "private-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=ca",
                    "-keyout", str(tmp_path / "private-ca.key"), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert)


def resolved_web_services(hs, tmp_path: Path) -> dict:
    """nginx and certbot (if the host has it) as ``docker compose config`` resolves the host's
    whole project, with certbot's profile on (as ``docker compose run certbot`` turns it on)."""
    write_tree(render_host(hs), tmp_path / "tree")
    base_dir = tmp_path / "tree" / hs.stack.paths.base_dir.lstrip("/")
    files = [arg for name in compose.compose_files(hs) for arg in ("-f", name)]
    proc = subprocess.run([*compose.compose_binary(), "--project-name", hs.stack.compose.project,
                           "--profile", "certbot", *files, "config", "--format", "json"],
                          cwd=base_dir, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                             "DOCKER_CONFIG": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    return {name: services[name] for name in ("nginx", "certbot") if name in services}


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    return {v["target"]: (v["source"], v.get("read_only", False)) for v in service["volumes"]}


def test_certbot_trusts_the_hosts_store_when_the_stack_has_extra_cas(tmp_path):
    hs = web_host("example_docker", tls={**CERTBOT, "acme_server": ACME},
                  trusted_ca_certs=[private_ca(tmp_path)])
    web = resolved_web_services(hs, tmp_path)
    certbot = web["certbot"]
    # The host's bundle (update-ca-certificates put the extra CAs in it), read-only, and
    # requests (certbot's HTTP client) told to use it instead of its bundled certifi store.
    assert mounts(certbot)["/etc/ssl/certs"] == ("/etc/ssl/certs", True)
    assert certbot["environment"]["REQUESTS_CA_BUNDLE"] == HOST_BUNDLE
    assert mounts(certbot)["/etc/letsencrypt"] == ("/etc/letsencrypt", False)
    # nginx only serves the certificate: it needs no CA store.
    assert "/etc/ssl/certs" not in mounts(web["nginx"])


def test_certbot_keeps_its_own_store_without_extra_cas(tmp_path):
    certbot = resolved_web_services(web_host("example_docker"), tmp_path)["certbot"]
    assert "/etc/ssl/certs" not in mounts(certbot)
    assert "REQUESTS_CA_BUNDLE" not in (certbot.get("environment") or {})


def test_renewal_unit_leaves_the_spreading_to_its_timer():
    service = next(f.content for f in tls.render(web_host("example_docker"))
                   if f.path.endswith("rs-certbot-renew.service"))
    # certbot sleeps up to 8 minutes before a non-interactive renew unless told not to; the
    # timer's RandomizedDelaySec spreads the runs already (as Debian's certbot.timer does).
    assert '"renew" "--webroot" "-w" "/var/www/certbot" "--no-random-sleep-on-renew"' in service


@pytest.mark.parametrize("tls", [{"mode": "self-signed"}, CERTBOT])
def test_nginx_shares_the_challenge_webroot_with_certbot_in_every_mode(tmp_path, tls):
    # A self-signed site switching to certbot gets its first certificate through the nginx
    # already running (it holds port 80), so that nginx must serve the webroot too.
    nginx_service = resolved_web_services(web_host("example_docker", tls=tls), tmp_path)["nginx"]
    assert mounts(nginx_service)[ACME_WEBROOT] == ("acme-webroot", True)
