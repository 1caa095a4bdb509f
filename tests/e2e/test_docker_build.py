"""The docker layout with ``build`` delivery on a fresh sandbox host: the app images are built
on the host from the release tag's source (``git archive`` uploaded from the app's repository;
the host needs neither a clone nor access to the repository), FROM a base image in the site's registry."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.conftest import FIRST_VERSION, assert_verified, ready_site

pytestmark = pytest.mark.sandbox

NEXT_VERSION = "v1.1.0"
REVISION_LABEL = "org.opencontainers.image.revision"


@pytest.fixture(scope="module")
def site():
    yield from ready_site("rs-e2e-build", "build")


def tag_commit(site, tag: str) -> str:
    repo = site.sandbox.paths.app_source
    return subprocess.run(["git", "-C", str(repo), "rev-parse", f"{tag}^{{commit}}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def built_revisions(site, tag: str) -> dict[str, str]:
    """{image: its revision label} of the app images of ``tag`` on the host."""
    refs = [f"residency-scheduler-{part}:{tag}" for part in ("backend", "frontend")]
    out = site.on_host("docker image inspect " + " ".join(refs))
    return {ref: image["Config"]["Labels"].get(REVISION_LABEL)
            for ref, image in zip(refs, json.loads(out))}


def test_build_delivery_builds_the_tagged_source_on_the_host(site):
    site.heavy("bootstrap").check()
    site.heavy("deploy", "--version", FIRST_VERSION).check()
    assert site.wait_healthy() == {"status": "healthy", "database": "connected"}
    commit = tag_commit(site, FIRST_VERSION)
    assert set(built_revisions(site, FIRST_VERSION).values()) == {commit}
    # Built from source, not pulled: the registry never held app images for this site.
    repositories = site.on_host("docker images --format '{{.Repository}}'").split()
    assert not [repo for repo in repositories if "/residency/" in repo], repositories
    # The host got archives, never a clone of the repository.
    clones = site.on_host("find /opt/residency-scheduler /var/lib/residency-scheduler -name .git")
    assert clones.strip() == "", clones
    staged = site.on_host("ls -A /var/lib/residency-scheduler/.staging").split()
    assert not [name for name in staged if name.endswith(".tar")], f"sources left: {staged}"
    assert_verified(site)


def test_rerun_builds_nothing(site):
    run = site.rsdeploy("deploy").check()
    assert run.changed == 0, run.output[-3000:]


def test_a_new_tag_is_built_from_its_own_source(site):
    site.rsdeploy("deploy", "--version", NEXT_VERSION).check()
    assert site.wait_healthy() == {"status": "healthy", "database": "connected"}
    assert set(built_revisions(site, NEXT_VERSION).values()) == {tag_commit(site, NEXT_VERSION)}
    code, body = site.curl("/api/v1/version")
    assert code == 200 and json.loads(body)["release"] == NEXT_VERSION, body
    code, page = site.curl("/")
    assert code == 200 and NEXT_VERSION in page
    assert_verified(site, "--version", NEXT_VERSION)


def test_an_unknown_tag_stops_before_any_host_is_contacted(site):
    run = site.rsdeploy("deploy", "--version", "v9.9.9")
    assert run.code == 2, run.output
    lines = run.output.strip().splitlines()
    assert len(lines) == 1 and "app.source_repo" in lines[0] and "no tag v9.9.9" in lines[0], lines
    assert "Traceback" not in run.output
