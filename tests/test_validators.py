"""The validators where ``rsdeploy check`` runs without the machine a deploy needs (a CI job's
container): units that depend on a package's unit this machine lacks, and nft without netlink.
A skip says so and is never a pass of a broken file."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rsdeploy.roles import base
from rsdeploy.validate import systemd_verify
from tests.conftest import load_example, render_example

UNIT = """[Unit]
Description=needs a package's unit
Requires={dependency}
After={dependency} network-online.target

[Service]
Type=oneshot
ExecStart=/bin/true
"""


@pytest.mark.parametrize("dependency", ["rsdeploy-absent-engine.service",
                                        "rsdeploy-absent-db@15-main.service"])
def test_a_unit_needing_a_package_unit_this_machine_lacks_is_verified_alone(tmp_path, dependency):
    unit = tmp_path / "rs-needs.service"
    unit.write_text(UNIT.format(dependency=dependency))
    plain = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert "not found" in plain.stdout + plain.stderr  # what the stand-ins are for
    verdict = systemd_verify(unit, "/etc/systemd/system/rs-needs.service")
    assert verdict.ok, verdict.detail


def test_a_broken_unit_still_fails_with_stand_ins(tmp_path):
    unit = tmp_path / "rs-broken.service"
    unit.write_text(UNIT.format(dependency="rsdeploy-absent-engine.service")
                    .replace("/bin/true", "/opt/rsdeploy-absent/bin/serve"))
    verdict = systemd_verify(unit, "/etc/systemd/system/rs-broken.service")
    assert not verdict.ok and "/opt/rsdeploy-absent/bin/serve" in verdict.detail, verdict.detail


@pytest.fixture(scope="module")
def firewall(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("firewall")
    hs = load_example("example_docker")["rs1.example.org"]
    render_example("example_docker", root)
    return root / hs.name / base.FIREWALL_FILE.lstrip("/")


def test_nft_checks_the_ruleset_for_real_where_it_may(firewall):
    verdict = base.check_firewall(firewall)
    assert verdict.ok and not verdict.skipped, verdict.detail
    broken = firewall.with_name("broken.nft")
    broken.write_text(firewall.read_text().replace("accept", "acept", 1))
    verdict = base.check_firewall(broken)
    assert not verdict.ok and not verdict.skipped, verdict.detail


def test_nft_without_netlink_skips_and_says_why(firewall, tmp_path, monkeypatch):
    """The same nft with CAP_NET_ADMIN dropped: a skip naming the reason, not a pass; and a
    ruleset nft can refuse without the kernel (a syntax error) still fails."""
    nft = tmp_path / "bin" / "nft"
    nft.parent.mkdir()
    nft.write_text("#!/bin/sh\n"
                   f"exec capsh --drop=cap_net_admin -- -c 'exec {shutil.which('nft')} \"$@\"' nft \"$@\"\n")
    nft.chmod(0o755)
    monkeypatch.setenv("PATH", f"{nft.parent}:{os.environ['PATH']}")
    verdict = base.check_firewall(firewall)
    assert verdict.ok and verdict.skipped and "no CAP_NET_ADMIN" in verdict.detail, verdict
    broken = firewall.with_name("broken.nft")
    broken.write_text(firewall.read_text().replace("accept", "acept", 1))
    verdict = base.check_firewall(broken)
    assert not verdict.ok and not verdict.skipped and "syntax error" in verdict.detail, verdict
