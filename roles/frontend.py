"""The Next.js frontend (role ``app``).

Docker layout: Compose service ``frontend``. Systemd layout: PM2 process residency-frontend from
``<base_dir>/ecosystem.config.js``, PM2 itself supervised by ``pm2-residency.service``
(``pm2-runtime`` in the foreground as user residency: no PM2 daemon or ``pm2 startup`` to manage).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from roles.backend import APP_UID, APP_USER, listen_address, release_dir
from rsdeploy.layout import Recreate, Restart
from rsdeploy.release import SERVE, HttpProbe, ReleaseUnit
from rsdeploy.render import RenderedFile, template
from rsdeploy.types import Port, Repository, Resources, Section
from rsdeploy.units import UNIT_DIR, AppUnit, memory_bytes, unit_safe_path, verify_units
from rsdeploy.validate import run_tool

if TYPE_CHECKING:
    from pathlib import Path

    from rsdeploy.settings import HostSettings
    from rsdeploy.validate import Verdict

APP_NAME = "residency-frontend"
PM2_UNIT = "pm2-residency.service"
PM2_BIN = "/usr/local/bin"  # where `npm install -g pm2` puts pm2 and pm2-runtime
PM2_STATE_DIR = "residency-pm2"  # PM2_HOME below /var/lib (systemd StateDirectory=)
PM2_OVERHEAD = "256m"  # memory of pm2-runtime itself, on top of the instances' limits


class Settings(Section):
    image: Repository = "residency-scheduler-frontend"  # docker layout: image repository; the tag is the version
    port: Port = 3000  # port `node server.js` listens on
    pm2_instances: int = Field(default=1, ge=1, le=16)  # systemd layout: PM2 instances
    resources: Resources = Resources(memory="512m", cpus=0.5)  # limits for the frontend service


def applies(hs: HostSettings) -> bool:
    return hs.has_role("app")


def ports(hs: HostSettings) -> dict[str, int]:
    """The port the frontend takes on this host, by settings key. Example: ``{"frontend.port": ...}``"""
    return {"frontend.port": hs.stack.frontend.port}


#: Seconds the frontend gets to finish in-flight requests when a release stops it.
STOP_GRACE = 30


def release_units(hs: HostSettings) -> list[ReleaseUnit]:
    """The frontend is replaced like the API: started beside the old one, ready when ``/``
    answers 200, then given the traffic. Example: ``release_units(hs)[0].traffic`` -> ``"frontend"``
    """
    service = hs.layout.service("frontend", APP_NAME)
    return [ReleaseUnit(service, SERVE, HttpProbe(hs.stack.frontend.port, "/"), STOP_GRACE,
                        traffic="frontend")]


def ecosystem_path(hs: HostSettings) -> str:
    return f"{hs.stack.paths.base_dir}/ecosystem.config.js"


def pm2_app(hs: HostSettings) -> dict:
    """The PM2 app definition (rendered into ecosystem.config.js)."""
    f, log_dir = hs.stack.frontend, hs.stack.paths.log_dir
    backend_host = listen_address(hs, "web", "monitoring")  # where the backend unit binds
    return {
        "name": APP_NAME,
        "cwd": f"{release_dir(hs)}/frontend/.next/standalone",
        "instances": f.pm2_instances,
        "exec_mode": "cluster" if f.pm2_instances > 1 else "fork",
        "max_memory_restart": memory_bytes(f.resources.memory),
        "out_file": f"{log_dir}/frontend.log",
        "error_file": f"{log_dir}/frontend-error.log",
        "env": {
            "BACKEND_URL": f"http://{backend_host}:{hs.stack.backend.port}",
            "HOSTNAME": listen_address(hs, "web"),
            "NEXT_TELEMETRY_DISABLED": "1",
            "NODE_ENV": "production",
            "PORT": str(f.port),
        },
    }


def pm2_unit(hs: HostSettings) -> AppUnit:
    """pm2-residency.service: room for every instance plus PM2 itself."""
    f = hs.stack.frontend
    memory_mib = (f.pm2_instances * memory_bytes(f.resources.memory)
                  + memory_bytes(PM2_OVERHEAD)) // 1024**2
    resources = Resources(memory=f"{memory_mib}m", cpus=f.resources.cpus * f.pm2_instances)
    return AppUnit(
        PM2_UNIT, "Residency Scheduler frontend (PM2)",
        [f"{PM2_BIN}/pm2-runtime", "start", ecosystem_path(hs)], resources,
        "frontend.resources x frontend.pm2_instances + PM2 itself", APP_USER, APP_UID,
        workdir=unit_safe_path(hs.stack.paths.base_dir),
        log_dir=unit_safe_path(hs.stack.paths.log_dir),
    )


def render(hs: HostSettings) -> list[RenderedFile]:
    """Native only: PM2 and its unit (from images, Compose runs the frontend)."""
    if hs.layout.runs_in_containers:
        return []
    unit = pm2_unit(hs)
    ecosystem = template("pm2/ecosystem.config.js.j2", hs, app=pm2_app(hs), user=APP_USER)
    service = template("systemd/pm2-residency.service.j2", hs, unit=unit, pm2_bin=PM2_BIN,
                       pm2_state_dir=PM2_STATE_DIR, ecosystem=ecosystem_path(hs))
    return [
        RenderedFile(ecosystem_path(hs), ecosystem, "frontend", reactions=(Restart(PM2_UNIT),)),
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
    return [ecosystem, *verify_units(tree, [f"{UNIT_DIR}/{PM2_UNIT}"], (f"{PM2_BIN}/pm2",))]
