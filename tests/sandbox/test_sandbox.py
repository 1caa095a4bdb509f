"""Sandbox hosts behave like fresh Debian 12 machines reached over SSH, and clean up after."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import docker
import pytest
import yaml

from rsdeploy.roles import internal_tls
from rsdeploy_dev import REPO_ROOT
from rsdeploy.stack import load_inventory
from rsdeploy_dev import registry
from rsdeploy_dev import sandbox as sandbox_module

pytestmark = pytest.mark.sandbox


def _system_state(sandbox, host: str) -> str:
    return sandbox.ssh(host, "systemctl is-system-running --wait", check=False).stdout.strip()


def test_fresh_hosts_run_systemd_as_pid_1(sandbox):
    for host in sandbox.hosts:
        # "degraded" would mean a failed unit: a fresh host must have none.
        assert _system_state(sandbox, host.name) == "running"
        init = sandbox.ssh(host.name, "ps -o comm= -p 1 2>/dev/null || cat /proc/1/comm").stdout
        assert init.strip() == "systemd"


def test_ssh_trusts_only_the_pinned_host_key(sandbox, tmp_path):
    host = sandbox.hosts[0]
    assert sandbox.ssh(host.name, "id -u").stdout.strip() == "0"
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    refused = subprocess.run(
        ["ssh", "-F", str(sandbox.paths.ssh_config), "-o", f"UserKnownHostsFile={empty}",
         host.name, "true"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 255
    assert "Host key verification failed" in refused.stderr
    other_key = sandbox.paths.host_key(sandbox.hosts[1].name).with_suffix(".pub").read_text()
    assert other_key.split()[1] not in sandbox.paths.host_key(host.name).with_suffix(
        ".pub").read_text()  # every host has its own key


def test_hosts_reach_each_other_by_name_and_address(sandbox):
    first, second = sandbox.hosts[:2]
    for target in (second.name, second.address):
        banner = sandbox.ssh(first.name, "python3 -c \"import socket; s=socket.create_connection("
                             f"('{target}', 22), 5); print(s.recv(8).decode())\"").stdout
        assert banner.startswith("SSH-2.0")


def test_docker_restart_keeps_the_host_usable_on_the_same_port(sandbox, docker_client):
    host = sandbox.hosts[-1]
    container = docker_client.containers.get(host.name)
    container.restart(timeout=20)
    container.reload()
    published = container.attrs["NetworkSettings"]["Ports"]["22/tcp"][0]["HostPort"]
    assert int(published) == host.port(22)
    deadline = time.monotonic() + 60
    while sandbox.ssh(host.name, "true", check=False).returncode != 0:
        assert time.monotonic() < deadline, "sshd did not come back after docker restart"
        time.sleep(1)
    assert _system_state(sandbox, host.name) == "running"
    assert sandbox.ssh(host.name, "hostname -I").stdout.split()[0] == host.address


def test_up_again_reuses_the_running_hosts(sandbox, docker_client):
    before = {h.name: docker_client.containers.get(h.name).id for h in sandbox.hosts}
    again = sandbox_module.up(sandbox.prefix, len(sandbox.hosts))
    assert {h.name: docker_client.containers.get(h.name).id for h in again.hosts} == before
    assert again.hosts == sandbox.hosts  # same addresses and ports


def _inventory_env(sandbox) -> dict[str, str]:
    return {**os.environ, "RS_SANDBOX_PREFIX": sandbox.prefix}


def test_pyinfra_runs_an_operation_over_ssh(sandbox):
    marker = f"/root/pyinfra-{time.time_ns()}"
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "pyinfra"),
         "-y", str(REPO_ROOT / "inventories" / "sandbox.py"), "server.shell",
         f'commands=["touch {marker}"]'],
        env=_inventory_env(sandbox), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for host in sandbox.hosts:
        assert sandbox.ssh(host.name, f"test -f {marker}", check=False).returncode == 0


def test_testinfra_connects_with_the_ssh_config(sandbox):
    import testinfra

    host = testinfra.get_host(f"ssh://{sandbox.hosts[0].name}",
                              ssh_config=str(sandbox.paths.ssh_config))
    assert host.system_info.distribution == "debian"
    assert host.system_info.release.startswith("12")
    assert host.service("ssh").is_running
    assert host.package("python3").is_installed
    assert not host.package("docker.io").is_installed  # nothing of the stack before bootstrap


def test_sandbox_inventory_validates_with_its_secrets(sandbox):
    secrets = sandbox.paths.secrets
    assert secrets.stat().st_mode & 0o777 == 0o600
    # The random secrets, the stack CA (TLS between hosts), made once, and the password of the
    # machine's registry the hosts pull from.
    assert set(yaml.safe_load(secrets.read_text())) == set(sandbox_module.SECRET_BYTES) | {
        internal_tls.KEY_SECRET, internal_tls.CERT_SECRET, "registry_password"}
    os.environ["RS_SANDBOX_PREFIX"] = sandbox.prefix
    try:
        hosts = load_inventory(str(REPO_ROOT / "inventories" / "sandbox.py"), str(secrets), env={})
    finally:
        del os.environ["RS_SANDBOX_PREFIX"]
    assert sorted(hosts) == [h.name for h in sandbox.hosts]
    for name, hs in hosts.items():
        assert hs.address == sandbox.host(name).address
        assert hs.stack.app.registry == "rsdeploy-registry:5000/residency"  # the machine's
        assert not hs.stack.grafana.enabled and not hs.stack.loki.enabled


def _get(url: str, context, basic_auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if basic_auth:
        token = base64.b64encode(":".join(basic_auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_registry_serves_pushes_over_tls_with_auth_only(sandbox, docker_client, infra_images):
    """The machine's registry: pushed to from here, pulled from by the sandbox's hosts by its
    one name, TLS from its own CA, a login for every request."""
    pushed = sandbox_module.push_images(sandbox.prefix, ["redis-exporter"], client=docker_client)
    registry = sandbox_module.Sandbox.load(sandbox.prefix).registry
    assert pushed == [f"127.0.0.1:{registry['port']}/rsdeploy/redis-exporter:1.45"]
    password = sandbox_module.registry_password(sandbox.prefix)
    # The API answers 401 without credentials, 200 with them (TLS from the registry's CA).
    trusted = ssl.create_default_context(cafile=registry["ca"])
    catalog = f"https://127.0.0.1:{registry['port']}/v2/_catalog"
    assert _get(catalog, trusted) == 401
    assert _get(catalog, trusted, (registry["username"], password)) == 200
    assert _get(catalog, trusted, (registry["username"], "wrong")) == 401
    # Anonymous pulls are refused; with the login the image comes back.
    docker_client.images.remove(pushed[0], noprune=True)
    with pytest.raises(docker.errors.APIError):
        docker.from_env().images.pull(pushed[0])
    docker_client.images.pull(pushed[0], auth_config={"username": registry["username"],
                                                      "password": password})
    assert docker_client.images.get(pushed[0]).id == docker_client.images.get(
        "rsdeploy/redis-exporter:1.45").id
    # Hosts reach it by name on the sandbox network, trusting its CA.
    host = sandbox.hosts[0].name
    ca = Path(registry["ca"]).read_text()
    subprocess.run(["ssh", "-F", str(sandbox.paths.ssh_config), host, "cat > /tmp/sandbox-ca.crt"],
                   input=ca, text=True, check=True, timeout=30)
    url = f"https://{registry['name']}:5000/v2/_catalog"
    curl = f"curl -s -o /dev/null -w '%{{http_code}}' --cacert /tmp/sandbox-ca.crt {url}"
    assert sandbox.ssh(host, curl).stdout == "401"
    authorized = sandbox.ssh(host, f"{curl} -u {registry['username']}:{password}").stdout
    assert authorized == "200"
    with pytest.raises(ssl.SSLError), socket.create_connection(  # untrusted without the CA
            ("127.0.0.1", registry["port"]), 5) as raw:
        ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")


def test_down_removes_what_it_made_and_nothing_else(docker_client):
    prefix = "rs-test-down"
    made = sandbox_module.up(prefix, 1)
    sandbox_module.ensure_registry(prefix, docker_client)  # the machine's joins its network
    bystander = docker_client.containers.run("rsdeploy/base:bookworm", ["sleep", "300"],
                                             detach=True, name=f"{prefix}-bystander")
    bystander_volume = docker_client.volumes.create(f"{prefix}-bystander")
    try:
        sandbox_module.down(prefix)
        selector = {"label": f"{sandbox_module.LABEL}={prefix}"}
        assert docker_client.containers.list(all=True, filters=selector) == []
        assert docker_client.volumes.list(filters=selector) == []
        assert docker_client.networks.list(filters=selector) == []
        assert not made.paths.root.exists()  # key, known_hosts, secrets, state
        bystander.reload()
        assert bystander.status == "running"
        shared = docker_client.containers.get(registry.CONTAINER)  # serves other sandboxes
        assert shared.status == "running"
        assert f"{prefix}-net" not in shared.attrs["NetworkSettings"]["Networks"]
        assert docker_client.volumes.get(bystander_volume.name)
    finally:
        bystander.remove(force=True)
        bystander_volume.remove()
