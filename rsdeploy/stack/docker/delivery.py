"""How a release's images reach a docker-layout host (``app.delivery``).

* ``pull``: ``docker pull``, logged in through stdin from the 0600 password file and logged out
  right after;
* ``bundle`` (air-gapped sites): ``docker save`` files from ``rsdeploy images bundle``, uploaded,
  sha256-checked, loaded and removed;
* ``build``: ``git archive`` of the release tag's ``backend/`` and ``frontend/`` built on the host
  with the app's own Dockerfiles (BuildKit, the host's CA bundle as a build secret); other images
  are pulled.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from pyinfra import host
from pyinfra.operations import files, server

from rsdeploy.roles.docker_engine import registry_host
from rsdeploy import apply, source
from rsdeploy.errors import SettingsError, describe
from rsdeploy.facts import DockerImageId, DockerImageRevision
from rsdeploy.render import RenderedFile
from rsdeploy.stack.docker.project import app_image

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: Where bundled images wait on the host between upload and `docker load`.
BUNDLE_STAGING = "images"
#: The app parts whose images build delivery builds (a directory each in the app's repository,
#: with its Dockerfile, as upstream keeps them).
APP_PARTS = ("backend", "frontend")
#: BuildKit secret id under which app builds get the host's CA bundle (the Dockerfiles'
#: ``RUN --mount=type=secret,id=ca-certificates``), and that bundle (Debian's path).
BUILD_CA_SECRET = "ca-certificates"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def render(hs: HostSettings) -> list[RenderedFile]:
    """The registry password file, when pulls log in (read by ``docker login --password-stdin``
    during the rollout only)."""
    if not hs.stack.app.registry_login:
        return []
    return [RenderedFile(registry_password_path(hs), hs.secrets.registry_password, "compose",
                         mode="600", secret=True)]


def deliver_images(hs: HostSettings, images: list[str]) -> list:
    """Put the images this host lacks on it, by the configured delivery mode.

    pull: ``docker pull`` (registry login from the secret file, logged out right after);
    bundle: upload the ``docker save`` file from ``app.bundle_dir`` and ``docker load`` it;
    build: build the app images on the host from the release tag's source (again when the tag
    now names another commit), pull the others.
    Returns the operations, so the rollout knows something new arrived.
    Example: ``deliver_images(hs, project_images(rendered))``
    """
    mode = hs.stack.app.delivery
    operations, built = build_app_images(hs, images) if mode == "build" else ([], [])
    missing = [image for image in images
               if image not in built and host.get_fact(DockerImageId, image=image) is None]
    if mode == "bundle":
        return operations + [load_bundle(hs, image, bundle)
                             for image, bundle in _bundles(hs, missing).items()]
    return operations + ([pull_images(hs, missing)] if missing else [])


def build_app_images(hs: HostSettings, images: list[str]) -> tuple[list, list[str]]:
    """Build those of ``images`` that are app images from the release's source (build
    delivery); returns the build operations and the app images.

    Example: ``operations, built = build_app_images(hs, project_images(rendered))``
    """
    repo, commit = source.release(hs)  # once: a URL's mirror is fetched for every resolve
    parts = {part: app_image(hs, part) for part in APP_PARTS}
    parts = {part: image for part, image in parts.items() if image in images}
    operations = [build_app_image(hs, part, image, repo, commit) for part, image in parts.items()]
    return [op for op in operations if op], list(parts.values())


def build_app_image(hs: HostSettings, part: str, image: str, repo: Path, commit: str):
    """Build ``image`` from ``part/`` of ``commit`` in ``repo``, unless the host already has it
    built from that commit. The source goes up as ``git archive``; BuildKit gets the host's CA
    bundle as the ``ca-certificates`` secret (for a TLS-intercepting proxy) and
    ``app.build_args``. Example: ``build_app_image(hs, "backend", image, *source.release(hs))``
    """
    if host.get_fact(DockerImageRevision, image=image) == commit:
        host.noop(f"{image} is built from {commit[:12]}")
        return None
    staged = source.upload(hs, repo, commit, part)
    args = ["docker", "build", "--progress=plain", "--tag", image,
            "--secret", f"id={BUILD_CA_SECRET},src={HOST_CA_BUNDLE}",
            "--label", f"{DockerImageRevision.LABEL}={commit}",
            "--label", f"org.opencontainers.image.version={hs.stack.version}"]
    for name, value in sorted(hs.stack.app.build_args.items()):
        args += ["--build-arg", f"{name}={value}"]
    build = f'DOCKER_BUILDKIT=1 {shlex.join(args)} "$src"/{shlex.quote(part)}'
    return server.shell(
        name=f"Build {image} on the host from {commit[:12]}",
        commands=[f'src=$(mktemp -d) && trap \'rm -rf "$src" {shlex.quote(staged)}\' EXIT && '
                  f'tar -x -C "$src" -f {shlex.quote(staged)} && '
                  + with_registry_login(hs, build)],
    )


def pull_images(hs: HostSettings, images: list[str]):
    """Pull ``images`` (logged in to app.registry when the settings log in)."""
    pulls = " && ".join(f"docker pull --quiet {shlex.quote(image)}" for image in images)
    where = f" from {registry_host(hs)}" if hs.stack.app.registry_login else ""
    return server.shell(name=f"Pull {len(images)} image(s){where}",
                        commands=[with_registry_login(hs, pulls)])


def with_registry_login(hs: HostSettings, command: str) -> str:
    """``command`` run while logged in to app.registry's host, when the settings log in.

    The password goes through stdin from its 0600 file; credentials leave the host's docker
    config again as soon as ``command`` is done, whatever its outcome.
    Example: ``with_registry_login(hs, "docker pull registry.example.org/x:1")``
    """
    if not hs.stack.app.registry_login:
        return command
    registry = shlex.quote(registry_host(hs))
    login = (f"docker login --username {shlex.quote(hs.stack.app.registry_username)} "
             f"--password-stdin {registry} < {shlex.quote(registry_password_path(hs))}")
    return (f"{login} >/dev/null && ({command}); status=$?; "
            f"docker logout {registry} >/dev/null; exit $status")


def registry_password_path(hs: HostSettings) -> str:
    return f"{hs.stack.paths.base_dir}/secrets/registry_password"


def manifest_path(hs: HostSettings) -> Path:
    """``app.bundle_dir``'s manifest.json (relative to the inventory), where rsdeploy runs."""
    return Path(hs.source).parent / (hs.stack.app.bundle_dir or "") / "manifest.json"


def bundle_manifest(hs: HostSettings) -> dict[str, dict]:
    """The bundles of ``app.bundle_dir`` by image: ``{image: {"file", "sha256", "dir"}}``, from
    the manifest ``rsdeploy images bundle`` writes. A missing or malformed one is a
    SettingsError naming app.bundle_dir (the deploy asks before contacting any host).

    Example: ``bundle_manifest(hs)["redis:7-alpine"]["sha256"]``
    """
    path = manifest_path(hs)
    try:
        entries = json.loads(path.read_text())["images"]
        bundles = {e["image"]: {"file": e["file"], "sha256": e["sha256"], "dir": str(path.parent)}
                   for e in entries}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SettingsError(hs.source, hs.name, "app.bundle_dir",
                            f"cannot read {path}: "
                            f"{exc.strerror if isinstance(exc, OSError) else describe(exc)} "
                            "(write it with: rsdeploy "
                            "images bundle --out DIR)") from None
    for image, bundle in bundles.items():
        if (not isinstance(bundle["file"], str) or Path(bundle["file"]).name != bundle["file"]
                or not re.fullmatch(r"[0-9a-f]{64}", str(bundle["sha256"]))):
            raise SettingsError(hs.source, hs.name, "app.bundle_dir",
                                f"{path}: the entry of {image} needs a file name in that "
                                "directory and a sha256 (64 hex digits)")
    return bundles


def _bundles(hs: HostSettings, images: list[str]) -> dict[str, dict]:
    """Manifest entries (file, sha256) for ``images`` from ``app.bundle_dir``."""
    try:
        bundles = bundle_manifest(hs)
    except SettingsError as exc:
        apply.fail(str(exc))
    absent = [image for image in images if image not in bundles]
    if absent:
        apply.fail(f"app.bundle_dir: {manifest_path(hs)} has no bundle for {', '.join(absent)}")
    return {image: bundles[image] for image in images}


def load_bundle(hs: HostSettings, image: str, bundle: dict):
    """Upload one image's ``docker save`` file, check its sha256, load it and remove it."""
    staged = f"{hs.stack.paths.data_dir}/{BUNDLE_STAGING}/{bundle['file']}"
    files.put(name=f"Upload the bundle of {image}", src=f"{bundle['dir']}/{bundle['file']}",
              dest=staged, mode="600", add_deploy_dir=False)
    check = f"echo {shlex.quote(bundle['sha256'] + '  ' + staged)} | sha256sum --check --quiet"
    return server.shell(
        name=f"Load {image} (sha256 checked)",
        commands=[f"{check} && docker load --quiet --input {shlex.quote(staged)} && "
                  f"rm -f {shlex.quote(staged)}"],
    )

