"""tls.mode certbot on web hosts of either layout: nginx serves certbot's current certificate (so
a renewal reached it), the certificate is not close to expiry, and the renewal timer is armed.

The chain is not checked against a trust store here: a private ACME CA (tls.acme_server, such
as the sandbox's pebble) is trusted by nobody but its own clients.
"""

from __future__ import annotations

import pytest

from rsdeploy.roles import tls

#: certbot renews 30 days before expiry (twice a day): less than this means renewals fail.
MIN_DAYS_LEFT = 14


@pytest.fixture(scope="module")
def certbot_web(hs):
    if not hs.has_role("web") or hs.stack.tls.mode != "certbot":
        pytest.skip(f"{hs.name}: no web role with tls.mode certbot")
    return hs


def fingerprint(host, source: str) -> str:
    """SHA-256 fingerprint of the first certificate ``source`` (a shell command) prints."""
    return host.check_output(f"{source} | openssl x509 -noout -fingerprint -sha256")


def test_nginx_serves_certbots_current_certificate(host, certbot_web):
    s = certbot_web.stack
    live = tls.host_certificate_paths(certbot_web)[0]
    for name in s.domains:
        served = fingerprint(host, f"openssl s_client -connect 127.0.0.1:{s.nginx.https_port} "
                                   f"-servername {name} </dev/null 2>/dev/null")
        on_disk = fingerprint(host, f"cat {live}")
        assert served == on_disk, (f"{certbot_web.name}: nginx for {name}: expected certbot's "
                                   f"{live} ({on_disk}), found {served}")


def test_certificate_is_far_from_expiry(host, certbot_web):
    live = tls.host_certificate_paths(certbot_web)[0]
    check = host.run("openssl x509 -noout -checkend %s -enddate -in %s",
                     str(MIN_DAYS_LEFT * 86400), live)
    assert check.rc == 0, (f"{certbot_web.name}: {live}: expected valid for {MIN_DAYS_LEFT}+ "
                           f"days, found {check.stdout.strip()} (are renewals failing?)")


def test_renewal_timer_is_enabled_and_waiting(host, certbot_web):
    name = tls.renewal_timer(certbot_web)
    timer = host.service(name)
    assert timer.is_enabled and timer.is_running, \
        f"{certbot_web.name}: {name}: expected enabled and active, found it not"
