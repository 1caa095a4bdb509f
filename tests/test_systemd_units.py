"""Systemd layout: the app units, the PM2 unit and ecosystem file, checked offline with
systemd-analyze / node, and for real inside a container with systemd as PID 1 (sandbox)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from rsdeploy.roles import backend, frontend
from rsdeploy_dev import REPO_ROOT
from rsdeploy.render import write_tree
from rsdeploy.stack import check_host, load_inventory, render_host
from tests.conftest import EXAMPLE_SECRETS, EXAMPLES, INVENTORIES, load_example
from tests.test_app_env import NASTY

APP_UNITS = ["residency-backend@.service", "residency-celery-worker@.service",
             "residency-celery-beat@.service"]
HARDENING = ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
             "PrivateDevices=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
             "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "CapabilityBoundingSet="]


def systemd_files(name: str = "example_systemd", env: dict | None = None):
    hs = load_example(name, env)["rs1.example.org"]
    return hs, [*backend.render(hs), *frontend.render(hs)]


def unit(files, name: str) -> str:
    return next(f.content for f in files if f.path == f"/etc/systemd/system/{name}")


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


# --- offline -----------------------------------------------------------------------------------

def test_units_pass_systemd_analyze_verify(tmp_path):
    hs, files = systemd_files()
    write_tree(files, tmp_path)
    verdicts = backend.validate(tmp_path, hs) + frontend.validate(tmp_path, hs)
    assert len(verdicts) == 5
    assert all(v.ok for v in verdicts), [v for v in verdicts if not v.ok]


#: systemd-analyze security's exposure levels: up to 4.9 is rated "OK" (10 is "UNSAFE").
MAX_EXPOSURE = 4.0


def require(tool: str, package: str) -> None:
    """Fail, never skip, without ``tool``: .ci/setup installs ``package`` for these tests, and a
    skip would hide from CI that they did not run."""
    assert shutil.which(tool), \
        f"{tool} is not installed: install Debian's {package} (.ci/setup does)"


def test_units_are_rated_ok_by_systemd_analyze_security(tmp_path):
    require("systemd-analyze", "systemd")
    hs, files = systemd_files()
    for name in [*APP_UNITS, frontend.PM2_UNIT]:
        # A template is judged as one of its instances (the green release slot).
        path = tmp_path / name.replace("@", "@green")
        path.write_text(unit(files, name))
        out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(path)],
                             capture_output=True, text=True).stdout
        level = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", out)
        assert level and float(level.group(1)) <= MAX_EXPOSURE, (name, out[-600:])


def test_verify_catches_a_broken_unit(tmp_path):
    hs, files = systemd_files()
    write_tree(files, tmp_path)
    path = tmp_path / "etc/systemd/system/residency-backend@.service"
    path.write_text(path.read_text().replace("Restart=on-failure", "Restart=sometimes\nBogus=1"))
    verdict = backend.validate(tmp_path, hs)[0]
    assert not verdict.ok and "Bogus" in verdict.detail


def test_app_units_are_hardened_and_read_the_root_only_env_file():
    hs, files = systemd_files()
    for name in APP_UNITS:
        d = directives(unit(files, name))
        assert d["User"] == ["residency"] and d["Group"] == ["residency"]
        # app.env (root only, secrets) and the release slot's own ports
        assert d["EnvironmentFile"] == ["/etc/residency-scheduler/app.env",
                                        "/etc/residency-scheduler/slots/%i.env"]
        assert d["WorkingDirectory"] == ["/opt/residency-scheduler/slots/%i/backend"]
        assert d["ExecStart"][0].startswith('"/opt/residency-scheduler/slots/%i/venv/bin/')
        # the logs, and the app's cache (XDG_CACHE_HOME): nothing else of the host is writable
        assert d["ReadWritePaths"] == ["/var/log/residency-scheduler /var/cache/residency-scheduler/app"]
        assert "/run/residency-home:mode=0700,uid=1001,gid=1001" in d["TemporaryFileSystem"]  # HOME
        for line in HARDENING:
            key, _, value = line.partition("=")
            assert d[key] == [value], (name, key)
        # single host: start after the local database and Redis
        assert "postgresql.service" in d["After"][0] and "redis-server.service" in d["Wants"][0]


def test_units_take_workers_queues_and_limits_from_settings():
    hs, files = systemd_files()
    b = hs.stack.backend
    api = directives(unit(files, "residency-backend@.service"))
    assert f'"--workers" "{b.workers}"' in api["ExecStart"][0]
    assert '"--host" "127.0.0.1"' in api["ExecStart"][0]  # nginx and Prometheus are local
    assert '"--port" "${RS_BACKEND_PORT}"' in api["ExecStart"][0]  # the slot's port
    # Sized from the workers: 4 x 700m + 300m headroom.
    assert api["MemoryMax"] == [str((b.workers * 700 + 300) * 1024**2)] and api["CPUQuota"] == ["100%"]
    assert api["TemporaryFileSystem"] == ["/run/prometheus-multiproc:mode=0700,uid=1001,gid=1001",
                                          "/run/residency-home:mode=0700,uid=1001,gid=1001"]
    worker = directives(unit(files, "residency-celery-worker@.service"))
    assert f'"-Q" "{",".join(b.celery_queues)}"' in worker["ExecStart"][0]
    # two slots' workers side by side need their own node names
    assert '"--hostname" "celery@${HOSTNAME}"' in worker["ExecStart"][0]
    assert worker["Environment"] == ["HOSTNAME=%H-%i"]
    assert worker["KillMode"] == ["mixed"] and worker["TimeoutStopSec"] == ["300"]
    beat = directives(unit(files, "residency-celery-beat@.service"))
    assert beat["StateDirectory"] == ["residency-celery-beat"]
    assert "/var/lib/residency-celery-beat/celerybeat-schedule" in beat["ExecStart"][0]
    assert beat["MemoryMax"] == [str(512 * 1024**2)] and beat["CPUQuota"] == ["25%"]


def test_each_release_slot_has_its_own_ports():
    hs, files = systemd_files()
    slots = {f.path: f.content for f in files if "/slots/" in f.path}
    assert "RS_BACKEND_PORT=8000" in slots["/etc/residency-scheduler/slots/blue.env"]
    assert "RS_BACKEND_PORT=8010" in slots["/etc/residency-scheduler/slots/green.env"]
    # the settings check knows the second slot's ports
    assert backend.ports(hs) == {"backend.port": 8000,
                                 "backend.port (+10, release slot green)": 8010}


def test_backend_listens_on_the_private_address_when_nginx_is_elsewhere():
    hs = load_example("example_systemd")["rs1.example.org"]
    assert backend.listen_address(hs, "web") == "127.0.0.1"
    multi = load_example("example_multi")["app1.example.org"]
    assert backend.listen_address(multi, "web") == "10.0.0.22"


def test_pm2_ecosystem_loads_in_node_with_settings(tmp_path):
    require("node", "nodejs")
    hs, files = systemd_files()
    write_tree(files, tmp_path)
    script = "console.log(JSON.stringify(require(process.argv[1])))"
    out = subprocess.run(["node", "-e", script, str(tmp_path / "opt/residency-scheduler/ecosystem.config.js")],
                         capture_output=True, text=True, check=True).stdout
    blue, green = json.loads(out)["apps"]
    assert blue["name"] == "residency-frontend-blue" and blue["script"] == "server.js"
    assert blue["cwd"] == "/opt/residency-scheduler/slots/blue/frontend/.next/standalone"
    assert (blue["instances"], blue["exec_mode"]) == (1, "cluster")
    assert blue["max_memory_restart"] == 512 * 1024**2 and blue["kill_timeout"] == 30000
    assert blue["out_file"] == "/var/log/residency-scheduler/frontend-blue.log"
    assert blue["env"] == {"BACKEND_URL": "http://127.0.0.1:8000", "HOSTNAME": "127.0.0.1",
                           "NEXT_TELEMETRY_DISABLED": "1", "NODE_ENV": "production", "PORT": "3000"}
    # the green slot's frontend talks to the green slot's API
    assert (green["env"]["PORT"], green["env"]["BACKEND_URL"]) == ("3010", "http://127.0.0.1:8010")
    pm2 = directives(unit(files, "pm2-residency.service"))
    assert pm2["ExecStart"] == ['"/opt/residency-scheduler/pm2/node_modules/.bin/pm2" "resurrect"']
    assert pm2["Type"] == ["forking"] and pm2["User"] == ["residency"]
    assert pm2["Environment"] == ["PM2_HOME=/opt/residency-scheduler/.pm2",
                                  "PATH=/usr/local/bin:/usr/bin:/bin"]
    # both slots' instances during a switch, and PM2 itself
    assert pm2["MemoryMax"] == [str((2 * 512 + 256) * 1024**2)]


@pytest.mark.parametrize("name", EXAMPLES)
def test_docker_hosts_get_no_units(name):
    for hs in load_example(name).values():
        if hs.stack.layout == "docker":
            paths = [f.path for f in backend.render(hs) + frontend.render(hs)]
            assert not [p for p in paths if p.startswith(("/etc/systemd", "/etc/sysusers.d"))]


# --- sandbox: a container with systemd as PID 1 --------------------------------------------------

BASE_IMAGE = "rsdeploy/base:bookworm"
SYSTEMD_IMAGE = "rsdeploy/test-systemd:bookworm"
APP_PACKAGES = "uvicorn celery python3-redis alembic redis-server curl"
#: + Debian's uvicorn, celery, alembic and Redis; the tag changes with the package list.
APP_IMAGE = f"rsdeploy/test-systemd-app:{hashlib.sha256(APP_PACKAGES.encode()).hexdigest()[:12]}"
RUN_FLAGS = ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--security-opt",
             "seccomp=unconfined", "--security-opt", "apparmor=unconfined", "--cgroupns=host",
             "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock"]
DOCKERFILES = {
    SYSTEMD_IMAGE: f"FROM {BASE_IMAGE}\nRUN apt-get update && DEBIAN_FRONTEND=noninteractive "
                   "apt-get install -y --no-install-recommends systemd systemd-sysv dbus "
                   "&& apt-get clean && rm -rf /var/lib/apt/lists/*\nCMD [\"/sbin/init\"]\n",
    APP_IMAGE: f"FROM {SYSTEMD_IMAGE}\nRUN apt-get update && DEBIAN_FRONTEND=noninteractive "
               f"apt-get install -y --no-install-recommends {APP_PACKAGES} && apt-get clean "
               "&& rm -rf /var/lib/apt/lists/*\n",
}


def docker(*args: str, input: bytes | None = None, check: bool = True, timeout: int = 120):
    return subprocess.run(["docker", *args], input=input, capture_output=True, check=check,
                          timeout=timeout)


def ensure_image(image: str, tmp: Path) -> None:
    """Build an image once and reuse it (base: debootstrap, no registry needed)."""
    if docker("image", "inspect", image, check=False).returncode == 0:
        return
    if image == BASE_IMAGE:
        rootfs = tmp / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs),
                        "http://deb.debian.org/debian"], check=True, capture_output=True, timeout=900)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", image], stdin=tar.stdout, check=True,
                       capture_output=True, timeout=600)
        return
    ensure_image(BASE_IMAGE if image == SYSTEMD_IMAGE else SYSTEMD_IMAGE, tmp)
    (tmp / image.replace("/", "_")).mkdir()
    (tmp / image.replace("/", "_") / "Dockerfile").write_text(DOCKERFILES[image])
    docker("build", "-q", "-t", image, str(tmp / image.replace("/", "_")), timeout=900)


@pytest.fixture(scope="module")
def systemd_host(tmp_path_factory):
    """A running container with systemd as PID 1 (removed afterwards)."""
    if shutil.which("docker") is None or docker("info", check=False, timeout=30).returncode:
        pytest.skip("no Docker engine reachable (docker info failed)")
    ensure_image(APP_IMAGE, tmp_path_factory.mktemp("images"))
    name = f"rsdeploy-units-{int(time.time())}"
    docker("run", "-d", "--name", name, "--hostname", "rs1", *RUN_FLAGS, APP_IMAGE, "/sbin/init")
    try:
        for _ in range(60):
            state = docker("exec", name, "systemctl", "is-system-running", check=False).stdout
            if state.strip() in (b"running", b"degraded"):
                break
            time.sleep(0.5)
        yield name
    finally:
        docker("rm", "-f", name, check=False)


def sh(host: str, script: str, check: bool = True) -> subprocess.CompletedProcess:
    return docker("exec", host, "bash", "-c", script, check=check)


def put(host: str, path: str, content: str, mode: str = "644") -> None:
    docker("exec", "-i", host, "bash", "-c",
           f'mkdir -p "$(dirname {path})" && cat > {path} && chmod {mode} {path}',
           input=content.encode())


@pytest.mark.sandbox
def test_systemd_reads_environment_file_byte_for_byte(systemd_host):
    hs, files = systemd_files(env=NASTY)
    env_file = next(f for f in files if f.path.endswith("/app.env"))
    put(systemd_host, "/root/app.env", env_file.content, "600")
    out = docker("exec", systemd_host, "systemd-run", "--quiet", "--wait", "--pipe",
                 "-p", "EnvironmentFile=/root/app.env", "/usr/bin/env", "-0").stdout.decode()
    seen = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    expected = backend.app_environment(hs)
    assert {k: seen.get(k) for k in expected} == expected
    assert seen["WEBHOOK_SECRET"] == NASTY["RS_WEBHOOK_SECRET"] and "KEY" not in seen


# A stand-in release: the real entry points (app.main:app, app.core.celery_app, alembic) served
# by Debian's uvicorn, celery and alembic, so the units run exactly as rendered.
FAKE_RELEASE = {
    "backend/app/__init__.py": "",
    "backend/app/core/__init__.py": "",
    "backend/app/main.py": '''import json, os
def writable(variable):
    """Whether the directory $variable names takes a new directory, as a library's mkdir -p."""
    try:
        os.makedirs(os.path.join(os.environ[variable], "probe", "made"), exist_ok=True)
        return True
    except OSError:
        return False
async def app(scope, receive, send):
    body = json.dumps({"status": "healthy", "uid": os.getuid(),
                       "multiproc": os.path.isdir(os.environ.get("PROMETHEUS_MULTIPROC_DIR", "/-")),
                       "home": writable("HOME"), "cache": writable("XDG_CACHE_HOME")})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body.encode()})
''',
    "backend/app/core/celery_app.py": '''import os
from celery import Celery
app = Celery("app", broker=os.environ["CELERY_BROKER_URL"], backend=os.environ["CELERY_RESULT_BACKEND"])
''',
    "backend/alembic.ini": "[alembic]\nscript_location = migrations\n",
    "backend/migrations/env.py": "print('migrations: nothing to do')\n",
    "backend/migrations/script.py.mako": "",
}


@pytest.mark.sandbox
def test_units_verify_clean_and_run_hardened_in_systemd(systemd_host):
    hs, files = systemd_files()
    # the green slot: its own port (8010) and Celery node name
    release, slot = "/opt/residency-scheduler/releases/v1.0.0", "/opt/residency-scheduler/slots/green"
    for f in files:
        if not f.path.endswith("ecosystem.config.js"):
            put(systemd_host, f.path, f.content, f.mode)
    for rel, content in FAKE_RELEASE.items():
        put(systemd_host, f"{release}/{rel}", content)
    sh(systemd_host, f"""set -e
        systemd-sysusers /etc/sysusers.d/residency.conf
        mkdir -p {release}/backend/migrations/versions {release}/venv/bin /opt/residency-scheduler/slots
        for b in uvicorn celery alembic; do ln -sf /usr/bin/$b {release}/venv/bin/$b; done
        ln -sfn {release} {slot}
        install -d -o residency -g residency -m 0750 /var/log/residency-scheduler
        install -d -o residency -g residency -m 0750 /var/cache/residency-scheduler/app
        redis-cli CONFIG SET requirepass {shlex.quote(hs.secrets.redis_password)} >/dev/null
        systemctl daemon-reload""")
    instances = [name.replace("@", "@green") for name in APP_UNITS]
    # Every binary now exists: verify must be clean without any tolerance.
    verify = sh(systemd_host, f"systemd-analyze verify {' '.join(instances)} 2>&1", check=False)
    assert verify.returncode == 0 and not verify.stdout.strip(), verify.stdout.decode()

    sh(systemd_host, f"systemctl start {' '.join(instances)}")
    health = b""
    for _ in range(40):
        health = sh(systemd_host, "curl -sf http://127.0.0.1:8010/health", check=False).stdout
        if health:
            break
        time.sleep(0.5)
    # HOME and the cache take what the app's libraries write under the read-only release
    assert json.loads(health) == {"status": "healthy", "uid": 1001, "multiproc": True,
                                  "home": True, "cache": True}
    for name in instances:
        state = sh(systemd_host, f"systemctl is-active {name}", check=False).stdout.decode().strip()
        assert state == "active", sh(systemd_host, f"journalctl -u {name} -n 30").stdout.decode()
    # the documented worker health check answers through the env file's broker URL (the
    # worker may still be connecting: a few attempts)
    ping_cmd = ("systemd-run --quiet --wait --pipe -p User=residency "
                "-p EnvironmentFile=/etc/residency-scheduler/app.env "
                "-p WorkingDirectory=/opt/residency-scheduler/slots/green/backend "
                "/opt/residency-scheduler/slots/green/venv/bin/celery -A app.core.celery_app "
                "inspect ping --timeout 5 -d celery@rs1-green")
    for _ in range(6):
        ping = sh(systemd_host, ping_cmd, check=False)
        if b"pong" in ping.stdout:
            break
    assert b"pong" in ping.stdout, ping.stdout + ping.stderr
    for _ in range(20):
        if sh(systemd_host, "ls /var/lib/residency-celery-beat/celerybeat-schedule*",
              check=False).returncode == 0:
            break
        time.sleep(0.5)
    else:
        pytest.fail("celery beat wrote no schedule file in its StateDirectory")


def test_the_split_stack_natively_passes_every_validator(tmp_path):
    """example_multi in the systemd layout (two app hosts behind nginx): every host's files pass
    their real validators (nginx -t with the app hosts' upstreams, systemd-analyze verify, ...).
    Deployed natively over several hosts: not yet run in the sandbox."""
    hosts = load_inventory(str(INVENTORIES / "example_multi.py"), EXAMPLE_SECRETS, env={},
                           override_data={"layout": "systemd",
                                          "app": {"source_repo": str(REPO_ROOT / "examples/refapp")}})
    for name, hs in hosts.items():
        files = render_host(hs)
        # One Celery beat per stack: its unit only on the first app host.
        assert any(f.path.endswith("residency-celery-beat@.service") for f in files) \
            is (name == "app1.example.org"), name
        write_tree(files, tmp_path / name)
        failed = [(v.path, v.detail) for v in check_host(hs, files, tmp_path / name) if not v.ok]
        assert not failed, (name, failed)
