"""End-to-end fixtures: a fresh sandbox host per scenario, driven only through the rsdeploy CLI
as an operator would (bootstrap, deploy, verify), and looked at from this machine like a user.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rsdeploy.roles import backend, tls
from rsdeploy_dev import REPO_ROOT
from rsdeploy import release
from rsdeploy.apply import changed_operations
from rsdeploy.stack import load_inventory
from rsdeploy_dev import images, load
from rsdeploy_dev import sandbox as sandbox_module
from rsdeploy_dev.engine import ensure_engine, heavy_work

FIRST_VERSION = "v1.0.0"
#: Appended to every end-to-end sandbox's prefix (default none): lets a second checkout run the
#: same chains on this machine at once without their containers' names clashing.
SUFFIX_ENV = "RS_E2E_SUFFIX"
SANDBOX_INVENTORY = REPO_ROOT / "inventories" / "sandbox.py"
#: The images only monitoring uses (RS_SANDBOX_MONITORING=off runs none of them).
#: RS_SANDBOX_TOPOLOGY=split: db+redis, app, app, web+monitoring, and a fifth host outside the
#: stack (a non-peer); the index of the web host.
SPLIT_HOSTS, SPLIT_WEB_HOST = 5, 3
MONITORING_IMAGES = ("prometheus", "alertmanager", "node-exporter", "postgres-exporter",
                     "redis-exporter")
#: The checks ``rsdeploy verify`` passes on each kind of host (layout, what the host carries:
#: "single" all of the stack, or its part of the split topology); the others skip, rightly (the
#: other layout's checks, another role's). Asserted on every verify run: a check that starts
#: skipping everywhere (a fixture's condition gone wrong) passes unseen otherwise. A new verify
#: check raises the count of the hosts it runs on: update it here. Measured: docker single and
#: split, systemd single; systemd split counted from the checks' skip conditions (measure it).
VERIFY_PASSED = {
    ("docker", "single"): 18, ("systemd", "single"): 22,
    ("docker", "db"): 9, ("docker", "app"): 12, ("docker", "web"): 14,
    ("systemd", "db"): 9, ("systemd", "app"): 14, ("systemd", "web"): 15,
}
#: What the split topology's hosts carry, in the sandbox's order (the fifth is no stack host).
SPLIT_KINDS = ("db", "app", "app", "web")
#: rsdeploy/verify/test_certbot.py's checks: they run on a web host with tls.mode certbot only.
CERTBOT_CHECKS = 3
#: The checks of Prometheus' targets and Alertmanager: they run where monitoring does.
MONITORING_CHECKS = 2


@dataclass
class Run:
    """One rsdeploy command: exit code, output (stdout, then stderr), and pyinfra's
    changed-operation count."""

    code: int
    output: str
    stdout: str = ""  # rsdeploy's own summary line ends it (pyinfra writes its log to stderr)

    @property
    def changed(self) -> int:
        """Operations that changed something."""
        return changed_operations(self.output)

    @property
    def changed_names(self) -> list[str]:
        """The summary lines of the operations that changed something (for messages)."""
        return [" ".join(line.split()) for line in self.output.splitlines()
                if re.search(r"\s1\s+1\s+-\s+-\s*$", line)]

    def check(self) -> Run:
        assert self.code == 0, f"rsdeploy failed ({self.code}):\n{self.output[-6000:]}"
        return self

    def passed_per_host(self, hosts: list[str]) -> dict[str, int]:
        """A verify run's passed checks on each host: its pytest summary line (several hosts:
        each report follows its ``--- NAME ---`` line; one host: the whole output)."""
        parts = re.split(r"^--- (\S+) ---$", self.stdout, flags=re.MULTILINE)
        reports = dict(zip(parts[1::2], parts[2::2])) if len(parts) > 1 else {hosts[0]: parts[0]}
        found = {}
        for name in hosts:
            summary = re.findall(r"^=*\s*(\d+ passed.*) in [\d.]+s", reports.get(name, ""),
                                 re.MULTILINE)
            found[name] = int(summary[-1].split()[0]) if summary else 0
        return found


class Site:
    """One sandbox stack: the operator's commands and a user's view of the site."""

    def __init__(self, sandbox, delivery: str, tls: str = "self-signed", monitoring: bool = True,
                 layout: str = "docker", topology: str = "default"):
        self.sandbox, self.delivery, self.tls, self.monitoring = sandbox, delivery, tls, monitoring
        self.layout, self.topology = layout, topology
        # The web host: users reach the site through it (split: the fourth, web+monitoring).
        self.host = sandbox.hosts[SPLIT_WEB_HOST if topology == "split" else 0]
        self.domain = f"{sandbox.prefix}.test"

    @property
    def domains(self) -> list[str]:
        """The names the sandbox inventory serves (certbot mode adds ``www.``)."""
        return [self.domain] + ([f"www.{self.domain}"] if self.tls == "certbot" else [])

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, RS_SANDBOX_PREFIX=self.sandbox.prefix,
                    RS_SANDBOX_DELIVERY=self.delivery, RS_SANDBOX_TLS=self.tls,
                    RS_SANDBOX_MONITORING="on" if self.monitoring else "off",
                    RS_SANDBOX_LAYOUT=self.layout, RS_SANDBOX_TOPOLOGY=self.topology,
                    RS_SANDBOX_STACK_HOSTS=str(SPLIT_WEB_HOST + 1 if self.topology == "split" else ""))

    def settings(self, host_name: str | None = None):
        """A host's settings (the web host's by default) as the sandbox inventory gives them to
        this site's commands (the inventory reads its variations from the environment when it
        is loaded)."""
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            return load_inventory(str(SANDBOX_INVENTORY),
                                  str(self.sandbox.paths.secrets))[host_name or self.host.name]
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def rsdeploy(self, *args: str, inventory: Path = SANDBOX_INVENTORY) -> Run:
        """``rsdeploy ARGS -i INVENTORY --secrets <sandbox secrets>``, output captured."""
        command = [sys.executable, "-m", "rsdeploy.cli", *args, "-i", str(inventory),
                   "--secrets", str(self.sandbox.paths.secrets)]
        proc = subprocess.run(command, cwd=REPO_ROOT, env=self.env, capture_output=True,
                              text=True, timeout=1800)
        # Its summary line (result and seconds) in the test's captured output: pytest -rA.
        print(f"$ rsdeploy {' '.join(args)}: {(proc.stdout.strip().splitlines() or [''])[-1]}")
        return Run(proc.returncode, proc.stdout + proc.stderr, proc.stdout)

    def heavy(self, *args: str, inventory: Path = SANDBOX_INVENTORY) -> Run:
        """:meth:`rsdeploy` for a host's first install (bootstrap, first deploy), a step that
        takes this machine's cores and disk for minutes (packages unpacked, images pulled and
        extracted, on several hosts at once in the split chains): it waits while another site
        is measured under load, and no site is measured until it is done
        (:func:`~rsdeploy_dev.engine.heavy_work`). Two runs saw a split site measured while
        other sites installed: requests timed out (10 s) with nothing wrong in the site.

        Example: ``site.heavy("bootstrap").check()``
        """
        with heavy_work():
            return self.rsdeploy(*args, inventory=inventory)

    def on_host(self, command: str, timeout: float = 120) -> str:
        """A shell command on the sandbox host (as root, through SSH); its output."""
        return self.sandbox.ssh(self.host.name, command, timeout=timeout).stdout

    def reboot(self, seconds: float = 120) -> None:
        """Restart the host's container (systemd boots again) and wait until SSH answers."""
        ensure_engine().containers.get(self.host.name).restart(timeout=30)
        deadline = time.monotonic() + seconds
        while self.sandbox.ssh(self.host.name, "systemctl is-system-running --wait", timeout=60,
                               check=False).returncode not in (0, 1):
            assert time.monotonic() < deadline, f"{self.host.name} did not come back"
            time.sleep(2)

    def curl(self, path: str, *extra: str) -> tuple[int, str]:
        """HTTPS through the host's published 443 port, by the site's name (like a browser)."""
        port = self.host.port(443)
        proc = subprocess.run(
            ["curl", "-sk", "--max-time", "10", "-w", "\n%{http_code}", "--resolve",
             f"{self.domain}:{port}:127.0.0.1", *extra, f"https://{self.domain}:{port}{path}"],
            capture_output=True, text=True)
        body, _, code = proc.stdout.rpartition("\n")
        return int(code or 0), body

    def wait_healthy(self, seconds: float = 180) -> dict:
        """Wait until /health through nginx says healthy; its JSON."""
        deadline = time.monotonic() + seconds
        while True:
            code, body = self.curl("/health")
            if code == 200:
                return json.loads(body)
            assert time.monotonic() < deadline, f"/health: {code} {body}"
            time.sleep(3)

    def renewal_conf(self) -> dict[str, str]:
        """certbot's settings for the site's lineage (what ``certbot renew`` will do)."""
        text = self.on_host(f"cat /etc/letsencrypt/renewal/{self.domain}.conf")
        return dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line)

    def assert_trusted_through(self, root: Path) -> None:
        """For every name: curl, trusting only the CA ``root``, gets /health (chain and name
        checked, as a browser trusting that CA would)."""
        port = self.host.port(443)
        for name in self.domains:
            proc = subprocess.run(
                ["curl", "-sS", "--max-time", "10", "--cacert", str(root), "-o", "/dev/null",
                 "-w", "%{http_code}", "--resolve", f"{name}:{port}:127.0.0.1",
                 f"https://{name}:{port}/health"], capture_output=True, text=True)
            assert proc.stdout == "200", f"{name}: {proc.stdout} {proc.stderr}"

    def acme_root(self, directory: Path) -> Path:
        """The sandbox ACME server's root certificate, written to ``directory``."""
        path = directory / "acme-root.pem"
        path.write_text(sandbox_module.acme_root(self.sandbox.prefix))
        return path

    def containers(self) -> dict[str, dict]:
        """The project's containers by service: id, state, start time."""
        out = self.on_host("docker ps -a --filter label=com.docker.compose.project="
                           "residency-scheduler --format '{{.Names}}' | xargs -r docker inspect")
        return {c["Config"]["Labels"]["com.docker.compose.service"]:
                {"id": c["Id"], "running": c["State"]["Running"],
                 "started": c["State"]["StartedAt"], "env": c["Config"]["Env"]}
                for c in json.loads(out or "[]")}


def expected_verify_passes(site: Site, index: int) -> int:
    """The checks verify passes on the site's ``index``-th host (see :data:`VERIFY_PASSED`)."""
    kind = SPLIT_KINDS[index] if site.topology == "split" else "single"
    web = kind in ("single", "web")  # split: the web host runs the monitoring too
    return (VERIFY_PASSED[(site.layout, kind)]
            + (CERTBOT_CHECKS if web and site.tls == "certbot" else 0)
            - (MONITORING_CHECKS if web and not site.monitoring else 0))


def assert_verified(site: Site, *args: str, inventory: Path = SANDBOX_INVENTORY) -> Run:
    """``rsdeploy verify ARGS``: exit 0, and on every stack host exactly the checks its kind
    passes (:data:`VERIFY_PASSED`): a check skipped where it should run fails here."""
    run = site.rsdeploy("verify", *args, inventory=inventory).check()
    hosts = site.sandbox.hosts[:len(SPLIT_KINDS) if site.topology == "split" else 1]
    expected = {host.name: expected_verify_passes(site, i) for i, host in enumerate(hosts)}
    found = run.passed_per_host(list(expected))
    assert found == expected, (f"verify's passed checks per host: expected {expected} "
                               f"(VERIFY_PASSED), found {found}:\n{run.stdout[-6000:]}")
    return run


def changed_inventory(tmp_path: Path, section: str, values: dict) -> Path:
    """The sandbox inventory with one settings section changed (``values`` merged into it), as
    an operator would edit it. Example: ``changed_inventory(tmp_path, "backend", {"workers": 1})``
    """
    inventory = tmp_path / f"changed_{section}.py"
    inventory.write_text(
        "import runpy\n"
        f"base = runpy.run_path({str(SANDBOX_INVENTORY)!r})\n"
        f"stack = dict(base['stack'], {section}={{**base['stack'].get({section!r}, {{}}), "
        f"**{values!r}}})\n"
        "sandbox_hosts = (base['sandbox_hosts'][0], stack)\n"
    )
    return inventory


def ready_site(prefix: str, delivery: str, tls: str = "self-signed", monitoring: bool = True,
               layout: str = "docker", topology: str = "default"):
    """A fresh one-host sandbox with the stack's images where ``delivery`` needs them (build:
    the infra images and the base the app's Dockerfiles start FROM; the app is built on the host)
    and, for ``tls`` certbot, the sandbox's ACME server resolving the site's names to the host.
    Without ``monitoring`` the stack runs no monitoring, and its images stay on this machine.
    The systemd ``layout`` uses no image: hosts install from Debian, PyPI and npm. The split
    ``topology`` spreads the stack over four hosts and keeps a fifth outside it.
    """
    prefix += os.environ.get(SUFFIX_ENV, "")  # two checkouts' runs side by side
    wanted = [] if layout == "systemd" else [
        name for name in images.sandbox_images(delivery)
        if monitoring or name not in MONITORING_IMAGES]
    if wanted:
        images.build(wanted, [FIRST_VERSION])
    with sandbox_module.session(prefix, SPLIT_HOSTS if topology == "split" else 1) as sandbox:
        site = Site(sandbox, delivery, tls, monitoring, layout, topology)
        if tls == "certbot":
            sandbox_module.ensure_acme(sandbox.prefix, ensure_engine(),
                                       {name: site.host.address for name in site.domains})
        if delivery == "bundle":
            images.bundle(sandbox.paths.root / "bundles", wanted, [FIRST_VERSION])
        elif wanted:
            sandbox_module.push_images(sandbox.prefix, wanted, [FIRST_VERSION])
        yield site


# --- what a user of the site sees, across releases --------------------------------------------


def site_certificate(site, directory: Path) -> Path:
    """The site's self-signed certificate, written to ``directory`` (for the load to trust)."""
    path = directory / "site.pem"
    path.write_text(site.on_host(f"cat {tls.host_certificate_paths(site.settings())[0]}"))
    return path


def write_note(site, written: list, step: str) -> None:
    """A row written through the API before ``step``, remembered in ``written``."""
    body = f"written before {step}"
    code, answer = site.curl("/api/v1/notes", "-X", "POST", "-H",
                             "Content-Type: application/json", "--data", json.dumps({"body": body}))
    assert code == 201, f"POST /api/v1/notes: {code} {answer}"
    written.append(body)


def assert_rows_kept(site, written: list) -> None:
    code, body = site.curl("/api/v1/notes")
    assert code == 200, f"GET /api/v1/notes: {code} {body}"
    bodies = {note["body"] for note in json.loads(body)}
    assert set(written) <= bodies, f"lost: {set(written) - bodies}"


def assert_status_catches_a_stopped_service(site, service: str, stop: str) -> None:
    """``rsdeploy status`` shows every service of the host up with its usage, the release and
    the certificate, and exits 0; after ``stop`` (a shell line on the host) it exits 1 naming
    ``service``; a deploy brings the service back."""
    hs = site.settings()
    run = site.rsdeploy("status", "--json")
    assert run.code == 0, run.output[-3000:]
    checks = {c["name"]: c for c in json.loads(run.stdout)[site.host.name]["checks"]}
    up = {name for name, c in checks.items() if c["verdict"] == "ok" and c["since"]}
    assert set(hs.layout.services(hs)) - up == set(), checks
    assert checks["deployed"]["detail"] == hs.stack.version
    assert re.fullmatch(r"\d+ days left", checks["certificate"]["detail"]), checks["certificate"]
    site.on_host(stop)
    run = site.rsdeploy("status")
    assert run.code == 1 and f", 1 down: {site.host.name} {service}" in run.stdout, run.output
    site.rsdeploy("deploy").check()
    run = site.rsdeploy("status")
    assert run.code == 0, run.stdout


def assert_logs_show_a_request(site) -> None:
    """A request made just before is in ``rsdeploy logs --grep``: in nginx's log and the
    backend's, each line named by host and service; the database's own log reads too; and
    ``--follow`` prints a request made while it follows, then stops on Ctrl-C leaving nothing
    running on the host."""
    marker = f"rsdeploy-logs-{uuid.uuid4().hex[:12]}"
    assert site.curl(f"/api/v1/version?probe={marker}")[0] == 200
    prefix = f"{site.host.name}  "

    def found() -> set[str]:
        run = site.rsdeploy("logs", "--since", "10m", "--grep", marker)
        assert run.code == 0, run.output[-3000:]
        return {line[len(prefix):].split()[0] for line in run.stdout.splitlines()
                if line.startswith(prefix) and marker in line}
    deadline = time.monotonic() + 30  # a log line may take a moment to be written
    while (services := found()) != {"nginx", "backend"} and time.monotonic() < deadline:
        time.sleep(2)
    assert services == {"nginx", "backend"}, services
    run = site.rsdeploy("logs", "db", "--tail", "3")
    assert run.code == 0 and run.stdout.strip(), run.output[-2000:]
    assert all(line.startswith(f"{prefix}db ") for line in run.stdout.splitlines()), run.stdout

    following = subprocess.Popen(
        [sys.executable, "-m", "rsdeploy.cli", "logs", "nginx", "--follow", "--tail", "0",
         "-i", str(SANDBOX_INVENTORY), "--secrets", str(site.sandbox.paths.secrets)],
        cwd=REPO_ROOT, env=site.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C reaches it even when this test runs as a background job, which inherits
        # SIGINT ignored (and so would rsdeploy, which then rightly ignores it too).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    printed: list[str] = []
    threading.Thread(target=lambda: printed.extend(following.stdout), daemon=True).start()
    second = f"{marker}-followed"
    try:
        deadline = time.monotonic() + 60
        while not any(second in line for line in printed):  # once its SSH session reads
            assert time.monotonic() < deadline, f"--follow printed no request with {second}"
            site.curl(f"/health?probe={second}")
            time.sleep(2)
    finally:
        following.send_signal(signal.SIGINT)
        code = following.wait(timeout=30)
    assert code == 130, following.stderr.read()
    deadline = time.monotonic() + 20
    while site.on_host("pgrep -fc '[r]s-logs' || true").strip() != "0":
        assert time.monotonic() < deadline, site.on_host("pgrep -fa '[r]s-logs' || true")
        time.sleep(1)


def assert_stop_and_start_keep_every_row(site) -> None:
    """``rsdeploy stop`` takes the whole site down gracefully (nothing answers), ``start``
    brings it back with every row written before; ``restart backend`` restarts the backend
    alone, and ``status`` is all up after each."""
    written: list[str] = []
    write_note(site, written, "stop")
    run = site.rsdeploy("stop")
    assert run.code == 0, run.output[-3000:]
    assert f"{site.host.name}: stopping nginx" in run.stdout and \
        run.stdout.index("stopping nginx") < run.stdout.index("stopping db"), run.stdout
    assert site.curl("/health")[0] == 0  # nothing listens: nginx stopped too
    assert_diagnose_says_start_the_database(site)
    run = site.rsdeploy("start")
    assert run.code == 0, run.output[-3000:]
    assert run.stdout.index("starting db") < run.stdout.index("starting nginx"), run.stdout
    assert site.wait_healthy()["database"] == "connected"
    assert_rows_kept(site, written)
    run = site.rsdeploy("restart", "backend")
    assert run.code == 0 and "stopping backend" in run.stdout, run.output[-3000:]
    assert "stopping db" not in run.stdout and "stopping nginx" not in run.stdout, run.stdout
    site.wait_healthy()
    assert site.rsdeploy("status").code == 0


def assert_diagnose_says_start_the_database(site) -> None:
    """With the stack stopped, ``rsdeploy diagnose`` exits 1: the database does not accept
    connections, and the remedy is the command that starts it on this host."""
    run = site.rsdeploy("diagnose", "--json")
    assert run.code == 1, run.output[-3000:]
    findings = {(f["check"], f["level"]): f for f in json.loads(run.stdout)}
    db = findings.get(("db", "problem"))
    assert db and db["detail"].startswith("not accepting connections"), findings
    assert f"rsdeploy start db --host {site.host.name} -i " in db["remedy"], db


@contextlib.contextmanager
def full_disk(site, directory: str):
    """``directory`` on the host full while the block runs: a small tmpfs over it, filled to
    the brim (what was there is hidden, and back afterwards)."""
    site.on_host(f"mount -t tmpfs -o size=8m rs-full-disk {directory} && "
                 f"(dd if=/dev/zero of={directory}/filler bs=1M count=16 2>/dev/null || true)")
    try:
        yield
    finally:
        site.on_host(f"umount {directory}")


def wait_for(what: str, found, expected, seconds: float = 120):
    """Poll ``found()`` until it equals ``expected`` (``seconds`` at most).
    Example: ``wait_for("the alert", lambda: states(site)["BackupFailed"], "firing")``"""
    deadline = time.monotonic() + seconds
    while (now := found()) != expected:
        assert time.monotonic() < deadline, f"{what}: expected {expected}, found {now}"
        time.sleep(5)


def assert_diagnose_finds_a_full_disk(site) -> None:
    """A healthy stack diagnoses without a problem (exit 0); then the backup directory's disk
    filled (a small tmpfs over it, filled to the brim): exit 1, the directory named with a
    remedy; and healthy again once it has room."""
    run = site.rsdeploy("diagnose")
    assert run.code == 0, run.output[-4000:]
    assert "0 problem(s)" in run.stdout and "check(s) ok" in run.stdout, run.stdout
    directory = site.settings().stack.backup.directory
    with full_disk(site, directory):
        run = site.rsdeploy("diagnose")
    assert run.code == 1, run.output[-3000:]
    lines = run.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("PROBLEM") and directory in line)
    assert "100% full" in lines[at] and "free space" in lines[at + 1], run.stdout
    assert site.rsdeploy("diagnose").code == 0


def assert_celery_answers_and_runs_a_task(site) -> None:
    """``rsdeploy celery inspect`` reaches the worker (ping, stats as JSON naming it), and a
    manual trigger of the health check by its short name runs: its result comes back, and the
    worker's log has its task id."""
    run = site.rsdeploy("celery", "inspect", "ping")
    assert run.code == 0 and "pong" in run.stdout, run.output[-3000:]
    run = site.rsdeploy("celery", "inspect", "stats", "--json")
    assert run.code == 0, run.output[-3000:]
    nodes = json.loads(run.stdout)
    assert len(nodes) == 1 and all(node.startswith("celery@") for node in nodes), nodes
    run = site.rsdeploy("celery", "call", "periodic_health_check", "--wait", "120")
    assert run.code == 0, run.output[-3000:]
    task_id = re.search(r"periodic_health_check: task id ([0-9a-f-]{36})", run.stdout).group(1)
    assert "operational" in run.stdout or "degraded" in run.stdout, run.stdout  # its report
    deadline = time.monotonic() + 30
    while True:
        logs = site.rsdeploy("logs", "celery-worker", "--since", "10m", "--grep", task_id)
        if "succeeded" in logs.stdout or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert "succeeded" in logs.stdout, logs.output[-3000:]


def assert_flower_shows_the_worker_behind_its_login(site, directory: Path) -> None:
    """Flower at /flower/ through nginx: 401 without a login and with a wrong password; with
    ``flower.user`` and the secret it lists the running worker (it reached the broker). The
    login goes to curl in a 0600 netrc file, never on a command line."""
    hs = site.settings()
    assert site.curl("/flower/api/workers")[0] == 401
    netrc = directory / "flower.netrc"
    netrc.touch(mode=0o600)
    for password, expected in (("not-" + hs.secrets.flower_password, 401),
                               (hs.secrets.flower_password, 200)):
        netrc.write_text(f"machine {site.domain} login {hs.stack.flower.user} password {password}\n")
        deadline = time.monotonic() + 60
        while True:  # Flower learns of the worker from its first broadcast
            code, body = site.curl("/flower/api/workers?refresh=1", "--netrc-file", str(netrc))
            if code != 200 or "celery@" in body or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert code == expected, (password == hs.secrets.flower_password, code, body[:500])
    workers = json.loads(body)
    assert any(name.startswith("celery@") for name in workers), workers


def assert_restore_gives_back_the_dumped_rows(site) -> None:
    """``db backup``, a row written after it, ``db restore``: the rows are exactly the dumped
    ones again (ids, bodies and times), and the site is healthy."""
    site.rsdeploy("db", "backup").check()
    code, before = site.curl("/api/v1/notes")
    assert code == 200
    write_note(site, [], "the restore")  # after the dump: the restore takes it away
    run = site.rsdeploy("db", "restore").check()
    assert "safety dump" in run.output and "restored" in run.output
    assert site.wait_healthy()["database"] == "connected"
    code, after = site.curl("/api/v1/notes")
    assert json.loads(after) == json.loads(before)  # ids, bodies and times, exactly


def serving(site) -> dict:
    """What answers through nginx: the code's version and the database's schema revision."""
    code, body = site.curl("/api/v1/version")
    assert code == 200, f"/api/v1/version: {code} {body}"
    return json.loads(body)


def under_load(site, ca_file, *args: str):
    """``rsdeploy ARGS`` while the steady load runs; (the run, the load's report). The site's
    hosts come first on the machine's CPU meanwhile (the other test groups run beside it)."""
    started = time.strftime("%H:%M:%S", time.gmtime())
    with sandbox_module.precedence(site.sandbox), \
            load.steady(f"https://127.0.0.1:{site.host.port(443)}", site.domain, ca_file) as run:
        result = site.rsdeploy(*args)
    report = run.report()
    if report.failed:  # shown with the failed assertion: what nginx saw meanwhile
        seen = site.rsdeploy("logs", "nginx", "--since", "30m", "--host", site.host.name)
        lines = seen.output.splitlines()
        upstream = [line for line in lines if "upstream" in line and "rt=" not in line]
        slow = [line for line in lines if slow_or_abandoned(line)]
        print(f"load started {started} UTC; {report.summary()}\nnginx's upstream errors:\n"
              + "\n".join(upstream[-40:]) + "\nnginx's slow (3 s or more) or abandoned requests:\n"
              + "\n".join(slow[-40:]) + f"\nrsdeploy {' '.join(args)}, each host's steps:\n"
              + "\n".join(line for line in result.output.splitlines()
                           if line.lstrip().startswith("["))[-8000:])
    return result, report


def slow_or_abandoned(access_line: str) -> bool:
    """An nginx access-log line (the ``timed`` format) of a request that took 3 s or more, or
    whose client gave up (499). Example: ``... "GET / HTTP/1.1" 499 0 ... rt=10.002 ...``"""
    took = re.search(r" rt=([\d.]+)", access_line)
    return bool(took) and (float(took.group(1)) >= 3 or '" 499 ' in access_line)


def prometheus_query(site, query: str) -> list[dict]:
    """The live Prometheus' answer to an instant query on the web host: its result vector.
    Example: ``prometheus_query(site, "rsdeploy_backup_last_attempt_success")``"""
    answer = site.on_host(f"curl -fsS -G --data-urlencode {shlex.quote('query=' + query)} "
                          "http://127.0.0.1:9090/api/v1/query")
    return json.loads(answer)["data"]["result"]


def history(site) -> list[dict]:
    run = site.rsdeploy("releases", "--json").check()
    return json.loads(run.stdout)[site.host.name]


# --- a backend like the real one (REFAPP_LIKE_REAL) -------------------------------------------

#: Seconds from the start of a switch to the refusal of a release whose first start crash-loops.
CRASH_REFUSED_WITHIN = 90


def assert_refused_first_release(site, summary: str, reason: str) -> None:
    """The site's first release was refused (``summary``: rsdeploy's last line): exit 3 summed
    up as nothing serving, ``reason`` in the one line and in the history, the attempt over
    within :data:`CRASH_REFUSED_WITHIN` seconds with its migration undone, nothing answering."""
    assert "release refused, nothing serves" in summary and reason in summary, summary
    assert f"(nothing serves on {site.host.name}: no release served there before)" in summary
    (attempt,) = history(site)
    assert attempt["result"] == "failed" and reason in attempt["reason"], attempt
    took = int(release.seconds_between(attempt["started"], attempt["ended"]))
    assert took < CRASH_REFUSED_WITHIN, f"refused after {took} s"
    assert (attempt["revision_before"], attempt["revision_after"]) == (None, None), attempt
    assert site.curl("/health")[0] != 200


def ready_after(run: Run, service: str) -> int:
    """Seconds after its start the switch found ``service``'s new instance ready (its output).
    Example: ``ready_after(run, "celery-beat")`` -> ``34``"""
    found = re.findall(rf"\S*{re.escape(service)}\S* is ready \(.*, after (\d+) s\)", run.output)
    assert found, f"no ready {service} in the output:\n{run.output[-3000:]}"
    return int(found[-1])


def assert_no_read_only_home(site, services: list[str]) -> None:
    """The app's processes started without a library's "Read-only file system" warning (the
    reference app's REFAPP_HOME_WRITES, like matplotlib), and wrote their cache on the host."""
    run = site.rsdeploy("logs", *services, "--since", "30m")
    assert run.code == 0, run.output[-3000:]
    complaints = [line for line in run.stdout.splitlines()
                  if "Read-only file system" in line or "mkdir -p failed" in line]
    assert not complaints, "\n".join(complaints[:10])
    assert "written by the" in site.on_host(f"cat {backend.APP_CACHE_DIR}/matplotlib/like-real.txt")


# --- a stack over several hosts (RS_SANDBOX_TOPOLOGY=split) -----------------------------------


def split_hosts(site) -> dict:
    """The split sandbox's hosts by what they carry: db (+redis), app1, app2, web (+monitoring),
    and an outsider that is no peer of the stack."""
    return dict(zip(("db", "app1", "app2", "web", "outsider"), site.sandbox.hosts))


def on(site, host, command: str) -> str:
    """A shell command on one of the site's hosts (as root, through SSH); its output."""
    return site.sandbox.ssh(host.name, command, timeout=120).stdout


def app_host_names(site) -> set[str]:
    """The split sandbox's app hosts."""
    return {host.name for key, host in split_hosts(site).items() if key.startswith("app")}


def logged_by(site, marker: str, count: int, seconds: float = 60) -> dict[str, str]:
    """Which host's backend logged each request marked ``{marker}-{i}`` (i < ``count``), as
    ``rsdeploy logs backend --grep`` shows it: {mark: host name}. Waits until every one is
    logged, ``seconds`` at most."""
    mark = re.compile(rf"{marker}-\d+\b")
    deadline = time.monotonic() + seconds
    while True:
        run = site.rsdeploy("logs", "backend", "--since", "15m", "--grep", marker)
        found = {m.group(0): line.split()[0] for line in run.stdout.splitlines()
                 if (m := mark.search(line))}
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(2)


def through_nginx(site, path: str, count: int,
                  every: float = 0) -> list[tuple[str | None, int, str]]:
    """``count`` requests for ``path`` through nginx, ``every`` seconds apart, each marked with a
    query parameter of its own; for each: the app host whose backend logged it (None: no
    backend did), the status and the body."""
    marker = f"rs-probe-{uuid.uuid4().hex[:10]}"
    answers = []
    for i in range(count):
        answers.append(site.curl(f"{path}?probe={marker}-{i}"))
        time.sleep(every)
    hosts = logged_by(site, marker, count)
    return [(hosts.get(f"{marker}-{i}"), code, body) for i, (code, body) in enumerate(answers)]


def assert_serves_everywhere(site, version: str, heads: dict[str, str]) -> None:
    """Every app host answers through nginx, each with ``version`` on its schema revision
    ``heads[version]``: which host answered a request is read from the backend log that has
    it. The requests span 6 s (nginx leaves an app host out for 5 s after a failed attempt)."""
    found: dict[str | None, set] = {}
    for host, code, body in through_nginx(site, "/api/v1/version", 10, every=0.6):
        answer = json.loads(body) if code == 200 else {"status": code, "body": body[:200]}
        found.setdefault(host, set()).add((answer.get("version"), answer.get("schema_revision")))
    expected = {name: {(version, heads[version])} for name in app_host_names(site)}
    assert found == expected, f"(version, schema) answered by each app host: expected " \
                              f"{expected}, found {found}"


def releases_of(site) -> dict[str, list[dict]]:
    """Every host's release attempts (``rsdeploy releases --json``)."""
    return json.loads(site.rsdeploy("releases", "--json").check().stdout)


def assert_only_app_hosts_reach_the_data_stores_over_tls(site, hosts: dict, psql: str) -> None:
    """PostgreSQL (5432) and Redis' TLS port (6380) answer the app hosts only; Redis' plain port
    (6379) no other host at all; every database session of the app is encrypted. ``psql`` runs
    psql as the superuser on the db host."""
    db = hosts["db"].address
    probe = "timeout 4 bash -c '</dev/tcp/{}/{}' && echo open || echo closed"
    for port in (5432, 6380, 6379):
        expected = "closed" if port == 6379 else "open"
        assert on(site, hosts["app2"], probe.format(db, port)).strip() == expected, port
        for name in ("outsider", "web"):
            assert on(site, hosts[name], probe.format(db, port)).strip() == "closed", (name, port)
    sessions = on(site, hosts["db"], (
        f"{psql} -Atc \"select ssl, count(*) from pg_stat_activity join pg_stat_ssl using (pid) "
        "where usename = 'scheduler' group by ssl\""))
    counts = dict(line.split("|") for line in sessions.split())
    assert set(counts) == {"t"} and int(counts["t"]) > 0, sessions  # every app session over TLS


def assert_prometheus_sees_every_host(site, hosts: dict) -> None:
    """Prometheus on the monitoring host has every stack host's node-exporter and both app
    hosts' backend among its targets, each up."""
    targets = json.loads(on(site, hosts["web"], "curl -fsS http://127.0.0.1:9090/api/v1/targets"))
    up: dict[tuple[str, str], bool] = {}
    for t in targets["data"]["activeTargets"]:
        key = (t["labels"]["job"], t["labels"]["instance"])
        up[key] = up.get(key, False) or t["health"] == "up"
    names = {h.name for key, h in hosts.items() if key != "outsider"}
    assert {inst for job, inst in up if job == "node"} == names
    app_hosts = {hosts["app1"].name, hosts["app2"].name}
    assert {inst for job, inst in up if job == "backend"} == app_hosts
    assert all(up.values()), {k: v for k, v in up.items() if not v}


def assert_rolling_release_drops_no_request(site, hosts: dict, ca_file, written: list,
                                            version: str, heads: dict[str, str]) -> None:
    """``deploy --version VERSION`` under load: one app host after the other, in inventory
    order, no request failed, every row kept."""
    run, report = under_load(site, ca_file, "deploy", "--version", version)
    run.check()
    assert report.failed == 0, report.summary()
    assert run.output.index(f"{hosts['app1'].name}: {version} serves") \
        < run.output.index(f"{hosts['app2'].name}: {version} serves")
    assert_serves_everywhere(site, version, heads)
    assert_rows_kept(site, written)


def assert_a_failing_app_host_stops_the_rollout(site, hosts: dict, ca_file, written: list,
                                                broken: str, serving_version: str,
                                                heads: dict[str, str]) -> None:
    """``deploy --version BROKEN`` under load: the first app host refuses it (exit 3), the
    second does not switch to it, the site keeps serving ``serving_version`` without a failed
    request."""
    run, report = under_load(site, ca_file, "deploy", "--version", broken)
    assert run.code == 3, run.output[-3000:]
    assert report.failed == 0, report.summary()
    assert f"not switched: the rollout stopped when {hosts['app1'].name} refused" in run.output
    found = releases_of(site)
    for name in ("app1", "app2"):  # recorded as failed (the second: not switched) or not at all
        last = found[hosts[name].name][-1]
        assert last["version"] != broken or last["result"] == "failed", last
    assert_serves_everywhere(site, serving_version, heads)
    assert_rows_kept(site, written)


def assert_rollback_in_one_wave(site, hosts: dict, ca_file, written: list, version: str,
                                heads: dict[str, str]) -> None:
    """``rollback --to VERSION --wave 2`` under load: both app hosts at once (each one's
    rollback began before the other's ended); the last one downgrades the database only once
    the other serves the older release."""
    run, report = under_load(site, ca_file, "rollback", "--to", version, "--wave", "2")
    run.check()
    first, last = hosts["app1"].name, hosts["app2"].name
    downgrade = f"[{last}] downgrading the database to {heads[version]}"
    assert downgrade in run.output, run.output[-3000:]
    assert run.output.index(f"{first}: {version} serves") < run.output.index(downgrade), \
        f"{last} downgraded the database before {first} served {version}:\n{run.output[-6000:]}"
    assert report.failed == 0, report.summary()
    assert_serves_everywhere(site, version, heads)
    assert_rows_kept(site, written)
    records = releases_of(site)
    found = {name: records[name][-1] for name in (first, last)}
    assert all((a["version"], a["kind"]) == (version, "rollback") for a in found.values()), found
    # One wave: each began before the other ended (times to the second; a switch takes longer).
    assert found[last]["started"] < found[first]["ended"] and \
        found[first]["started"] < found[last]["ended"], f"rolled back one after the other: {found}"
