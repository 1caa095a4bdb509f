"""``rsdeploy init``: a team's own site repository, ready for ``rsdeploy check``.

    rsdeploy init residency-ops --layout docker --domain staging.example.org --host 203.0.113.10

It holds, for staging and production: an inventory (the settings a team is likely to change,
present and commented), a secrets file (mode 0600, strong random secrets and a stack CA of its
own), ``rsdeploy.yml`` naming both (commands need no ``-i`` inside the repository), a
``.gitignore`` that keeps the secrets out of git, ``known_hosts`` (filled by bootstrap's first
contact), the CI pipelines (GitHub Actions, GitLab CI) pinned to this rsdeploy, the CI runner
image's Dockerfile, and a README of next steps. ``--host``/``--domain`` fill one environment
(``--env``, staging by default); the other gets placeholder hosts (``*.invalid``), which
rsdeploy refuses to contact until they are replaced.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets as random
from dataclasses import dataclass, field
from pathlib import Path

from rsdeploy import TEMPLATES_DIR, __version__, remote
from rsdeploy.errors import UserError
from rsdeploy.render import environment as jinja
from rsdeploy.roles import internal_tls
from rsdeploy.secrets import update_file
from rsdeploy.settings import HOST_NAME, ROLES, argument
from rsdeploy.site import SITE_FILE
from rsdeploy.types import Domain, Email, Name

LAYOUTS = ("docker", "systemd")
ENVIRONMENTS = ("staging", "production")
#: Placeholder hosts end in this reserved top-level domain (RFC 2606): never a real host.
PLACEHOLDER_SUFFIX = ".invalid"
#: Secrets made at random for each environment, by name and bytes of randomness (the app's own
#: minimum lengths are met with room: token_urlsafe gives 4 characters per 3 bytes).
RANDOM_SECRETS = {"db_password": 24, "redis_password": 24, "secret_key": 48,
                  "db_monitor_password": 24, "grafana_admin_password": 24, "flower_password": 24}


@dataclass(frozen=True)
class Request:
    """What ``rsdeploy init`` was asked for, checked (:func:`request`)."""

    directory: Path
    layout: str
    domain: str
    hosts: tuple[str, ...]
    environment: str = "staging"  # the environment --host and --domain fill
    email: str | None = None  # certbot's account e-mail; None: self-signed until filled in
    initial_user: str = "root"
    runner_image: str = f"registry.example.org/ops/rsdeploy-runner:{__version__}"
    deploy_user_keys: tuple[str, ...] = field(default=())


def request(directory: str, layout: str, domain: str, hosts: list[str], environment: str,
            email: str | None = None, initial_user: str = "root",
            runner_image: str | None = None) -> Request:
    """Check every argument of ``rsdeploy init`` before anything is written; a bad one is a
    UserError of one line. Example: ``request("ops", "docker", "rs.example.org", ["10.0.0.5"],
    "staging")``
    """
    path = Path(directory)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{path}: exists and is not an empty directory (init writes a new site "
                        "repository)")
    if layout not in LAYOUTS:
        raise UserError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if environment not in ENVIRONMENTS:
        raise UserError(f"--env {environment!r}: expected one of {', '.join(ENVIRONMENTS)}")
    argument(Domain, domain, "--domain")
    if not hosts:
        raise UserError("--host: give at least one host (its address or DNS name)")
    for host in hosts:
        if not HOST_NAME.fullmatch(host) or host.endswith(PLACEHOLDER_SUFFIX):
            raise UserError(f"--host {host!r}: not a host name or IP address")
    if len(hosts) > 1:
        named = next((h for h in hosts if not _is_ip(h)), None)
        if named:
            raise UserError(f"--host {named}: several hosts reach each other by address: give "
                            "each host's private IP address")
    twice = next((h for i, h in enumerate(hosts) if h in hosts[:i]), None)
    if twice:
        raise UserError(f"--host {twice}: given twice (each host once; its roles follow from "
                        "how many hosts there are)")
    if email is not None:
        argument(Email, email, "--email")
    argument(Name, initial_user, "--initial-user")
    if runner_image is not None and not re.fullmatch(r"[a-z0-9][a-z0-9./:_-]*", runner_image):
        raise UserError(f"--runner-image {runner_image!r}: not an image reference")
    return Request(path, layout, domain, tuple(hosts), environment, email, initial_user,
                   runner_image or Request.runner_image, tuple(remote.local_public_keys()))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def roles_for(count: int) -> list[list[str]]:
    """The roles of each of ``count`` hosts: all on one; then the database and Redis, the app
    and the web server, monitoring apart; from four hosts on, every host between the data
    stores and web+monitoring runs the app (nginx balances them).

    Example: ``roles_for(2)`` -> ``[["db", "redis", "app", "web"], ["monitoring"]]``
    """
    if count == 1:
        return [list(ROLES)]
    if count == 2:
        return [["db", "redis", "app", "web"], ["monitoring"]]
    if count == 3:
        return [["db", "redis"], ["app", "web"], ["monitoring"]]
    return [["db", "redis"], *[["app"]] * (count - 2), ["web", "monitoring"]]


def placeholder_hosts(environment: str, count: int) -> list[tuple[str, str]]:
    """Hosts an environment gets until the team fills in its own (refused on contact): (name,
    address) at documentation addresses (RFC 5737).

    Example: ``placeholder_hosts("production", 2)`` -> ``[("production-1.invalid",
    "192.0.2.11"), ("production-2.invalid", "192.0.2.12")]``
    """
    return [(f"{environment}-{i}{PLACEHOLDER_SUFFIX}", f"192.0.2.{10 + i}")
            for i in range(1, count + 1)]


def is_placeholder(host: str) -> bool:
    """Whether ``host`` is one of init's placeholders (``*.invalid``)."""
    return host.endswith(PLACEHOLDER_SUFFIX)


def write(req: Request) -> list[Path]:
    """Write the site repository; returns the files written. Example: ``write(request(...))``"""
    files = render(req)
    req.directory.mkdir(parents=True, exist_ok=True)
    written = []
    for relative, (text, mode) in files.items():
        path = req.directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        written.append(path)
    secrets_dir = req.directory / "secrets"
    secrets_dir.mkdir(mode=0o700)
    for name in ENVIRONMENTS:
        written.append(write_secrets(secrets_dir / f"{name}.yml", name))
    return written


def render(req: Request) -> dict[str, tuple[str, int]]:
    """Every file of the site but the secrets, by path in the repository: (text, mode)."""
    context = {"rsdeploy_version": __version__, "layout": req.layout,
               "runner_image": req.runner_image, "environments": ENVIRONMENTS,
               "default_env": "staging"}
    files = {
        SITE_FILE: (_site_template("rsdeploy.yml.j2", **context), 0o644),
        ".gitignore": ((TEMPLATES_DIR / "site" / "gitignore").read_text(), 0o644),
        "known_hosts": ("", 0o644),
        ".gitlab-ci.yml": (_site_template("gitlab-ci.yml.j2", **context), 0o644),
        ".github/workflows/deploy.yml": (_site_template("github-deploy.yml.j2", **context), 0o644),
        "ci/rsdeploy-ci.sh": ((TEMPLATES_DIR / "site" / "ci" / "rsdeploy-ci.sh").read_text(), 0o755),
        "ci/runner/Dockerfile": ((TEMPLATES_DIR / "runner" / "Dockerfile").read_text(), 0o644),
        "README.md": (_site_template("README.md.j2", **context, req=req), 0o644),
    }
    for name in ENVIRONMENTS:
        files[f"inventories/{name}.py"] = (inventory(req, name, context), 0o644)
    return files


def inventory(req: Request, environment: str, context: dict) -> str:
    """One environment's inventory: the requested hosts and domain for ``req.environment``,
    placeholders (as many hosts, ``<environment>.<domain>``) for the other."""
    own = environment == req.environment
    hosts = [(h, h) for h in req.hosts] if own else placeholder_hosts(environment, len(req.hosts))
    domain = req.domain if own else _placeholder_domain(req.domain, environment)
    return _site_template(
        "inventory.py.j2", **context, environment=environment, domain=domain,
        hosts=[{"name": name, "address": address, "roles": roles}
               for (name, address), roles in zip(hosts, roles_for(len(hosts)))],
        placeholder=not own, version="v1.0.0", email=req.email, deploy_user="deploy",
        deploy_user_keys=list(req.deploy_user_keys), initial_user=req.initial_user)


def _placeholder_domain(domain: str, environment: str) -> str:
    """The other environment's domain: ``staging.x`` <-> ``x`` when it reads so, else
    ``<environment>.<domain>``."""
    if environment == "production" and domain.startswith("staging."):
        return domain.removeprefix("staging.")
    return f"{environment}.{domain}"


def _site_template(name: str, **context) -> str:
    return jinja().get_template(f"site/{name}").render(**context)


def write_secrets(path: Path, environment: str) -> Path:
    """An environment's secrets file: strong random secrets and a stack CA of its own, mode
    0600. Example: ``write_secrets(Path("ops/secrets/staging.yml"), "staging")``
    """
    header = (f"# {environment}'s secrets (made by rsdeploy init): never in git. Add the ones your\n"
              "# settings need (registry_password, smtp_password, ...); rsdeploy check names them.\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(header)
    values = {name: random.token_urlsafe(size) for name, size in RANDOM_SECRETS.items()}
    key, cert = internal_tls.new_ca(f"{environment} {internal_tls.CA_NAME}")
    update_file(path, {**values, internal_tls.KEY_SECRET: key, internal_tls.CERT_SECRET: cert})
    return path
