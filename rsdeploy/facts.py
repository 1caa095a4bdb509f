"""pyinfra facts rsdeploy needs beyond pyinfra's own."""

from __future__ import annotations

import json
import shlex

from pyinfra.api import FactBase


class FileOwnership(FactBase):
    """
    Owner, group and mode of a file, by number and by name (``None`` if it does not exist).

    pyinfra's ``File`` fact reports names only, and containers' uids (999, 1001, 65534) often have
    no name on the host or a different one.

    .. code:: python

        host.get_fact(FileOwnership, path="/opt/residency-scheduler/secrets/db_password")
        # {"uid": "999", "gid": "999", "user": "UNKNOWN", "group": "UNKNOWN", "mode": "600"}
    """

    def command(self, path: str) -> str:
        return f"stat -c '%u %g %U %G %a' {shlex.quote(path)} 2>/dev/null || true"

    def process(self, output):
        fields = " ".join(output).split()
        if len(fields) != 5:
            return None
        return dict(zip(("uid", "gid", "user", "group", "mode"), fields))


class ComposeContainers(FactBase):
    """
    The containers of one Compose project, by service: state, health and image.

    .. code:: python

        host.get_fact(ComposeContainers, project="residency-scheduler")
        # {"backend": {"state": "running", "health": "healthy", "image": "..."}, ...}
    """

    def requires_command(self, project: str) -> str:
        return "docker"

    @staticmethod
    def default():
        return {}

    def command(self, project: str) -> str:
        return ("docker ps -a --no-trunc --filter label=com.docker.compose.project="
                f"{shlex.quote(project)} --format '{{{{json .}}}}'")

    def process(self, output):
        found = {}
        for line in output:
            if not line.strip():
                continue
            row = json.loads(line)
            labels = dict(kv.split("=", 1) for kv in row.get("Labels", "").split(",") if "=" in kv)
            status = row.get("Status", "")
            health = ("healthy" if "(healthy)" in status else "unhealthy" if "(unhealthy)" in status
                      else "starting" if "health: starting" in status else None)
            found[labels.get("com.docker.compose.service", row["Names"])] = {
                "state": row.get("State"), "health": health, "image": row.get("Image"),
            }
        return found


class DockerImageId(FactBase):
    """
    The id of a local image, or ``None`` when the host does not have it.

    .. code:: python

        host.get_fact(DockerImageId, image="residency-scheduler-backend:v1.0.0")
    """

    def requires_command(self, image: str) -> str:
        return "docker"

    def command(self, image: str) -> str:
        return f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(image)} 2>/dev/null || true"

    def process(self, output):
        text = "".join(output).strip()
        return text or None


class DockerImageRevision(FactBase):
    """
    The source revision a local image was built from (its ``org.opencontainers.image.revision``
    label): ``None`` when the host lacks the image, ``""`` when it has no such label.

    .. code:: python

        host.get_fact(DockerImageRevision, image="residency-scheduler-backend:v1.0.0")
    """

    LABEL = "org.opencontainers.image.revision"

    def requires_command(self, image: str) -> str:
        return "docker"

    def command(self, image: str) -> str:
        template = f'{{{{.Id}}}} {{{{index .Config.Labels "{self.LABEL}"}}}}'
        return f"docker image inspect --format {shlex.quote(template)} {shlex.quote(image)} 2>/dev/null || true"

    def process(self, output):
        fields = "".join(output).split()
        if not fields:
            return None
        revision = fields[1] if len(fields) > 1 else ""
        return "" if revision == "<no value>" else revision


class DockerComposeVersion(FactBase):
    """
    The version of ``docker compose`` (v2 plugin), or ``None`` when there is none.

    .. code:: python

        host.get_fact(DockerComposeVersion)  # "2.40.3"
    """

    def command(self) -> str:
        return "docker compose version --short 2>/dev/null || true"

    def process(self, output):
        text = "".join(output).strip().lstrip("v")
        return text or None
