"""The docker layout spread over four sandbox hosts (RS_SANDBOX_TOPOLOGY=split): db+redis, two
app hosts behind nginx, web+monitoring; a fifth host outside the stack. Driven through the
rsdeploy CLI: bootstrap -> v1.0.0 -> verify every host -> only the app hosts reach the data
stores, over verified TLS only -> Prometheus sees every host -> a rolling v1.1.0 under load ->
v1.2.0-broken stops at the first app host while the site keeps serving -> rollback of both app
hosts at once under load. Rows written through the API before each step are all there after it.
(The site's CI pipelines deploy and roll back a sandbox host in tests/e2e/test_walkthrough.py.)

The steps run in file order, as an operator would run them.
"""

from __future__ import annotations

from collections import Counter

import pytest

from rsdeploy_dev import images
from rsdeploy_dev import sandbox as sandbox_module
from tests.e2e.conftest import (
    FIRST_VERSION,
    app_host_names,
    assert_a_failing_app_host_stops_the_rollout,
    assert_only_app_hosts_reach_the_data_stores_over_tls,
    assert_prometheus_sees_every_host,
    assert_rollback_in_one_wave,
    assert_rolling_release_drops_no_request,
    assert_rows_kept,
    assert_serves_everywhere,
    assert_verified,
    on,
    ready_site,
    site_certificate,
    split_hosts,
    through_nginx,
    write_note,
)

pytestmark = pytest.mark.sandbox

NEXT, BROKEN = "v1.1.0", "v1.2.0-broken"
#: Alembic head of each release (examples/refapp).
HEADS = {FIRST_VERSION: "0001", NEXT: "0002"}


@pytest.fixture(scope="module")
def site():
    for found in ready_site("rs-e2e-split", "pull", topology="split"):
        images.build(["backend", "frontend"], [NEXT, BROKEN])
        sandbox_module.push_images(found.sandbox.prefix, ["backend", "frontend"], [NEXT, BROKEN])
        yield found


@pytest.fixture(scope="module")
def hosts(site):
    return split_hosts(site)


@pytest.fixture(scope="module")
def ca_file(site, tmp_path_factory):
    return site_certificate(site, tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def written():
    return []


def services_on(site, host) -> set[str]:
    """The Compose services running on a host."""
    out = on(site, host, "docker ps --filter label=com.docker.compose.project=residency-scheduler "
                         "--format '{{.Label \"com.docker.compose.service\"}}'")
    return set(out.split())


def test_first_deploy_spreads_the_stack_over_its_hosts(site, hosts, written):
    site.heavy("bootstrap").check()
    run = site.heavy("deploy").check()
    assert site.wait_healthy()["database"] == "connected"
    assert services_on(site, hosts["db"]) >= {"db", "redis"}
    assert not services_on(site, hosts["db"]) & {"backend", "nginx"}
    # Celery beat on the first app host only: two would send every scheduled task twice.
    assert services_on(site, hosts["app1"]) >= {"backend", "celery-worker", "celery-beat", "frontend"}
    assert services_on(site, hosts["app2"]) >= {"backend", "celery-worker", "frontend"}
    assert "celery-beat" not in services_on(site, hosts["app2"])
    assert services_on(site, hosts["web"]) >= {"nginx", "prometheus"}
    # The first app host migrated; the second found the database at its head.
    assert run.output.index(f"{hosts['app1'].name}: {FIRST_VERSION} serves") \
        < run.output.index(f"{hosts['app2'].name}: {FIRST_VERSION} serves")
    assert_serves_everywhere(site, FIRST_VERSION, HEADS)
    write_note(site, written, "verify")


def test_verify_passes_on_every_host(site, written):
    assert_verified(site)
    assert_rows_kept(site, written)


def test_nginx_balances_both_app_hosts(site):
    """Requests through nginx reach both app hosts, each a fair share: every request carries a
    mark of its own, and the backend log that has it names the host that answered (each
    backend's own health checks request /health too, unmarked)."""
    answers = through_nginx(site, "/health", 12)
    assert all(code == 200 for _, code, _ in answers), answers
    shares = Counter(host for host, _, _ in answers)
    assert set(shares) == app_host_names(site) and min(shares.values()) >= 3, \
        f"requests answered per host: {dict(shares)}"


def test_only_app_hosts_reach_the_data_stores_and_only_over_tls(site, hosts):
    assert_only_app_hosts_reach_the_data_stores_over_tls(
        site, hosts, "docker exec $(docker ps -q --filter label=com.docker.compose.service=db) "
                     "psql -U postgres")


def test_prometheus_on_the_monitoring_host_sees_every_host(site, hosts):
    assert_prometheus_sees_every_host(site, hosts)


def test_rolling_release_under_load_drops_no_request(site, hosts, ca_file, written):
    assert_rolling_release_drops_no_request(site, hosts, ca_file, written, NEXT, HEADS)
    write_note(site, written, "the broken release")


def test_a_failing_app_host_stops_the_rollout(site, hosts, ca_file, written):
    assert_a_failing_app_host_stops_the_rollout(site, hosts, ca_file, written, BROKEN, NEXT,
                                                HEADS)


def test_rollback_in_one_wave_under_load(site, hosts, ca_file, written):
    assert_rollback_in_one_wave(site, hosts, ca_file, written, FIRST_VERSION, HEADS)
