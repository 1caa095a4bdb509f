"""``rsdeploy init`` and site repositories, without hosts: what the scaffold holds (secrets
0600 and strong, a CA per environment, nothing secret in git), that it passes ``rsdeploy check``
with the real validators straight away in both layouts, that commands inside it find their
inventory without -i, and that bad arguments are refused in one line with nothing written.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rsdeploy import __version__, scaffold
from rsdeploy.secrets import read_file
from tests.conftest import site_repository


def rsdeploy(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """This checkout's rsdeploy, as a user types it in ``cwd``."""
    return subprocess.run([sys.executable, "-m", "rsdeploy.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def docker_site(tmp_path_factory) -> Path:
    return site_repository(tmp_path_factory.mktemp("init") / "ops")


def test_the_scaffold_holds_a_site_with_private_strong_secrets(docker_site):
    expected = {"rsdeploy.yml", ".gitignore", "known_hosts", "README.md", ".gitlab-ci.yml",
                ".github/workflows/deploy.yml", "ci/rsdeploy-ci.sh", "ci/runner/Dockerfile",
                "inventories/staging.py", "inventories/production.py", "secrets/staging.yml",
                "secrets/production.yml"}
    found = {str(p.relative_to(docker_site)) for p in docker_site.rglob("*")
             if p.is_file() and ".git/" not in str(p)}
    assert found == expected
    assert stat.S_IMODE((docker_site / "secrets").stat().st_mode) == 0o700
    values = {}
    for env in ("staging", "production"):
        path = docker_site / "secrets" / f"{env}.yml"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        values[env] = read_file(path)
        assert set(scaffold.RANDOM_SECRETS) <= set(values[env])
        for name in scaffold.RANDOM_SECRETS:
            assert len(values[env][name]) >= 32, name  # the app asks for 12 to 32
        assert "BEGIN CERTIFICATE" in values[env]["stack_ca_cert"]
    # Nothing shared between environments: each its own random values and CA.
    assert not set(values["staging"].values()) & set(values["production"].values())
    assert stat.S_IMODE((docker_site / "ci/rsdeploy-ci.sh").stat().st_mode) == 0o755


def test_git_keeps_no_secret(docker_site):
    tracked = subprocess.run(["git", "-C", str(docker_site), "ls-files"], capture_output=True,
                             text=True, check=True).stdout.split()
    assert "inventories/staging.py" in tracked and "known_hosts" in tracked
    assert not [path for path in tracked if path.startswith("secrets")]
    everything = "".join((docker_site / path).read_text() for path in tracked)
    for env in ("staging", "production"):
        for value in read_file(docker_site / "secrets" / f"{env}.yml").values():
            assert value not in everything


@pytest.mark.parametrize(("layout", "hosts"), [
    ("docker", ("10.0.0.5",)), ("systemd", ("10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8"))])
def test_a_fresh_scaffold_passes_check_in_each_environment(tmp_path, layout, hosts):
    """Both inventories, the one init filled and the placeholders of the other, pass the real
    validators; several hosts split the roles."""
    site = site_repository(tmp_path / "ops", layout=layout, hosts=hosts)
    for env in ("staging", "production"):
        run = rsdeploy("check", "--env", env, cwd=site)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr
        assert run.stdout.rstrip().endswith("all files pass")
        assert not [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    text = (site / "inventories/staging.py").read_text()
    expected = [f'host("{h}", "{h}", {scaffold.roles_for(len(hosts))[i]})'.replace("'", '"')
                for i, h in enumerate(hosts)]
    assert all(line in text for line in expected), text


def test_commands_inside_a_site_find_their_inventory_without_i(docker_site, tmp_path):
    deeper = docker_site / "inventories"  # rsdeploy.yml is found from a subdirectory too
    staging = rsdeploy("render", "--out", str(tmp_path / "s"), cwd=deeper)
    assert staging.returncode == 0, staging.stderr
    assert (tmp_path / "s" / "10.0.0.5").is_dir()
    production = rsdeploy("render", "--env", "production", "--out", str(tmp_path / "p"), cwd=deeper)
    assert production.returncode == 0 and (tmp_path / "p" / "production-1.invalid").is_dir()
    by_variable = rsdeploy("render", "--out", str(tmp_path / "v"), cwd=deeper,
                           env={"PATH": "/usr/bin:/bin", "RSDEPLOY_ENV": "production"})
    assert by_variable.returncode == 0 and (tmp_path / "v" / "production-1.invalid").is_dir()


@pytest.mark.parametrize(("where", "args", "message"), [
    ("site", ["status", "--env", "qa"], "no environment 'qa' (environments: staging, production)"),
    ("site", ["status", "--env", "production"],
     "host production-1.invalid is a placeholder (rsdeploy init): put the environment's own host"),
    ("site", ["bootstrap", "--initial-user", "Root User"], "--initial-user: 'Root User' is not a valid name"),
    ("site", ["status", "-i", "inventories/staging.py", "--env", "staging"], "give it or -i, not both"),
    ("elsewhere", ["status"], "no inventory: give -i INVENTORY, or run inside a site repository"),
])
def test_a_wrong_environment_or_placeholder_is_refused_before_any_host(docker_site, tmp_path,
                                                                      where, args, message):
    run = rsdeploy(*args, cwd=docker_site if where == "site" else tmp_path)
    assert run.returncode == 2 and run.stdout == "", run.stdout + run.stderr
    assert len(run.stderr.splitlines()) == 1 and message in run.stderr, run.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--layout", "k8s", "--domain", "rs.example.org", "--host", "10.0.0.5"],
     "--layout 'k8s': expected one of docker, systemd"),
    (["--layout", "docker", "--domain", "Example.ORG", "--host", "10.0.0.5"],
     "--domain: 'Example.ORG' is not a valid domain name"),
    (["--layout", "docker", "--domain", "localhost", "--host", "10.0.0.5"],
     "--domain: 'localhost' is not a valid domain name"),
    (["--layout", "docker", "--domain", "rs.example.org", "--host", "10.0.0.5;reboot"],
     "--host '10.0.0.5;reboot': not a host name or IP address"),
    (["--layout", "docker", "--domain", "rs.example.org", "--host", "a.invalid"],
     "--host 'a.invalid': not a host name or IP address"),
    (["--layout", "docker", "--domain", "rs.example.org", "--host", "10.0.0.5", "--host",
      "10.0.0.5"], "--host 10.0.0.5: given twice"),
    (["--layout", "docker", "--domain", "rs.example.org", "--host", "db.example.org", "--host",
      "10.0.0.6"], "--host db.example.org: several hosts reach each other by address"),
    (["--layout", "docker", "--domain", "rs.example.org", "--host", "10.0.0.5", "--email", "ops"],
     "--email: 'ops' is not a valid e-mail address"),
    (["--layout", "docker", "--domain", "rs.example.org", "--host", "10.0.0.5", "--env", "qa"],
     "--env 'qa': expected one of staging, production"),
    (["--layout", "docker", "--domain", "rs.example.org"],
     "the following arguments are required: --host"),
])
def test_bad_init_arguments_are_one_line_and_write_nothing(tmp_path, args, message):
    target = tmp_path / "ops"
    run = rsdeploy("init", str(target), *args, cwd=tmp_path)
    assert run.returncode == 2 and run.stdout == "", run.stdout + run.stderr
    assert len(run.stderr.splitlines()) == 1 and message in run.stderr, run.stderr
    assert not target.exists()


def test_init_into_a_directory_that_holds_something_is_refused(tmp_path):
    target = tmp_path / "ops"
    target.mkdir()
    (target / "notes.txt").write_text("ours")
    run = rsdeploy("init", str(target), "--layout", "docker", "--domain", "rs.example.org",
                   "--host", "10.0.0.5", cwd=tmp_path)
    assert run.returncode == 2 and "exists and is not an empty directory" in run.stderr
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_the_pipelines_and_site_file_name_this_rsdeploy(docker_site):
    site = yaml.safe_load((docker_site / "rsdeploy.yml").read_text())
    assert site == {"default_env": "staging", "environments": {
        env: {"inventory": f"inventories/{env}.py", "secrets": f"secrets/{env}.yml"}
        for env in ("staging", "production")}}
    assert f"rsdeploy {__version__}" in (docker_site / "inventories/staging.py").read_text()


def test_the_deploy_user_gets_the_keys_of_whoever_ran_init(tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0dUa3Y1gqVjSzn3nCqe9S0n0t5G1g0mhzd2WwK7Q0e ana@laptop"
    (home / ".ssh" / "id_ed25519.pub").write_text(key + "\n")
    run = rsdeploy("init", str(tmp_path / "ops"), "--layout", "docker", "--domain",
                   "rs.example.org", "--host", "10.0.0.5", cwd=tmp_path,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
    assert run.returncode == 0, run.stderr
    inventory = (tmp_path / "ops/inventories/staging.py").read_text()
    assert f'"{key}",' in inventory
