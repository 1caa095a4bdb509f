"""The systemd/PM2 layout spread over four sandbox hosts (RS_SANDBOX_TOPOLOGY=split): db+redis,
two app hosts behind nginx, web+monitoring; a fifth host outside the stack. Driven through the
rsdeploy CLI: bootstrap -> v1.0.0 -> verify every host -> only the app hosts reach the data
stores, over verified TLS only -> Prometheus sees every host -> a rolling v1.1.0 under load ->
v1.2.0-broken stops at the first app host while the site keeps serving -> rollback of both app
hosts at once under load. Rows written through the API before each step are all there after it.

The steps run in file order, as an operator would run them. Each release is brought to the app
hosts ahead of its deploy (``rsdeploy deliver``, which switches nothing: checked): the first app
host builds it, the second gets that build from the deploying machine's cache. So the steps
measured under load measure the switch: beside the other chains on two cores, builds while
measured timed out requests (p50 1.2-2 s). The single-host systemd chain measures a deploy that
builds as it goes.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import (
    FIRST_VERSION,
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
    serving,
    site_certificate,
    split_hosts,
    write_note,
)

pytestmark = pytest.mark.sandbox

NEXT, BROKEN = "v1.1.0", "v1.2.0-broken"
#: Alembic head of each release (examples/refapp).
HEADS = {FIRST_VERSION: "0001", NEXT: "0002"}


@pytest.fixture(scope="module")
def site():
    yield from ready_site("rs-e2e-sysd-split", "build", layout="systemd", topology="split")


@pytest.fixture(scope="module")
def hosts(site):
    return split_hosts(site)


@pytest.fixture(scope="module")
def ca_file(site, tmp_path_factory):
    return site_certificate(site, tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def written():
    return []


def missing_services(site, hosts) -> dict[str, set[str]]:
    """Per stack host, the services its settings say it runs that ``rsdeploy status`` does not
    find up (empty sets: every one is up)."""
    run = site.rsdeploy("status", "--json")
    assert run.code == 0, run.output[-3000:]
    found = json.loads(run.stdout)
    missing = {}
    for key, host in hosts.items():
        if key == "outsider":
            continue
        hs = site.settings(host.name)
        up = {c["name"] for c in found[host.name]["checks"] if c["verdict"] == "ok" and c["since"]}
        missing[host.name] = set(hs.layout.services(hs)) - up
    return missing


def test_first_deploy_spreads_the_stack_over_its_hosts(site, hosts, written):
    site.heavy("bootstrap").check()
    run = site.heavy("deploy", "--version", FIRST_VERSION).check()
    assert site.wait_healthy()["database"] == "connected"
    # Every host runs what its roles need, and the db host runs no app and no nginx.
    assert missing_services(site, hosts) == {h.name: set() for key, h in hosts.items()
                                             if key != "outsider"}
    assert on(site, hosts["db"], "systemctl is-active postgresql@15-main redis-server "
                                 "nginx residency-backend@blue || true").split() == \
        ["active", "active", "inactive", "inactive"]
    # Celery beat on the first app host only: two would send every scheduled task twice.
    beat = "systemctl is-active residency-celery-beat@blue || true"
    assert on(site, hosts["app1"], beat).strip() == "active"
    assert on(site, hosts["app2"], beat).strip() == "inactive"
    # The first app host migrated; the second found the database at its head.
    assert run.output.index(f"{hosts['app1'].name}: {FIRST_VERSION} serves") \
        < run.output.index(f"{hosts['app2'].name}: {FIRST_VERSION} serves")
    assert_serves_everywhere(site, FIRST_VERSION, HEADS)
    write_note(site, written, "verify")


def test_verify_passes_on_every_host(site, written):
    assert_verified(site)
    assert_rows_kept(site, written)


def test_only_app_hosts_reach_the_data_stores_and_only_over_tls(site, hosts):
    assert_only_app_hosts_reach_the_data_stores_over_tls(site, hosts, "runuser -u postgres -- psql")


def test_prometheus_on_the_monitoring_host_sees_every_host(site, hosts):
    assert_prometheus_sees_every_host(site, hosts)


def deliver_ahead(site, hosts, version: str) -> None:
    """``rsdeploy deliver --version VERSION`` to the first app host, then to both: the first
    builds it (or unpacks this machine's build of it), the second gets the first's build from
    this machine instead of building, and nothing serves it yet (the site still answers with
    the release it served)."""
    before = serving(site)
    site.rsdeploy("deliver", "--version", version, "--host", hosts["app1"].name).check()
    run = site.rsdeploy("deliver", "--version", version).check()
    assert f"Unpack the build of {version}-" in run.output and f"Build {version} (" not in run.output, \
        run.output[-3000:]
    for key in ("app1", "app2"):
        built = on(site, hosts[key], "ls -d /opt/residency-scheduler/releases/"
                                     f"{version}-*/.rsdeploy-built 2>/dev/null | wc -l").strip()
        assert built == "1", (key, run.output[-3000:])
    assert serving(site) == before


def test_rolling_release_under_load_drops_no_request(site, hosts, ca_file, written):
    deliver_ahead(site, hosts, NEXT)
    assert_rolling_release_drops_no_request(site, hosts, ca_file, written, NEXT, HEADS)
    write_note(site, written, "the broken release")


def test_a_failing_app_host_stops_the_rollout(site, hosts, ca_file, written):
    deliver_ahead(site, hosts, BROKEN)
    assert_a_failing_app_host_stops_the_rollout(site, hosts, ca_file, written, BROKEN, NEXT,
                                                HEADS)


def test_rollback_in_one_wave_under_load(site, hosts, ca_file, written):
    assert_rollback_in_one_wave(site, hosts, ca_file, written, FIRST_VERSION, HEADS)
