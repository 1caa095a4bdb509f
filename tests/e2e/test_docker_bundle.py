"""The docker layout on a fresh sandbox host for an air-gapped site: no registry, every image
uploaded as a ``docker save`` bundle (sha256-checked) and loaded on the host. The site's
certificate comes from its own ACME CA (the sandbox's pebble): a new site's first certificate,
obtained by certbot itself before nginx holds port 80."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import FIRST_VERSION, assert_verified, ready_site

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def site():
    yield from ready_site("rs-e2e-bundle", "bundle", tls="certbot")


def test_bundle_delivery_deploys_verifies_and_reruns_clean(site, tmp_path):
    site.rsdeploy("bootstrap").check()
    run = site.rsdeploy("deploy", "--version", FIRST_VERSION).check()
    assert site.wait_healthy() == {"status": "healthy", "database": "connected"}
    assert "(standalone)" in run.output and site.renewal_conf()["authenticator"] == "standalone"
    site.assert_trusted_through(site.acme_root(tmp_path))
    images = site.on_host("docker images --format '{{.Repository}}:{{.Tag}}'").split()
    assert "residency-scheduler-backend:v1.0.0" in images, images
    assert not any("registry" in image for image in images), images
    assert site.on_host("ls /var/lib/residency-scheduler/images 2>/dev/null | wc -l").strip() == "0"
    assert_verified(site)
    assert site.rsdeploy("deploy").check().changed == 0
