"""The machine's one image registry for every sandbox: images are pushed once per machine, and
each sandbox's hosts pull them from it by one name, ``rsdeploy-registry:5000``.

A registry per sandbox made every end-to-end chain push the whole stack again (dockerd
compresses every layer of every push, outside any container's CPU weight, and a push waits
while another site is measured under load). This one is started on first use and kept, like
the engine: TLS from a CA of the machine's dev tooling (hosts trust it through the sandbox
inventory's ``trusted_ca_certs``), htpasswd authentication with one password (each sandbox's
secrets file carries it as ``registry_password``), storage in a volume of its own. It joins each
sandbox's network under the alias ``rsdeploy-registry`` (:func:`join`), and leaves it again on
``sandbox down`` (:func:`leave`), or for a while to play an unreachable registry.

    record = ensure(client)                  # {"name", "port", "username", "ca", ...}
    join(client, "rs-e2e-net")               # the hosts of that sandbox reach it by name
"""

from __future__ import annotations

import base64
import json
import os
import secrets as random_secrets
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt

from rsdeploy.errors import UserError
from rsdeploy_dev import images
from rsdeploy_dev.engine import find, heavy_work, machine_lock

#: The container, its volume, the name and port hosts reach it at, the login.
CONTAINER, VOLUME = "rsdeploy-dev-registry", "rsdeploy-dev-registry-data"
NAME, PORT, USER = "rsdeploy-registry", 5000, "rsdeploy"
#: Its loopback port on this machine (pushes, tests).
LOCAL_PORT = 15500
#: What the registry and its files are labelled with (not a sandbox's: ``down`` keeps it).
LABEL = "rsdeploy.dev"
#: How long it may take to answer after it starts (a loaded CI machine: tens of seconds).
START_TIMEOUT = 120


def home() -> Path:
    """Where the machine's dev tooling keeps the registry's CA, certificate and password."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rsdeploy-dev" / "registry"


def ca_cert() -> Path:
    """The CA the registry's certificate chains to (hosts and this machine's docker trust it),
    made on first use. Example: ``inventory["trusted_ca_certs"].append(str(ca_cert()))``"""
    path = home() / "rsdeploy-dev-registry-ca.crt"
    if not path.exists():
        with machine_lock("registry-ca"):
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                key = home() / "ca.key"
                _openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
                         "ec_paramgen_curve:prime256v1", "-keyout", str(key), "-out", str(path),
                         "-days", "825", "-subj", "/CN=rsdeploy dev registry CA",
                         "-addext", "basicConstraints=critical,CA:TRUE",
                         "-addext", "keyUsage=critical,keyCertSign,cRLSign")
                key.chmod(0o600)
    return path


def password() -> str:
    """The registry's one password (made once; mode 0600)."""
    path = home() / "password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(random_secrets.token_urlsafe(24))
    return path.read_text()


def record() -> dict:
    """What a sandbox records of the registry (its state file's ``registry``)."""
    return {"name": NAME, "port": LOCAL_PORT, "username": USER, "ca": str(ca_cert()),
            "docker_trust": str(_trust_dir())}


def ensure(client) -> dict:
    """Run the registry unless it runs, and wait until it answers; returns :func:`record`.
    One process at a time on this machine.

    Example: ``ensure(ensure_engine())["port"]`` -> ``15500``
    """
    with machine_lock("registry"):
        _files()
        container = find(client.containers, CONTAINER)
        if container is None:
            image = images.INFRA["registry"]
            images.build_image(client, image, images.ensure_base(client))
            if find(client.volumes, VOLUME) is None:
                client.volumes.create(VOLUME, labels={LABEL: "registry"})
            print(f"[registry] {CONTAINER}: starting (127.0.0.1:{LOCAL_PORT})", flush=True)
            client.containers.run(
                image.ref, name=CONTAINER, detach=True, labels={LABEL: "registry"},
                ports={f"{PORT}/tcp": ("127.0.0.1", LOCAL_PORT)},
                volumes={str(home() / "certs"): {"bind": "/certs", "mode": "ro"},
                         str(home() / "auth"): {"bind": "/auth", "mode": "ro"},
                         VOLUME: {"bind": "/var/lib/registry", "mode": "rw"}},
                environment={"REGISTRY_HTTP_TLS_CERTIFICATE": "/certs/server.crt",
                             "REGISTRY_HTTP_TLS_KEY": "/certs/server.key",
                             "REGISTRY_AUTH": "htpasswd",
                             "REGISTRY_AUTH_HTPASSWD_REALM": "rsdeploy sandboxes",
                             "REGISTRY_AUTH_HTPASSWD_PATH": "/auth/htpasswd"},
                restart_policy={"Name": "unless-stopped"})
        elif container.status != "running":
            container.start()
        _trust_dir().mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca_cert(), _trust_dir() / "ca.crt")
        _wait()
    return record()


def push(client, names: list[str] | None = None, versions: list[str] | None = None) -> list[str]:
    """Push the selected images (which must exist here) to the registry, starting it when it
    does not run; returns the pushed refs. Infra images keep their repository
    (``rsdeploy/postgres:15``), app images go under ``residency/`` (the sandbox inventory's
    ``app.registry``). An image pushed before goes quickly: dockerd finds its layers there.

    Example: ``push(ensure_engine(), images.SANDBOX_STACK, ["v1.0.0"])``
    """
    local = f"127.0.0.1:{ensure(client)['port']}"
    client.login(username=USER, password=password(), registry=local, reauth=True)
    pushed = []
    for spec in images.select(names, versions):
        if spec.name == images.HOST.name:
            continue
        remote = f"{local}/{images.registry_path(spec)}"
        image = images.local_image(client, spec.ref)
        image.tag(remote)
        pushed.append(remote)
        if holds(images.registry_path(spec), image.id):
            images.log(f"{remote}: there already")  # no wait for the engine (see heavy_work)
            continue
        images.log(f"push {spec.ref} -> {remote}")
        with heavy_work():
            for line in client.images.push(remote, stream=True, decode=True):
                if "error" in line:
                    raise UserError(f"push {remote}: {line['error']}")
    return pushed


def holds(path: str, image_id: str) -> bool:
    """Whether the registry's ``path`` (``repository:tag``) is the image ``image_id`` (its
    manifest names that configuration). Example: ``holds("rsdeploy/redis:7", image.id)``"""
    repository, _, tag = path.rpartition(":")
    request = urllib.request.Request(
        f"https://127.0.0.1:{LOCAL_PORT}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json",
                 "Authorization": "Basic " + base64.b64encode(
                     f"{USER}:{password()}".encode()).decode()})
    context = ssl.create_default_context(cafile=str(ca_cert()))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            return json.loads(answer.read()).get("config", {}).get("digest") == image_id
    except (urllib.error.URLError, OSError, ValueError):
        return False


def join(client, network: str) -> None:
    """Put the registry on a sandbox's network as ``rsdeploy-registry`` (done once)."""
    container = client.containers.get(CONTAINER)
    container.reload()
    if network not in container.attrs["NetworkSettings"]["Networks"]:
        client.networks.get(network).connect(container, aliases=[NAME])


def leave(client, network: str) -> None:
    """Take the registry off a sandbox's network (its hosts no longer reach it)."""
    container = find(client.containers, CONTAINER)
    if container is None:
        return
    container.reload()
    if network in container.attrs["NetworkSettings"]["Networks"]:
        client.networks.get(network).disconnect(container, force=True)


def _trust_dir() -> Path:
    """Where this machine's docker finds the registry's CA (read per request: no restart)."""
    return Path(f"/etc/docker/certs.d/127.0.0.1:{LOCAL_PORT}")


def _files() -> None:
    """The server certificate (for its name and loopback) and the htpasswd file, once."""
    certs, auth = home() / "certs", home() / "auth"
    certs.mkdir(parents=True, exist_ok=True)
    auth.mkdir(parents=True, exist_ok=True)
    if not (certs / "server.crt").exists():
        ext = certs / "server.ext"
        ext.write_text(f"subjectAltName=DNS:{NAME},DNS:localhost,IP:127.0.0.1\n"
                       "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
        _openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-keyout", str(certs / "server.key"),
                 "-out", str(certs / "server.csr"), "-subj", f"/CN={NAME}")
        _openssl("x509", "-req", "-in", str(certs / "server.csr"), "-CA", str(ca_cert()),
                 "-CAkey", str(home() / "ca.key"), "-CAcreateserial", "-days", "825",
                 "-extfile", str(ext), "-out", str(certs / "server.crt"))
        # The registry runs as another user in its container: it must read its key.
        (certs / "server.key").chmod(0o644)
    if not (auth / "htpasswd").exists():
        hashed = bcrypt.hashpw(password().encode(), bcrypt.gensalt(rounds=10)).decode()
        (auth / "htpasswd").write_text(f"{USER}:{hashed}\n")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _wait(timeout: float = START_TIMEOUT) -> None:
    """Until ``/v2/`` answers over TLS (401 without credentials is the ready answer)."""
    context = ssl.create_default_context(cafile=str(ca_cert()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"https://127.0.0.1:{LOCAL_PORT}/v2/", context=context,
                                   timeout=3)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise UserError(f"the dev registry did not answer on 127.0.0.1:{LOCAL_PORT}")
