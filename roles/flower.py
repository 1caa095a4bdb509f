"""Flower, Celery's web monitor: optional (``flower.enabled``, off by default), on the app host
that runs Celery beat (one per stack), served by nginx at ``https://<domain>/flower/`` behind
HTTP basic authentication (login ``flower.user``, the secret ``flower_password``). It listens only
where nginx reaches it (the Compose network, or natively loopback or the private address the
firewall keeps to the stack's hosts): never on a public port.

Flower reads only its own files, so a change restarts it: ``flower.env`` (mode 0600) holds its
options, the password among them (``FLOWER_*`` variables, never a command line), and the
broker's URL as the worker reaches it (``CELERY_BROKER_URL``); across hosts, its own copy of the
stack CA bundle (roles.internal_tls) verifies Redis.

Docker layout: the ``flower`` Compose service, image ``flower.image``. Systemd layout: Flower
from PyPI (``flower.version``) in its own virtualenv, ``residency-flower.service`` as the app user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import files, server

from rsdeploy.roles import backend, internal_tls
from rsdeploy.layout import Recreate
from rsdeploy.render import RenderedFile, template
from rsdeploy.types import Image, Name, Port, Resources, Section
from rsdeploy.units import UNIT_DIR, AppUnit, unit_safe_path, verify_units

if TYPE_CHECKING:
    from pathlib import Path

    from rsdeploy.settings import HostSettings, SecretRules
    from rsdeploy.validate import Verdict

SECRET_NAME = "flower_password"
#: The path nginx serves Flower under (Flower's own url_prefix: its links and API follow it).
URL_PREFIX = "flower"
UNIT = "residency-flower.service"
#: Installed beside Flower: the Redis client, and ``packaging``, which kombu's Redis transport
#: imports without declaring it (Flower does not start without it).
COMPANIONS = ("redis", "packaging")


class Settings(Section):
    enabled: bool = False  # run Flower (Celery's web monitor) behind nginx at /flower/
    image: Image = "mher/flower:2.0"  # docker layout: Flower image
    version: str = Field(default="2.0.1", pattern=r"^[0-9]+(\.[0-9]+)*$")  # systemd layout: the Flower release pip installs
    port: Port = 5555  # Flower's port (never published: nginx reaches it)
    user: Name = "flower"  # the basic-auth login; its password is the secret flower_password
    resources: Resources = Resources(memory="256m", cpus=0.25)  # limits for Flower


def applies(hs: HostSettings) -> bool:
    return hs.stack.flower.enabled and backend.runs_beat(hs)


def served(hs: HostSettings) -> bool:
    """Whether the stack runs Flower (the web host proxies to it then)."""
    return hs.stack.flower.enabled


def ports(hs: HostSettings) -> dict[str, int]:
    return {"flower.port": hs.stack.flower.port} if applies(hs) else {}


def check(hs: HostSettings, rules: SecretRules) -> None:
    """The basic-auth password; Flower reads its logins comma-separated (FLOWER_BASIC_AUTH)."""
    if applies(hs):
        if "," in rules.require(SECRET_NAME, "Flower's basic authentication", 16):
            raise rules.fail(SECRET_NAME, "must not contain a comma (Flower splits its logins at commas)")


def service(hs: HostSettings) -> str:
    """The Compose service, or natively the unit."""
    return hs.layout.service("flower", UNIT)


def host_name(hs: HostSettings) -> str:
    """The app host that runs Flower (the one running Celery beat)."""
    return backend.app_hosts(hs)[0]


def endpoint(hs: HostSettings) -> str:
    """``host:port`` at which ``hs`` (the web host) reaches Flower."""
    return hs.reach(host_name(hs), "flower", hs.stack.flower.port)


def environment_path(hs: HostSettings) -> str:
    """Beside app.env: the Compose files' directory, or natively the host's config."""
    return backend.app_env_path(hs).removesuffix("app.env") + "flower.env"


def environment(hs: HostSettings) -> dict[str, str]:
    """Flower's options (``FLOWER_<OPTION>``): where it listens, its URL prefix, the login;
    and the broker (Celery reads ``CELERY_BROKER_URL``)."""
    f = hs.stack.flower
    return {
        "CELERY_BROKER_URL": backend.redis_url(hs, ca_path=stack_ca_read_path(hs)),
        "FLOWER_ADDRESS": hs.layout.listen_address(hs, shared=not hs.has_role("web")),
        "FLOWER_PORT": str(f.port),
        "FLOWER_URL_PREFIX": URL_PREFIX,
        "FLOWER_BASIC_AUTH": f"{f.user}:{hs.secrets.flower_password}",
        # Workers that stopped (an old release's) leave the list instead of showing offline.
        "FLOWER_PURGE_OFFLINE_WORKERS": "300",
    }


#: Flower's copy of the stack CA bundle, as its container reads it.
CONTAINER_STACK_CA = "/etc/rsdeploy/flower-stack-ca.pem"


def stack_ca_path(hs: HostSettings) -> str:
    """The host file of Flower's copy of the stack CA bundle (when Redis is on another host)."""
    return hs.layout.config_path(hs, "flower", "stack-ca.pem",
                                 f"{hs.stack.paths.config_dir}/flower-stack-ca.pem")


def stack_ca_read_path(hs: HostSettings) -> str:
    return hs.layout.data_dir(CONTAINER_STACK_CA, stack_ca_path(hs))


def stack_ca_file(hs: HostSettings) -> RenderedFile:
    return RenderedFile(stack_ca_path(hs), internal_tls.trusted_cas(hs), "flower",
                        reactions=(Recreate(service(hs)),))


def environment_file(hs: HostSettings) -> RenderedFile:
    """flower.env in its reader's syntax (Compose ``env_file`` or ``EnvironmentFile``); root's,
    read by Compose or PID 1, never by Flower itself."""
    content = template("flower/flower.env.j2", hs, env=environment(hs), reader=service(hs),
                       containers=hs.layout.runs_in_containers)
    return RenderedFile(environment_path(hs), content, "flower", mode="600", secret=True,
                        reactions=(Recreate(service(hs)),))


# --- systemd layout ----------------------------------------------------------------------------


def venv(hs: HostSettings) -> str:
    """Flower's own virtualenv (natively), apart from the app's releases."""
    return f"{hs.stack.paths.base_dir}/flower/venv"


def unit(hs: HostSettings) -> AppUnit:
    return AppUnit(UNIT, "Residency Scheduler Flower (Celery monitor), behind nginx at /flower/",
                   [f"{venv(hs)}/bin/celery", "flower"], hs.stack.flower.resources,
                   "flower.resources", user=backend.APP_USER, uid=backend.APP_UID,
                   env_file=unit_safe_path(environment_path(hs)),
                   workdir=unit_safe_path(f"{hs.stack.paths.base_dir}/flower"),
                   log_dir=unit_safe_path(hs.stack.paths.log_dir),
                   after=tuple(unit for role, unit in backend.LOCAL_DEPENDENCIES.items()
                               if role == "redis" and hs.has_role(role)))


def unit_file(hs: HostSettings) -> RenderedFile:
    content = template("systemd/residency-flower.service.j2", hs, unit=unit(hs))
    return RenderedFile(f"{UNIT_DIR}/{UNIT}", content, "flower", reactions=(Recreate(UNIT),))


def render(hs: HostSettings) -> list[RenderedFile]:
    files = [environment_file(hs)]
    if internal_tls.reaches(hs, "redis"):
        files.append(stack_ca_file(hs))
    if not hs.layout.runs_in_containers:
        files.append(unit_file(hs))
    return files


@deploy("Install Flower")
def install(hs: HostSettings) -> None:
    """Natively: Flower (and its COMPANIONS) from PyPI in its own virtualenv, owned by root,
    run by the app user; installed again only when ``flower.version`` changes (a marker file
    names the installed release and companions). Nothing in containers (the image has it).

    Example: ``flower.install(hs)``
    """
    if hs.layout.runs_in_containers:
        return
    version = hs.stack.flower.version
    marker = f"{venv(hs)}/.rsdeploy-flower-{version}-{'-'.join(COMPANIONS)}"
    if host.get_fact(File, path=marker):
        return
    env = " ".join(f"{key}={value}" for key, value in sorted(backend.pip_environment(hs).items()))
    server.shell(name=f"Install Flower {version} in {venv(hs)} (pip)", commands=[
        f"rm -rf {venv(hs)} && python3 -m venv {venv(hs)}",
        f"env {env} {venv(hs)}/bin/pip install --quiet flower=={version} {' '.join(COMPANIONS)}",
        f"touch {marker}",
    ])
    files.directory(name="Create Flower's working directory", path=f"{hs.stack.paths.base_dir}/flower",
                    mode="755")


def validate(tree: Path, hs: HostSettings) -> list[Verdict]:
    """``systemd-analyze verify`` on the unit (natively; its celery comes with the install)."""
    if hs.layout.runs_in_containers:
        return []
    return verify_units(tree, [f"{UNIT_DIR}/{UNIT}"], installed_later=(f"{venv(hs)}/",))
