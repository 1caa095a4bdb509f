"""This machine: the Debian packages the dev tooling needs, a running Docker engine, and the
few docker SDK pieces the sandbox and the image builder use besides a client.

The bottom of ``rsdeploy_dev``: imports nothing else from it, so the sandbox and the image
builder both use it without importing each other for it. It is also the one module that
imports the docker SDK (see :func:`_sdk`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rsdeploy.errors import UserError

DOCKERD_LOG = Path("/var/log/dockerd.log")
#: Where the machine-wide locks live: one Docker engine per machine, whichever checkout (or
#: fresh clone) runs its tests.
LOCK_DIR = Path(tempfile.gettempdir()) / "rsdeploy-dev-locks"


def log(message: str) -> None:
    """One progress line, tagged ``[sandbox]`` as before these helpers left the sandbox module."""
    print(f"[sandbox] {message}", flush=True)


@contextlib.contextmanager
def machine_lock(name: str):
    """One process of this machine at a time in the block (test workers run side by side):
    image builds, sandbox bring-up (free ports and subnets are picked, then taken).

    Example: ``with machine_lock("images"): build_image(...)``
    """
    with _flocked(name, fcntl.LOCK_EX):
        yield


#: The lock held by a sandbox site measured under load (exclusive), and by heavy work of the
#: test groups (shared): no heavy work starts while a site is measured, and a measurement waits
#: for the heavy work in flight.
MEASURING = "measuring"
#: Held by a measurement from the moment it asks for :data:`MEASURING`: heavy work passes it
#: before its shared lock, so a stream of heavy works (one image build after another) cannot
#: keep a measurement waiting (shared flocks are granted past a waiting exclusive one).
MEASUREMENT_NEXT = "measurement-next"


@contextlib.contextmanager
def measuring():
    """While the block runs, no other site is measured and no heavy work starts (see
    :func:`heavy_work`); entered once the heavy work in flight is done, none starting
    meanwhile. Two sites measured at once each get half the precedence a measurement asks
    for: a cold run saw both fail in the same second.

    Example: ``with measuring(): run_the_load_against_the_site()``
    """
    with _flocked(MEASUREMENT_NEXT, fcntl.LOCK_EX), _flocked(MEASURING, fcntl.LOCK_EX):
        yield


@contextlib.contextmanager
def heavy_work():
    """Work that takes this machine's two cores for minutes, outside the CPU weight a measured
    site's hosts get: an image build or push of ours (dockerd compresses the layers), a
    sandbox site's first install (bootstrap, first deploy). Waits while a site is measured or
    waits to be; runs beside other heavy work. A cold run saw a split site measured while a
    second split site's four hosts bootstrapped: requests timed out for 10 s.

    Example: ``with heavy_work(): client.images.push(ref)``
    """
    with _flocked(MEASUREMENT_NEXT, fcntl.LOCK_EX):
        pass  # no measurement waits or runs
    with _flocked(MEASURING, fcntl.LOCK_SH):
        yield


#: A file each lock's wait and hold are appended to (one line each, when released), for the
#: suite's time budget: ``.ci/run`` names one in its logs directory. Unset: nothing is written.
LOCK_LOG_ENV = "RS_LOCK_LOG"


@contextlib.contextmanager
def _flocked(name: str, mode: int):
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_DIR / f".{name}.lock", "w") as handle:
        asked = time.monotonic()
        fcntl.flock(handle, mode)
        got = time.monotonic()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            _log_lock(name, mode, got - asked, time.monotonic() - got)


def _log_lock(name: str, mode: int, waited: float, held: float) -> None:
    """One line in :data:`LOCK_LOG_ENV`'s file: when, who (the test group), which lock, how
    long it waited and was held. Example: ``12:01:07 e2e-test_split_hosts measuring ex
    waited 41.2 held 88.0``"""
    path = os.environ.get(LOCK_LOG_ENV)
    if not path:
        return
    who = os.environ.get("RS_TEST_GROUP", str(os.getpid()))
    kind = "ex" if mode == fcntl.LOCK_EX else "sh"
    with contextlib.suppress(OSError), open(path, "a") as log_file:
        log_file.write(f"{time.strftime('%H:%M:%S')} {who} {name} {kind} "
                       f"waited {waited:.1f} held {held:.1f}\n")


def _sdk():
    """The ``docker`` SDK package, imported on first use.

    Not at module top, on purpose: the ``rsdeploy`` CLI imports ``rsdeploy_dev`` on every run
    (entry point ``rsdeploy.commands``), also for product commands that never touch Docker,
    and the SDK brings requests/urllib3 (a quarter second). Imported before pyinfra's CLI
    monkey-patches ssl with gevent, urllib3 makes gevent warn on stderr and stays unpatched.
    """
    import docker  # lazy on purpose: see the docstring

    return docker


def find(collection, name: str):
    """``collection.get(name)`` (containers, images, volumes, networks of a client), or None
    when docker has no such object. Example: ``find(client.volumes, "rs-sandbox-1-docker")``
    """
    not_found = _sdk().errors.NotFound  # ImageNotFound is one too
    try:
        return collection.get(name)
    except not_found:
        return None


def ipam_config(subnet: str):
    """The IPAM configuration of a bridge network with one fixed ``subnet`` (``10.213.7.0/24``)."""
    types = _sdk().types
    return types.IPAMConfig(pool_configs=[types.IPAMPool(subnet=subnet)])


def ensure_packages(commands: dict[str, str]) -> None:
    """apt-get install the package of every command that is missing.

    Example: ``ensure_packages({"debootstrap": "debootstrap", "ssh-keygen": "openssh-client"})``
    """
    missing = sorted({pkg for cmd, pkg in commands.items() if shutil.which(cmd) is None})
    if not missing:
        return
    log(f"installing {' '.join(missing)} (apt-get) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def ensure_engine(timeout: float = 60, api_timeout: float = 60):
    """A docker SDK client; installs docker.io and starts ``dockerd`` when no engine answers.
    ``api_timeout``: how long the client waits for one API call's answer.

    The CI machine has no systemd as PID 1, so dockerd runs in the background with its log in
    /var/log/dockerd.log. Example: ``client = ensure_engine()``
    """
    docker = _sdk()
    with contextlib.suppress(docker.errors.DockerException):
        return docker.from_env(timeout=api_timeout)
    ensure_packages({"dockerd": "docker.io"})
    log(f"no Docker engine answers: starting dockerd (log: {DOCKERD_LOG}) ...")
    with open(DOCKERD_LOG, "ab") as out:
        subprocess.Popen(["dockerd"], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(docker.errors.DockerException):
            return docker.from_env(timeout=api_timeout)
        time.sleep(1)
    raise UserError(f"dockerd did not answer within {timeout:.0f} s (see {DOCKERD_LOG})")
