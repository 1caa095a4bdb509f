"""The sandbox: the hosts ``rsdeploy sandbox up`` made on this machine (systemd containers).

    rsdeploy sandbox up --hosts 1            # or: --hosts 4 for the multi-host layout
    rsdeploy images build && rsdeploy images push
    rsdeploy check -i inventories/sandbox.py --secrets .sandbox/rs-sandbox/secrets.yml

Reads ``.sandbox/<prefix>/state.json`` (prefix: $RS_SANDBOX_PREFIX, default rs-sandbox). Hosts are
reached over SSH on 127.0.0.1 with the sandbox's key, pinned host keys and strict checking; their
``address`` is their fixed IP on the sandbox network (names resolve there too, but not inside the
containers Docker runs on a host, which get Docker's default resolvers). Images come from the
sandbox registry (``images push``). RS_SANDBOX_DELIVERY picks the app's delivery:

- ``pull`` (default): every image from the registry;
- ``bundle``: ``docker save`` files uploaded instead (``images bundle --out
  .sandbox/<prefix>/bundles``), every image keeping its local name;
- ``build``: the app images built on the host from the reference app's repository
  (``.sandbox/<prefix>/refapp``, written by ``sandbox up``), FROM the base image in the
  registry (``images push base``); the other images pulled.

The site's certificate is self-signed; with RS_SANDBOX_TLS=certbot it comes from the sandbox's
ACME server instead (tls.mode certbot against pebble, for ``<prefix>.test`` and
``www.<prefix>.test``): start that first with ``rsdeploy_dev.sandbox.ensure_acme(prefix, client,
{name: web host address})``, as tests/e2e/test_docker_certbot.py does. Hosts trust its TLS
certificate through the sandbox CA; nothing trusts the certificates it issues.

RS_SANDBOX_TOPOLOGY=split spreads the roles over the hosts (``sandbox up --hosts 4`` or more):
db+redis, app on every host between, web+monitoring on the last; RS_SANDBOX_STACK_HOSTS=N keeps
the hosts after the first N outside the stack (non-peers).

RS_SANDBOX_MONITORING=off runs the stack without Prometheus, Alertmanager and the exporters
(scenarios that do not concern them: fewer images to push and pull).

RS_SANDBOX_LAYOUT=systemd deploys the systemd layout instead (Debian's PostgreSQL, Redis and
nginx on the host, the app built from the reference app's repository and run by systemd and
PM2): no image is used, hosts install from Debian, PyPI and npm (this machine's CA bundle
trusted for the TLS-intercepting proxy).
"""

import os

from rsdeploy.errors import UserError
from rsdeploy_dev.images import BASE, INFRA, registry_path
from rsdeploy_dev import registry as dev_registry
from rsdeploy_dev.sandbox import LAYOUT_ENV, Sandbox

sandbox = Sandbox.load(os.environ.get("RS_SANDBOX_PREFIX"))
layout = os.environ.get(LAYOUT_ENV, "docker")
if layout not in ("docker", "systemd"):
    raise UserError(f"RS_SANDBOX_LAYOUT={layout}: expected docker or systemd")
delivery = os.environ.get("RS_SANDBOX_DELIVERY", "pull")
tls_mode = os.environ.get("RS_SANDBOX_TLS", "self-signed")
monitoring = os.environ.get("RS_SANDBOX_MONITORING", "on") != "off"
#: The machine's registry, on the sandbox's network (rsdeploy_dev.registry).
registry = f"{dev_registry.NAME}:{dev_registry.PORT}"
domain = f"{sandbox.prefix}.test"


def image(name: str) -> str:
    """The offline image standing in for a component's upstream one, as the hosts name it."""
    spec = INFRA[name]
    return spec.ref if delivery == "bundle" else f"{registry}/{registry_path(spec)}"


APP_DELIVERY = {
    "pull": {"delivery": "pull", "registry": f"{registry}/residency",
             "registry_username": dev_registry.USER},
    # Written by: rsdeploy images bundle --out .sandbox/<prefix>/bundles
    "bundle": {"delivery": "bundle", "bundle_dir": str(sandbox.paths.root / "bundles")},
    "build": {"delivery": "build", "source_repo": str(sandbox.paths.app_source),
              "registry": f"{registry}/residency", "registry_username": dev_registry.USER,
              # The app's Dockerfiles start FROM this; hosts reach no other registry.
              "build_args": {"BASE_IMAGE": f"{registry}/{registry_path(BASE)}"}},
}


def tls(mode: str) -> dict:
    """The ``tls`` section (and the names on the certificate) for RS_SANDBOX_TLS."""
    if mode == "self-signed":
        return {"tls": {"mode": "self-signed", "certbot_image": image("certbot")}}
    if mode != "certbot":
        raise UserError(f"RS_SANDBOX_TLS={mode}: expected self-signed or certbot")
    if not sandbox.acme:
        raise UserError(f"RS_SANDBOX_TLS=certbot: sandbox {sandbox.prefix} runs no ACME server "
                        "(start it with rsdeploy_dev.sandbox.ensure_acme)")
    return {"tls": {"mode": "certbot", "email": f"ops@{domain}",
                    "acme_server": sandbox.acme["directory"], "certbot_image": image("certbot")},
            "extra_domains": [f"www.{domain}"]}


stack = {
    "layout": layout,
    "version": "v1.0.0",
    "domain": domain,
    **tls(tls_mode),
    # Natively every release is built on the host from the tag's source.
    "app": APP_DELIVERY[delivery] if layout == "docker" else {"source_repo": str(sandbox.paths.app_source)},
    # Debian's docker.io: Docker's own apt repository is not reachable from the sandbox.
    "docker": {"source": "distro"},
    # The sandbox CA (the ACME server's certificate), the registry's CA, and this machine's
    # bundle, which trusts the TLS-intercepting proxy in front of PyPI and npm here.
    "trusted_ca_certs": [str(sandbox.paths.ca_cert), str(dev_registry.ca_cert()),
                         "/etc/ssl/certs/ca-certificates.crt"],
    "postgres": {"image": image("postgres")},
    "redis": {"image": image("redis")},
    "nginx": {"image": image("nginx")},
    "prometheus": {"enabled": monitoring, "image": image("prometheus")},
    "alertmanager": {"enabled": monitoring, "image": image("alertmanager")},
    "exporters": {
        "node_exporter": {"image": image("node-exporter"), "port": 9100},
        "postgres_exporter": {"image": image("postgres-exporter"), "port": 9187},
        "redis_exporter": {"image": image("redis-exporter"), "port": 9121},
        # No offline source: cAdvisor has no Debian package and no registry is reachable.
        "cadvisor": {"enabled": False, "image": "ghcr.io/google/cadvisor:0.53.0", "port": 8080},
    },
    # No offline source for Grafana, Loki, Alloy or Promtail (no Debian package, no registry):
    # the sandbox runs without them; their configs are checked statically by the template tests.
    # Flower natively from PyPI; the docker layout's mher/flower image has no offline source.
    "flower": {"enabled": layout == "systemd"},
    "grafana": {"enabled": False},
    "loki": {"enabled": False},
    "log_shipper": {"kind": "none"},
}

#: Which roles each host carries, by number of sandbox hosts (the last host is monitoring).
ROLES_BY_COUNT = {
    1: [["db", "redis", "app", "web", "monitoring"]],
    2: [["db", "redis", "app", "web"], ["monitoring"]],
    3: [["db", "redis"], ["app", "web"], ["monitoring"]],
    4: [["db", "redis"], ["app"], ["web"], ["monitoring"]],
}
#: RS_SANDBOX_TOPOLOGY=split: the data stores, app hosts behind nginx, web and monitoring
#: together: db+redis, app x (N - 2), web+monitoring over the stack's N hosts (4 or more).
#: RS_SANDBOX_STACK_HOSTS=N takes the first N sandbox hosts only (default all): the others
#: stay outside the stack (non-peers).
topology = os.environ.get("RS_SANDBOX_TOPOLOGY", "default")
if topology not in ("default", "split"):
    raise UserError(f"RS_SANDBOX_TOPOLOGY={topology}: expected default or split")
_stack_hosts = sandbox.hosts[:int(os.environ.get("RS_SANDBOX_STACK_HOSTS") or len(sandbox.hosts))]
if topology == "split" and len(_stack_hosts) < 4:
    raise UserError("RS_SANDBOX_TOPOLOGY=split needs 4 stack hosts or more (rsdeploy sandbox up "
                    f"--hosts 4); {sandbox.prefix} gives {len(_stack_hosts)}")
_roles_of_hosts = ([["db", "redis"]] + [["app"]] * (len(_stack_hosts) - 2) + [["web", "monitoring"]]
                   if topology == "split" else ROLES_BY_COUNT[min(len(_stack_hosts), 4)])


def host_data(host, roles: list[str]) -> dict:
    """pyinfra connection data (loopback SSH, strict host keys) and the host's stack settings."""
    return {
        "ssh_hostname": "127.0.0.1",
        "ssh_port": host.port(22),
        "ssh_user": "root",
        "ssh_key": str(sandbox.paths.key),
        "ssh_known_hosts_file": str(sandbox.paths.known_hosts),
        "ssh_strict_host_key_checking": "yes",
        "address": host.address,
        "roles": roles,
    }


sandbox_hosts = (
    [(host.name, host_data(host, roles))
     for host, roles in zip(_stack_hosts, _roles_of_hosts)],
    stack,
)
