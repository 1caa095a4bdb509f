"""An air-gapped site with tls.mode certbot, end to end on a sandbox host, against a real ACME
server (the sandbox's pebble). No registry: every image is uploaded as a ``docker save`` bundle
(sha256-checked), loaded and removed. A self-signed site switches to certbot (its running nginx
answers the first challenges), a re-run leaves the certificate alone, a renewal through the
real renewal unit is answered by nginx from the shared webroot and picked up by a reload, not
a restart; and a site whose nginx is down when its first certificate is due gets it from
certbot itself (standalone), before nginx holds port 80.

The steps run in file order on one host, as an operator would run them. (One chain: the bundle
and certbot chains deployed the same site twice.)
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from rsdeploy_dev import sandbox as sandbox_module
from tests.e2e.conftest import FIRST_VERSION, assert_verified, ready_site

pytestmark = pytest.mark.sandbox

LETSENCRYPT = "/etc/letsencrypt"
CLI_INI = f"{LETSENCRYPT}/cli.ini"
RENEW_UNIT = "rs-certbot-renew.service"
#: nginx's access log line of an HTTP-01 challenge it answered: client address and token.
CHALLENGE = re.compile(r'^(\S+) .*"GET /\.well-known/acme-challenge/([\w-]+) HTTP/1\.1" 200 ',
                       re.MULTILINE)


@pytest.fixture(scope="module")
def site():
    # Nothing here concerns monitoring: without it the run is shorter (CI has 2 cores), and
    # the bundle holds the stack's other images.
    yield from ready_site("rs-acme", "bundle", tls="certbot", monitoring=False)


@pytest.fixture(scope="module")
def pebble_root(site, tmp_path_factory):
    """pebble's root certificate, from its management API (a file for curl)."""
    return site.acme_root(tmp_path_factory.mktemp("acme"))


def served_certificate(site, name: str) -> str:
    """The PEM certificate nginx presents for ``name`` on the host's 443 (through loopback)."""
    hello = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{site.host.port(443)}",
         "-servername", name], input="", capture_output=True, text=True, timeout=30)
    found = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", hello.stdout,
                      re.DOTALL)
    assert found, f"no certificate for {name}: {hello.stdout[-2000:]}{hello.stderr[-2000:]}"
    return found.group(0)


def serial(site) -> str:
    pem = served_certificate(site, site.domain)
    return subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem,
                          capture_output=True, text=True, check=True).stdout.strip()


def challenges_answered_to_pebble(site) -> set[str]:
    """The challenge tokens nginx served to the ACME server (which asks several times each)."""
    pebble = sandbox_module.Sandbox.load(site.sandbox.prefix).acme["address"]
    logs = site.on_host(f"docker logs {site.containers()['nginx']['id']} 2>&1")
    return {token for client, token in CHALLENGE.findall(logs) if client == pebble}


def test_a_self_signed_site_switches_to_certbot_through_its_running_nginx(site, pebble_root):
    site.tls = "self-signed"  # how many sites start, until their DNS points at them
    site.heavy("bootstrap").check()
    site.heavy("deploy", "--version", FIRST_VERSION).check()
    assert site.wait_healthy()["status"] == "healthy"
    # Air-gapped: the images came as bundles, loaded under their own names, and went.
    images = site.on_host("docker images --format '{{.Repository}}:{{.Tag}}'").split()
    assert "residency-scheduler-backend:v1.0.0" in images, images
    assert not any("registry" in image for image in images), images
    assert site.on_host("ls /var/lib/residency-scheduler/images 2>/dev/null | wc -l").strip() == "0"
    site.tls = "certbot"
    run = site.rsdeploy("deploy").check()
    # nginx kept port 80 and answered the challenges: the site served all along.
    assert "through the running nginx" in run.output, run.output[-4000:]
    assert site.wait_healthy()["status"] == "healthy"
    site.assert_trusted_through(pebble_root)
    conf = site.renewal_conf()
    assert conf["server"] == sandbox_module.Sandbox.load(site.sandbox.prefix).acme["directory"]
    assert conf["authenticator"] == "webroot", conf


def test_verify_suite_passes_with_certbot(site):
    assert_verified(site)


def test_second_run_changes_nothing_and_asks_for_no_certificate(site):
    before, nginx_before = serial(site), site.containers()["nginx"]
    run = site.rsdeploy("deploy").check()
    assert run.changed == 0, run.output[-4000:]
    assert "Obtain the first certificate" not in run.output
    assert serial(site) == before
    assert site.containers()["nginx"] == nginx_before


def test_renewal_unit_renews_through_nginx_and_reloads_it(site, pebble_root):
    before, nginx_before = serial(site), site.containers()["nginx"]["started"]
    answered_before = challenges_answered_to_pebble(site)
    # Certificates from pebble are not due for years: make this one run of the unit renew.
    site.on_host(f"printf 'force-renewal = True\\n' > {CLI_INI}")
    try:
        unit = site.sandbox.ssh(site.host.name, f"systemctl start {RENEW_UNIT}", timeout=300,
                                check=False)
    finally:
        site.on_host(f"rm -f {CLI_INI}")
    journal = site.on_host(f"journalctl -u {RENEW_UNIT} --no-pager -n 60")
    assert unit.returncode == 0, f"{unit.stderr}\n{journal}"
    assert serial(site) != before, journal
    assert site.containers()["nginx"]["started"] == nginx_before  # reloaded, not restarted
    # pebble fetched a challenge per name from port 80 while nginx held it.
    new_tokens = challenges_answered_to_pebble(site) - answered_before
    assert len(new_tokens) == len(site.domains), journal
    conf = site.renewal_conf()
    assert conf["authenticator"] == "webroot" and "/var/www/certbot" in conf.values(), conf
    site.assert_trusted_through(pebble_root)


def test_a_first_certificate_while_nginx_is_down_comes_from_certbot_itself(site, pebble_root):
    """The lineage deleted and the site stopped (its nginx no longer holds port 80): the next
    deploy obtains the certificate with certbot's own server on port 80, then nginx starts
    with it; a re-run changes nothing."""
    before = serial(site)
    site.rsdeploy("stop").check()
    hs = site.settings()
    delete = hs.layout.run_argv(hs, "certbot", ["delete", "--non-interactive", "--cert-name",
                                                site.domain])
    site.on_host(f"cd {hs.layout.command_dir(hs)} && {shlex.join(delete)}")
    run = site.rsdeploy("deploy").check()
    assert "(standalone)" in run.output, run.output[-4000:]
    assert site.renewal_conf()["authenticator"] == "standalone"
    assert site.wait_healthy() == {"status": "healthy", "database": "connected"}
    assert serial(site) != before
    site.assert_trusted_through(pebble_root)
    assert site.rsdeploy("deploy").check().changed == 0
