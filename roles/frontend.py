"""The Next.js frontend (role ``app``).

Docker layout: Compose service ``frontend``. Systemd layout: PM2 apps residency-frontend-blue and
residency-frontend-green (one per release slot, cluster mode) from ``<base_dir>/ecosystem.config.js``;
the PM2 daemon runs as user residency, started at boot by ``pm2-residency.service`` (``pm2
resurrect`` of the saved process list, as ``pm2 startup`` would set it up).
"""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Literal

from pydantic import Field
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FileContents
from pyinfra.operations import apt, files, server

from rsdeploy.roles.backend import APP_UID, APP_USER, listen_address, slot_dir, slot_port_keys, slot_ports
from rsdeploy.roles.base import ca_bundle
from rsdeploy.layout import Recreate
from rsdeploy.release import SERVE, HttpProbe, ReleaseUnit
from rsdeploy.render import RenderedFile, template
from rsdeploy.types import Duration, Port, Repository, Resources, Section, duration_seconds
from rsdeploy.units import UNIT_DIR, AppUnit, memory_bytes, unit_safe_path, verify_units
from rsdeploy.validate import run_tool

if TYPE_CHECKING:
    from pathlib import Path

    from rsdeploy.settings import HostSettings
    from rsdeploy.validate import Verdict

APP_NAME = "residency-frontend"
PM2_UNIT = "pm2-residency.service"
PM2_OVERHEAD = "256m"  # memory of the PM2 daemon itself, on top of the instances' limits
#: Where npm keeps downloaded packages between releases (the app user's).
NPM_CACHE_DIR = "/var/cache/residency-scheduler/npm"
#: PATH of the PM2 daemon: it starts `node` for the apps.
NODE_PATH = "/usr/local/bin:/usr/bin:/bin"
NODESOURCE_KEY = "https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key"


class Settings(Section):
    image: Repository = "residency-scheduler-frontend"  # docker layout: image repository; the tag is the version
    port: Port = 3000  # port `node server.js` listens on
    pm2_instances: int = Field(default=1, ge=1, le=16)  # systemd layout: PM2 cluster instances
    pm2_version: str = Field(default="6.0.14", pattern=r"^\d+\.\d+\.\d+$")  # systemd layout: PM2 from npm, pinned
    # systemd layout: Node.js from Debian (bookworm: 18.19) or NodeSource's repository
    node_source: Literal["distro", "nodesource"] = "distro"
    node_major: int = Field(default=22, ge=18, le=40)  # NodeSource's Node.js major version
    resources: Resources = Resources(memory="512m", cpus=0.5)  # limits for the frontend service
    # Until / answers 200 (Next.js starts in seconds; margin for a host busy with a release).
    start_period: Duration = "60s"


def applies(hs: HostSettings) -> bool:
    return hs.has_role("app")


def ports(hs: HostSettings) -> dict[str, int]:
    """The ports the frontend takes on this host (one per release slot), by settings key.
    Example: ``{"frontend.port": 3000, "frontend.port (+10, release slot green)": 3010}``"""
    return slot_port_keys(hs, "frontend.port", hs.stack.frontend.port)


#: Seconds the frontend gets to finish in-flight requests when a release stops it.
STOP_GRACE = 30


def release_units(hs: HostSettings) -> list[ReleaseUnit]:
    """The frontend is replaced like the API: started beside the old one, ready when ``/``
    answers 200, then given the traffic. Example: ``release_units(hs)[0].traffic`` -> ``"frontend"``
    """
    service, f = hs.layout.service("frontend", APP_NAME), hs.stack.frontend
    return [ReleaseUnit(service, SERVE, HttpProbe(f.port, "/"), STOP_GRACE,
                        duration_seconds(f.start_period), traffic="frontend")]


def ecosystem_path(hs: HostSettings) -> str:
    return f"{hs.stack.paths.base_dir}/ecosystem.config.js"


def pm2_home(hs: HostSettings) -> str:
    """PM2's state (process list, sockets): the app user's ``~/.pm2``, so ``sudo -u residency
    pm2 status`` finds it."""
    return f"{hs.stack.paths.base_dir}/.pm2"


def pm2_prefix(hs: HostSettings) -> str:
    """Where the app user's ``npm install`` puts PM2 (``node_modules/.bin/pm2``)."""
    return f"{hs.stack.paths.base_dir}/pm2"


def pm2_bin(hs: HostSettings) -> str:
    return f"{pm2_prefix(hs)}/node_modules/.bin/pm2"


def app_name(slot: str) -> str:
    """The PM2 app of a release slot. Example: ``app_name("blue")`` -> ``"residency-frontend-blue"``"""
    return f"{APP_NAME}-{slot}" if slot else APP_NAME


def log_files(hs: HostSettings, slot: str = "*") -> str:
    """The PM2 apps' output and error files, every slot's or one slot's (a glob; see
    :func:`pm2_apps`). Example: ``log_files(hs, "blue")`` -> ``"/var/log/residency-scheduler/frontend-blue*.log"``"""
    return f"{hs.stack.paths.log_dir}/frontend-{slot}*.log"


def pm2_apps(hs: HostSettings) -> list[dict]:
    """The PM2 app definitions, one per release slot (rendered into ecosystem.config.js); a
    slot's frontend talks to the same slot's API."""
    f, log_dir = hs.stack.frontend, hs.stack.paths.log_dir
    backend_host = listen_address(hs, "web", "monitoring")  # where the backend units bind
    backend_ports = slot_ports(hs, hs.stack.backend.port)
    return [{
        "name": app_name(slot),
        "cwd": f"{slot_dir(hs, slot)}/frontend/.next/standalone",
        "instances": f.pm2_instances,
        "max_memory_restart": memory_bytes(f.resources.memory),
        "kill_timeout": STOP_GRACE * 1000,
        "out_file": f"{log_dir}/frontend-{slot}.log",
        "error_file": f"{log_dir}/frontend-{slot}-error.log",
        "env": {
            "BACKEND_URL": f"http://{backend_host}:{backend_ports[slot]}",
            "HOSTNAME": listen_address(hs, "web"),
            "NEXT_TELEMETRY_DISABLED": "1",
            "NODE_ENV": "production",
            "PORT": str(port),
        },
    } for slot, port in slot_ports(hs, f.port).items()]


def pm2_unit(hs: HostSettings) -> AppUnit:
    """pm2-residency.service: room for every instance of both slots (during a switch) plus PM2."""
    f = hs.stack.frontend
    running = f.pm2_instances * max(len(hs.layout.release_slots), 1)
    memory_mib = (running * memory_bytes(f.resources.memory) + memory_bytes(PM2_OVERHEAD)) // 1024**2
    resources = Resources(memory=f"{memory_mib}m", cpus=f.resources.cpus * running)
    return AppUnit(
        PM2_UNIT, "Residency Scheduler frontend (PM2)",
        [pm2_bin(hs), "resurrect"], resources,
        "frontend.resources x frontend.pm2_instances x release slots + PM2 itself", APP_USER,
        APP_UID, workdir=unit_safe_path(hs.stack.paths.base_dir),
        log_dir=unit_safe_path(hs.stack.paths.log_dir),
    )


def render(hs: HostSettings) -> list[RenderedFile]:
    """Native only: PM2's ecosystem and its unit (from images, Compose runs the frontend)."""
    if hs.layout.runs_in_containers:
        return []
    unit = pm2_unit(hs)
    ecosystem = template("pm2/ecosystem.config.js.j2", hs, apps=pm2_apps(hs), user=APP_USER)
    service = template("systemd/pm2-residency.service.j2", hs, unit=unit, pm2=pm2_bin(hs),
                       pm2_home=unit_safe_path(pm2_home(hs)), ecosystem=ecosystem_path(hs),
                       node_path=NODE_PATH)
    return [
        # Part of a release's definition: a change starts the frontend in a new slot.
        RenderedFile(ecosystem_path(hs), ecosystem, "frontend",
                     reactions=(Recreate(hs.layout.service("frontend", APP_NAME)),)),
        RenderedFile(f"{UNIT_DIR}/{PM2_UNIT}", service, "frontend", reactions=(Recreate(PM2_UNIT),)),
    ]


def validate(tree: Path, hs: HostSettings) -> list[Verdict]:
    """Native only: node loads the ecosystem file; verify the PM2 unit (pm2 itself is
    installed by the deploy via npm, so its missing binary is tolerated).
    """
    if hs.layout.runs_in_containers:
        return []
    ecosystem = run_tool(["node", "-e", "require(process.argv[1])",
                          str(tree / ecosystem_path(hs).lstrip("/"))],
                         ecosystem_path(hs), "node require()")
    return [ecosystem, *verify_units(tree, [f"{UNIT_DIR}/{PM2_UNIT}"], (pm2_prefix(hs),))]


# --- runtime ------------------------------------------------------------------------------------


def pm2_command(hs: HostSettings, *args: str) -> str:
    """A shell line running ``pm2 ARGS`` as the app user against the stack's PM2.

    Example: ``pm2_command(hs, "jlist")``
    """
    return shlex.join(["runuser", "-u", APP_USER, "--", "env", f"PM2_HOME={pm2_home(hs)}",
                       f"HOME={hs.stack.paths.base_dir}", pm2_bin(hs), *args])


def npm_environment(hs: HostSettings) -> dict[str, str]:
    """npm's environment on the host: the shared cache, and the host's CA bundle when extra
    CAs are trusted (node has its own store)."""
    env = {"npm_config_cache": NPM_CACHE_DIR, "npm_config_update_notifier": "false",
           "HOME": hs.stack.paths.base_dir}
    if (bundle := ca_bundle(hs)) is not None:
        env["NODE_EXTRA_CA_CERTS"] = bundle
    return env


@deploy("Install the frontend's runtime")
def install_runtime(hs: HostSettings) -> None:
    """Natively: Node.js (Debian's, or NodeSource's major ``frontend.node_major``), npm, and PM2
    from the npm registry, pinned, installed by the app user (never as root).

    Example: ``frontend.install_runtime(hs)`` (bootstrap, systemd layout; after the app user)
    """
    f = hs.stack.frontend
    if f.node_source == "nodesource":
        keyring = "/usr/share/keyrings/nodesource.gpg"
        files.download(name="Download NodeSource's signing key", src=NODESOURCE_KEY,
                       dest=f"{keyring}.asc", mode="644")
        server.shell(name="Dearmor NodeSource's signing key",
                     commands=[f"gpg --batch --yes --dearmor -o {keyring} {keyring}.asc"])
        repo = apt.repo(name=f"Add NodeSource's repository (Node.js {f.node_major})",
                        src=f"deb [signed-by={keyring}] https://deb.nodesource.com/node_{f.node_major}.x nodistro main",
                        filename="nodesource")
        apt.update(name="Refresh package lists for NodeSource", _if=repo.did_change)
        apt.packages(name=f"Install Node.js {f.node_major} from NodeSource", packages=["nodejs"])
    else:
        apt.packages(name="Install Debian's Node.js and npm", packages=["nodejs", "npm"],
                     no_recommends=True, update=True, cache_time=3600)
    for path, mode in ((NPM_CACHE_DIR, "750"), (pm2_prefix(hs), "755"), (pm2_home(hs), "700")):
        files.directory(name=f"Create {path}", path=path, user=APP_USER, group=APP_USER, mode=mode)
    installed = host.get_fact(FileContents, path=f"{pm2_prefix(hs)}/node_modules/pm2/package.json")
    version = json.loads("".join(installed)).get("version") if installed else None
    if version != f.pm2_version:
        env = [f"{k}={v}" for k, v in npm_environment(hs).items()]
        server.shell(
            name=f"Install PM2 {f.pm2_version} as {APP_USER} (npm; found: {version or 'none'})",
            commands=[shlex.join(["runuser", "-u", APP_USER, "--", "env", *env, "npm", "install",
                                  "--prefix", pm2_prefix(hs), "--no-audit", "--no-fund",
                                  "--save-exact", f"pm2@{f.pm2_version}"])])
    files.link(name="Put pm2 on the PATH (/usr/local/bin/pm2)", path="/usr/local/bin/pm2",
               target=pm2_bin(hs))
