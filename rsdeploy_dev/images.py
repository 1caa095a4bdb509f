"""Offline container images: built from a debootstrap Debian base with Debian packages only.

    rsdeploy images build [NAMES...] [--versions v1.0.0 ...]
    rsdeploy images bundle --out DIR [NAMES...] [--gzip]
    rsdeploy images push [NAMES...] [--prefix rs-sandbox]   (rsdeploy_dev.sandbox.push_images)

No container registry is reachable where the sandbox and the end-to-end tests run, so every image
is built here: ``rsdeploy/base:bookworm`` from ``debootstrap``, the infrastructure images from
their Dockerfiles in ``rsdeploy_dev/dockerfiles/<name>/``, and the app images per release tag
from the reference app's source (``rsdeploy_dev.refapp``). A build is skipped when an image with the same content hash
(every file of its build context and the base image's id) already exists.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rsdeploy.stack.docker.delivery import BUILD_CA_SECRET  # the same contract as builds on hosts
from rsdeploy.errors import UserError
from rsdeploy_dev import refapp
from rsdeploy_dev.engine import ensure_engine, ensure_packages, find, heavy_work, machine_lock

BASE_IMAGE = "rsdeploy/base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
#: The machine's CA bundle (it trusts the TLS-intercepting proxy in front of PyPI and npm).
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: Each offline image's Dockerfile and files, one folder per image (dev tooling: production
#: pulls the upstream images these stand in for).
IMAGES_DIR = Path(__file__).parent / "dockerfiles"
HASH_LABEL = "rsdeploy.content-hash"
#: Part of every content hash: images built another way are rebuilt once.
BUILDER = "buildkit"
#: Every image and container rsdeploy makes carries this label (``docker images -f label=...``).
OWNER_LABEL = "rsdeploy.managed"

APT_SOURCES = f"""\
deb {DEBIAN_MIRROR} bookworm main
deb {DEBIAN_MIRROR} bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
"""
# Images install only what they name: no recommends, no suggests.
APT_CONF = 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'


@dataclass(frozen=True)
class ImageSpec:
    """One image: its short name (CLI), reference, Dockerfile directory and what it stands in for."""

    name: str
    ref: str
    directory: str
    upstream: str

    @property
    def repository(self) -> str:
        return self.ref.rpartition(":")[0]

    @property
    def tag(self) -> str:
        return self.ref.rpartition(":")[2]


HOST = ImageSpec("host", "rsdeploy/host:bookworm", "host", "a Debian 12 VM")
#: The debootstrap base (made by ensure_base, not from a Dockerfile); pushed for hosts that
#: build the app themselves (build delivery).
BASE = ImageSpec("base", BASE_IMAGE, "", "debian:bookworm")
#: Images named on the command line besides the infra and app images.
SPECIAL = {HOST.name: HOST, BASE.name: BASE}
#: The infrastructure images, by short name (the stack's settings point at these in the sandbox).
INFRA = {s.name: s for s in [
    ImageSpec("postgres", "rsdeploy/postgres:15", "postgres", "pgvector/pgvector:pg15"),
    ImageSpec("redis", "rsdeploy/redis:7", "redis", "redis:7"),
    ImageSpec("nginx", "rsdeploy/nginx:1.22", "nginx", "nginx"),
    ImageSpec("prometheus", "rsdeploy/prometheus:2.42", "prometheus", "prom/prometheus"),
    ImageSpec("alertmanager", "rsdeploy/alertmanager:0.25", "alertmanager", "prom/alertmanager"),
    ImageSpec("node-exporter", "rsdeploy/node-exporter:1.5", "node-exporter", "prom/node-exporter"),
    ImageSpec("postgres-exporter", "rsdeploy/postgres-exporter:0.11", "postgres-exporter",
              "prometheuscommunity/postgres-exporter"),
    ImageSpec("redis-exporter", "rsdeploy/redis-exporter:1.45", "redis-exporter",
              "oliver006/redis_exporter"),
    ImageSpec("registry", "rsdeploy/registry:2.8", "registry", "registry:2"),
    ImageSpec("certbot", "rsdeploy/certbot:2.1", "certbot", "certbot/certbot"),
    # The sandbox's test ACME server (tls.mode certbot end to end), not part of the stack.
    ImageSpec("pebble", "rsdeploy/pebble:2.4", "pebble", "letsencrypt/pebble"),
]}
#: What the docker layout runs in the sandbox (Grafana, Loki, Alloy and cAdvisor have no offline
#: source): the demo and the end-to-end tests build, push or bundle these.
SANDBOX_STACK = ["postgres", "redis", "nginx", "certbot", "prometheus", "alertmanager",
                 "node-exporter", "postgres-exporter", "redis-exporter", "backend", "frontend"]
#: App parts built per release tag: short name -> image repository (the roles' default names).
APP_PARTS = {
    "backend": "residency-scheduler-backend",
    "frontend": "residency-scheduler-frontend",
}


def sandbox_images(delivery: str) -> list[str]:
    """The images a sandbox site needs from this machine for ``delivery``: the stack's, or, for
    ``build``, the infra images and the base the app's Dockerfiles start FROM (hosts build the
    app). Example: ``sandbox.push_images(prefix, sandbox_images("build"), ["v1.0.0"])``
    """
    if delivery != "build":
        return list(SANDBOX_STACK)
    return [BASE.name] + [name for name in SANDBOX_STACK if name not in APP_PARTS]


def app_spec(part: str, version: str) -> ImageSpec:
    """The image of one app part at one release. Example: ``app_spec("backend", "v1.0.0")``."""
    return ImageSpec(part, f"{APP_PARTS[part]}:{version}", part, f"the app's {part}")


def docker_client():
    """A docker SDK client for the local engine (started first if needed)."""
    return ensure_engine()


def log(message: str) -> None:
    """One progress line (flushed: builds are long and output is often piped)."""
    print(f"[images] {message}", flush=True)


# --- the base image ---------------------------------------------------------------------------


def ensure_base(client) -> str:
    """Make ``rsdeploy/base:bookworm`` with debootstrap unless it exists; returns its image id."""
    existing = find(client.images, BASE_IMAGE)
    if existing is not None:  # no wait for another process's build
        return existing.id
    with machine_lock("images"):
        return _ensure_base(client)


def _ensure_base(client) -> str:
    existing = find(client.images, BASE_IMAGE)
    if existing is not None:
        return existing.id
    ensure_packages({"debootstrap": "debootstrap"})
    log(f"{BASE_IMAGE}: debootstrap bookworm (minbase) from {DEBIAN_MIRROR} ...")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rsdeploy-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
                       check=True, stdout=subprocess.DEVNULL)
        _configure_rootfs(rootfs)
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                               stdout=subprocess.PIPE)
        client.api.import_image_from_stream(
            tar.stdout, repository=BASE_IMAGE.split(":")[0], tag="bookworm",
            changes=[f"LABEL {OWNER_LABEL}=base", 'CMD ["/bin/bash"]'])
        if tar.wait():
            raise UserError(f"{BASE_IMAGE}: tar of the rootfs failed")
    log(f"{BASE_IMAGE}: imported in {time.monotonic() - started:.0f} s")
    return client.images.get(BASE_IMAGE).id


def _configure_rootfs(rootfs: Path) -> None:
    """Security updates in the sources, no recommends, no apt caches kept."""
    (rootfs / "etc/apt/sources.list").write_text(APT_SOURCES)
    (rootfs / "etc/apt/apt.conf.d/90rsdeploy").write_text(APT_CONF)
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
    for lists in (rootfs / "var/lib/apt/lists").glob("*_dists_*"):
        lists.unlink()


# --- building ---------------------------------------------------------------------------------


def build_context(spec: ImageSpec, dest: Path) -> Path:
    """Lay out the build context: the Dockerfile's directory (and the CA bundle for the infra
    images); app images get that part of the release, whose own Dockerfile is part of the app.

    Example: ``build_context(INFRA["redis"], Path("/tmp/ctx"))``
    """
    if spec.name in APP_PARTS:
        return refapp.build_context(spec.tag, spec.name, dest)
    shutil.copytree(IMAGES_DIR / spec.directory, dest)
    shutil.copyfile(CA_BUNDLE, dest / "ca-certificates.crt")
    return dest


def content_hash(context: Path, base_id: str) -> str:
    """sha256 over the builder, the base image's id, the CA bundle (the builds' secret) and
    every file's relative path, mode and bytes."""
    digest = hashlib.sha256(f"{BUILDER}\0{base_id}\0".encode())
    digest.update(CA_BUNDLE.read_bytes() if CA_BUNDLE.is_file() else b"")
    for path in sorted(p for p in context.rglob("*") if p.is_file() or p.is_symlink()):
        digest.update(str(path.relative_to(context)).encode() + b"\0")
        if path.is_symlink():
            digest.update(b"link:" + str(path.readlink()).encode())
        else:
            digest.update(oct(path.stat().st_mode & 0o777).encode())
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _current_hash(client, ref: str) -> str | None:
    image = find(client.images, ref)
    return None if image is None else (image.labels or {}).get(HASH_LABEL)


def build_image(client, spec: ImageSpec, base_id: str, no_cache: bool = False) -> float:
    """Build one image unless an identical one exists (``no_cache``: rebuild every layer);
    returns the seconds it took. One build at a time on this machine: a second process asking
    for the same image waits, then finds it built. An image found up to date costs no wait
    for the engine (a site measured under load holds it, see :func:`heavy_work`).
    """
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"rsdeploy-{spec.name}-") as tmp:
        context = build_context(spec, Path(tmp) / "context")
        digest = content_hash(context, base_id)
        if not no_cache and _current_hash(client, spec.ref) == digest:
            log(f"{spec.ref}: up to date")
            return time.monotonic() - started
        with machine_lock("images"), heavy_work():
            return _build_image(client, spec, context, digest, no_cache, started)


def _build_image(client, spec: ImageSpec, context: Path, digest: str, no_cache: bool,
                 started: float) -> float:
    if not no_cache and _current_hash(client, spec.ref) == digest:  # built while we waited
        log(f"{spec.ref}: up to date")
        return time.monotonic() - started
    log(f"{spec.ref}: building (stands in for {spec.upstream}) ...")
    labels = {HASH_LABEL: digest, OWNER_LABEL: "image", "rsdeploy.stands-in-for": spec.upstream,
              "org.opencontainers.image.version": spec.tag}
    _run_build(context, spec.ref, labels, no_cache)
    elapsed = time.monotonic() - started
    log(f"{spec.ref}: built in {elapsed:.0f} s")
    return elapsed


def _run_build(context: Path, ref: str, labels: dict[str, str], no_cache: bool) -> None:
    """Build with BuildKit (the app Dockerfiles mount the CA bundle as the ``ca-certificates``
    secret), echoing its steps; on failure show the tail of its output."""
    command = [buildkit_cli(), "build", "--progress=plain", "--tag", ref,
               "--secret", f"id={BUILD_CA_SECRET},src={CA_BUNDLE}"]
    command += [arg for key, value in sorted(labels.items()) for arg in ("--label", f"{key}={value}")]
    command += ["--no-cache"] if no_cache else []
    build = subprocess.Popen([*command, str(context)], env={**os.environ, "DOCKER_BUILDKIT": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    steps: set[str] = set()  # BuildKit repeats a step's header when steps interleave
    for line in build.stdout:
        output.append(line)
        if re.match(r"#\d+ \[", line) and line not in steps:
            steps.add(line)
            log(f"  {ref}: {line.strip()[:110]}")
    if build.wait():
        raise UserError(f"{ref}: build failed\n{''.join(output[-25:])}")


@functools.cache
def buildkit_cli() -> str:
    """A docker CLI that builds with BuildKit: one with the buildx plugin, or one older than 23
    (those build with BuildKit when DOCKER_BUILDKIT=1). Debian's docker.io CLI is the fallback
    when the first ``docker`` on PATH is a newer client without buildx.
    """
    for cli in dict.fromkeys(filter(None, [shutil.which("docker"), "/usr/bin/docker"])):
        if _has_buildkit(cli):
            return cli
    raise UserError("no docker CLI here builds with BuildKit: install the buildx plugin "
                    "(docker-buildx) or Debian's docker.io")


def _has_buildkit(cli: str) -> bool:
    if not Path(cli).is_file():
        return False
    if subprocess.run([cli, "buildx", "version"], capture_output=True).returncode == 0:
        return True
    version = subprocess.run([cli, "version", "--format", "{{.Client.Version}}"],
                             capture_output=True, text=True).stdout
    major = re.match(r"(\d+)\.", version)
    return major is not None and int(major.group(1)) < 23


def select(names: list[str] | None, versions: list[str] | None) -> list[ImageSpec]:
    """The images that names (short names; default: every infra and app image) stand for.

    Example: ``select(["postgres", "backend"], ["v1.0.0"])``
    """
    names = names or [*INFRA, *APP_PARTS]
    unknown = [n for n in names if n not in INFRA and n not in APP_PARTS and n not in SPECIAL]
    if unknown:
        raise UserError(f"no image named {unknown[0]} (known: {', '.join(_known_names())})")
    specs = [SPECIAL[n] for n in names if n in SPECIAL]
    specs += [INFRA[n] for n in names if n in INFRA]
    parts = [n for n in names if n in APP_PARTS]
    if parts:
        for version in versions or _app_versions():
            specs += [app_spec(part, version) for part in parts]
    return specs


def _known_names() -> list[str]:
    return [*SPECIAL, *INFRA, *APP_PARTS]


def _app_versions() -> list[str]:
    return list(refapp.VERSIONS)


def build(names: list[str] | None = None, versions: list[str] | None = None,
          client=None, no_cache: bool = False) -> dict[str, float]:
    """Build the selected images (base first); returns seconds per image reference.

    Example: ``build(["redis"])`` -> ``{"rsdeploy/redis:7": 0.4}``
    """
    client = client or docker_client()
    specs = [spec for spec in select(names, versions) if spec is not BASE]
    base_id = ensure_base(client)
    times = {}
    for number, spec in enumerate(specs, 1):
        log(f"image {number} of {len(specs)}: {spec.ref}")  # how far along (BuildKit: its steps)
        times[spec.ref] = build_image(client, spec, base_id, no_cache)
    return times


def ensure_host_image(client) -> str:
    """The sandbox hosts' image (and the base), built when missing or changed."""
    build_image(client, HOST, ensure_base(client))
    return HOST.ref


# --- bundles ----------------------------------------------------------------------------------


def bundle_file_name(ref: str, compressed: bool) -> str:
    """``rsdeploy/postgres:15`` -> ``rsdeploy_postgres_15.tar`` (``.tar.gz`` when compressed)."""
    stem = ref.replace("/", "_").replace(":", "_")
    return f"{stem}.tar.gz" if compressed else f"{stem}.tar"


def bundle(out: Path, names: list[str] | None = None, versions: list[str] | None = None,
           compressed: bool = False, client=None) -> Path:
    """Write one ``docker save`` file per image and ``manifest.json`` (sha256 of each) to ``out``.

    Hosts upload the files, check the sha256 and ``docker load`` them. Returns the manifest path.
    """
    client = client or docker_client()
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    specs = select(names, versions)
    for number, spec in enumerate(specs, 1):
        image = local_image(client, spec.ref)
        path = out / bundle_file_name(spec.ref, compressed)
        log(f"image {number} of {len(specs)}: {spec.ref}: saving to {path} ...")
        sha256 = _save(image, spec.ref, path, compressed)
        log(f"  {spec.ref}: {path.stat().st_size / 2**20:.0f} MiB written")
        entries.append({"image": spec.ref, "id": image.id, "file": path.name, "sha256": sha256,
                        "size": path.stat().st_size})
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps({"images": entries}, indent=2, sort_keys=True) + "\n")
    log(f"manifest: {manifest} ({len(entries)} images)")
    return manifest


def local_image(client, ref: str):
    """The local image ``ref``; a UserError naming ``rsdeploy images build`` when missing."""
    image = find(client.images, ref)
    if image is None:
        raise UserError(f"image {ref} is not built yet: run rsdeploy images build")
    return image


def _save(image, ref: str, path: Path, compressed: bool) -> str:
    """Stream ``docker save`` of ``image`` as ``ref`` into ``path``, hashing the bytes written;
    returns the sha256. (Named by ``ref``: the image's first tag may be a registry push tag.)"""
    digest = hashlib.sha256()
    with open(path, "wb") as raw:
        sink = gzip.GzipFile(fileobj=_HashingWriter(raw, digest), mode="wb", compresslevel=1,
                             mtime=0) if compressed else _HashingWriter(raw, digest)
        with sink:
            for chunk in image.save(named=ref):
                sink.write(chunk)
    return digest.hexdigest()


class _HashingWriter:
    """A file-like sink that hashes what passes through it."""

    def __init__(self, raw, digest):
        self.raw, self.digest = raw, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the sandbox registry (pushing is rsdeploy_dev.sandbox.push_images) ----------------------


def registry_path(spec: ImageSpec) -> str:
    """Where an image lives inside the sandbox registry (without the registry's host:port)."""
    return f"residency/{spec.ref}" if spec.name in APP_PARTS else spec.ref


# --- command line -----------------------------------------------------------------------------


def names_args(parser: argparse.ArgumentParser) -> None:
    """The image selection arguments (``NAME...`` and ``--versions``) of an images command."""
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"images (default: all but host and base): {', '.join(_known_names())}")
    parser.add_argument("--versions", nargs="+", metavar="TAG",
                        help="app release tags for backend/frontend (default: every known tag)")


def cmd_build(args) -> int:
    times = build(args.names, args.versions, no_cache=args.no_cache)
    for ref, seconds in times.items():
        print(f"{seconds:7.1f} s  {ref}")
    print(f"{sum(times.values()):7.1f} s  total")
    return 0


def cmd_bundle(args) -> int:
    print(bundle(Path(args.out), args.names, args.versions, args.gzip))
    return 0


def add_commands(sub):
    """Register ``rsdeploy images build|bundle`` on the CLI's subparsers; returns the ``images``
    group's subparsers, where :mod:`rsdeploy_dev.cli` adds ``push`` (it needs the sandbox).
    """
    images = sub.add_parser("images", help="build, bundle and push the offline images")
    actions = images.add_subparsers(dest="images_command", required=True)
    build_cmd = actions.add_parser("build", help="build images (cached; unchanged ones are skipped)")
    names_args(build_cmd)
    build_cmd.add_argument("--no-cache", action="store_true",
                           help="rebuild every layer (cold build), even if nothing changed")
    build_cmd.set_defaults(func=cmd_build)
    bundle_cmd = actions.add_parser("bundle", help="docker save images + a sha256 manifest")
    names_args(bundle_cmd)
    bundle_cmd.add_argument("--out", required=True, help="output directory")
    bundle_cmd.add_argument("--gzip", action="store_true", help="gzip each file")
    bundle_cmd.set_defaults(func=cmd_bundle)
    return actions
