"""Files several components need in the same shape: secret files owned by their reader, and
Debian's ``/etc/default/<package>`` files.

Where such a file lives and who owns it is the layout's answer (``hs.layout``); the caller gives
what the distribution's package would use (``native_dir``, ``native_user``) and what the image
runs as (``image_uid``). This core module imports no role.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsdeploy.layout import Restart
from rsdeploy.render import RenderedFile, template

if TYPE_CHECKING:
    from rsdeploy.layout import Reaction
    from rsdeploy.settings import HostSettings

#: Debian's monitoring packages (prometheus, prometheus-alertmanager, prometheus-*-exporter):
#: the directory of their secret files ...
MONITORING_SECRETS_DIR = "/etc/prometheus/secrets"
#: ... and the user every one of them runs as.
MONITORING_USER = "prometheus"


def secret_path(hs: HostSettings, name: str, native_dir: str) -> str:
    """Where secret file ``name`` lives on the host (``native_dir``: the package's directory).

    Example: ``secret_path(hs, "smtp_password", MONITORING_SECRETS_DIR)``
    -> ``"/opt/residency-scheduler/secrets/smtp_password"`` (docker layout)
    """
    return f"{hs.layout.secrets_dir(hs, native_dir)}/{name}"


def secret_read_path(hs: HostSettings, name: str, native_dir: str) -> str:
    """The path the reading process opens: a container's secret mount, or the host file itself.

    Example: ``secret_read_path(hs, "smtp_password", MONITORING_SECRETS_DIR)``
    -> ``"/run/secrets/smtp_password"`` (docker layout)
    """
    return f"{hs.layout.secret_read_dir(hs, native_dir)}/{name}"


def secret_file(hs: HostSettings, name: str, content: str, *, role: str, image_uid: int | str,
                native_user: str, native_dir: str,
                reactions: tuple[Reaction, ...]) -> RenderedFile:
    """A secret file (mode 0600) owned by whoever reads it: the uid its image runs as, or the
    package's user.

    Compose bind-mounts file secrets with the host file's owner and mode, so the owner must be the
    uid the container runs as. Example: ``secret_file(hs, "smtp_password", pw, role="alertmanager",
    image_uid=65534, native_user=MONITORING_USER, native_dir=MONITORING_SECRETS_DIR,
    reactions=(Reload("alertmanager"),))``
    """
    owner = hs.layout.file_owner(image_uid, native_user)
    return RenderedFile(secret_path(hs, name, native_dir), content, role, mode="600", owner=owner,
                        group=owner, secret=True, reactions=reactions)


def debian_default(package: str, variables: dict[str, str], *, hs: HostSettings, role: str,
                   comment: str) -> RenderedFile:
    """Debian's ``/etc/default/<package>`` (its unit's EnvironmentFile; the unit runs ``$ARGS``).

    The unit reads it only at start: a change restarts the unit (named like the package).
    Example: ``debian_default("prometheus", {"ARGS": "--web.enable-lifecycle"}, hs=hs,
    role="prometheus", comment="Prometheus server flags")``
    """
    content = template("prometheus/debian-default.j2", hs, package=package, comment=comment,
                       variables=variables)
    return RenderedFile(f"/etc/default/{package}", content, role, reactions=(Restart(package),))
