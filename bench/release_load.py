"""What users see while releases roll out: failed requests under a steady load, per release step.

    .venv/bin/python bench/release_load.py [--layout docker|systemd] [--split] [--rate 20] [--tail 15] [--keep]

On a fresh one-host sandbox (``rs-rel-bench``, pull delivery, self-signed certificate; with
``--layout systemd`` ``rs-rel-bench-sysd``, the release built on the host): bootstrap
and deploy v1.0.0, then, each under rsdeploy_dev.load's steady load through nginx (``GET /``,
``GET /health``, ``GET /api/v1/version``, ``POST /api/v1/notes``), from LEAD seconds before the
command to ``--tail`` seconds after it:

1. ``deploy --version v1.1.0``;
2. ``rollback --to v1.0.0``, or, while the CLI has no ``rollback`` command, ``deploy --version
   v1.0.0`` (labelled so);
3. ``deploy --version v1.2.0-broken``;
4. ``deploy --version v1.3.0-badmigration``, when the reference app has that release;
5. after ``deploy --version v1.1.0`` again (not measured, the site healthy again), the guide's
   own rollback procedure to v1.0.0, over SSH in the Compose project directory (see
   :func:`guide_rollback_script`: what it runs and why it is the guide's procedure); docker
   layout only.

Prints per step: exit code, command seconds, failed of all requests, the longest run of
consecutive failures (cut off by the end of the load when the site stays down), p95 latency, and
the failures before the command started (the site already down: the previous step's doing) and
after it had returned (still down); then each step's failures by kind and status. Each
command's output goes to ``out/release_load/<step>.log`` (never printed: nothing here shows a
secret). The images are built and pushed first. The host is removed afterwards unless ``--keep``.
With ``--split`` the stack runs on four hosts (``rs-rel-bench-split``: db+redis, two app hosts,
web+monitoring) and the load goes through the web host; step 5 is left out.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rsdeploy.roles import tls
from rsdeploy_dev import REPO_ROOT
from rsdeploy.stack import load_inventory
from rsdeploy.stack.docker import delivery, project
from rsdeploy_dev import images, load, refapp, sandbox

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

PREFIX = "rs-rel-bench"
INVENTORY = REPO_ROOT / "inventories" / "sandbox.py"
LOGS = REPO_ROOT / "out" / "release_load"
FIRST, NEXT, BROKEN, BAD_MIGRATION = "v1.0.0", "v1.1.0", "v1.2.0-broken", "v1.3.0-badmigration"
#: Seconds of load before each command: the steady state it starts from.
LEAD = 3.0
#: The longest any one command may take (a deploy's health wait is 300 s at most).
COMMAND_TIMEOUT = 1200


@dataclass(frozen=True)
class Row:
    """One measured step (``report`` None: skipped, ``note`` says why)."""

    step: str
    code: int | None = None
    seconds: float = 0.0
    report: load.Report | None = None
    failed_before: int = 0  # failures among requests sent before the command started
    failed_after: int = 0  # failures among requests sent after the command returned
    note: str = ""


@dataclass(frozen=True)
class Site:
    """The sandbox site as the load reaches it, and its host's settings."""

    box: sandbox.Sandbox
    hs: HostSettings  # the web host's
    url: str
    ca_file: Path

    @property
    def host(self) -> str:
        """The web host (the last one: web+monitoring when split)."""
        return self.box.hosts[-1].name


# --- commands ------------------------------------------------------------------------------------


def log_file(step: str) -> Path:
    """``out/release_load/<step as a file name>.log``."""
    LOGS.mkdir(parents=True, exist_ok=True)
    return LOGS / (re.sub(r"[^A-Za-z0-9.]+", "-", step).strip("-") + ".log")


def rsdeploy(step: str, *args: str) -> int:
    """``rsdeploy ARGS -i inventories/sandbox.py --secrets ...``; its exit code, output logged.

    Example: ``rsdeploy("deploy v1.1.0", "deploy", "--version", "v1.1.0")`` -> ``0``
    """
    secrets = sandbox.SandboxPaths.of(os.environ[sandbox.PREFIX_ENV]).secrets
    with log_file(step).open("w") as out:
        return subprocess.run([sys.executable, "-m", "rsdeploy.cli", *args, "-i", str(INVENTORY),
                               "--secrets", str(secrets)], cwd=REPO_ROOT, stdout=out,
                              stderr=subprocess.STDOUT, timeout=COMMAND_TIMEOUT,
                              check=False).returncode


def has_rollback() -> bool:
    """Whether the CLI has ``rollback`` yet (it is being written)."""
    return subprocess.run([sys.executable, "-m", "rsdeploy.cli", "rollback", "--help"],
                          cwd=REPO_ROOT, capture_output=True, check=False).returncode == 0


def guide_rollback_script(hs: HostSettings, current: str, previous: str) -> str:
    """The guide's rollback (``docker compose down``; ``git checkout <previous tag>``; ``docker
    compose build``; ``docker compose up -d``) as it applies to a pull-delivery host.

    The Compose files are rsdeploy's, rendered alike for every release but for the app images'
    tags (and APP_VERSION in app.env, which the guide's checkout leaves alone too: .env is not in
    git). So the checkout is here "name the previous tag in compose.yml's image references", and
    the build "have the previous release's images": they are on the host already unless pruned
    (app.keep_releases), else pulled (logged in as the deploy does). The guide's own downtime is
    longer by its build (minutes for the real backend). Checked first, before anything goes
    down: compose.yml names ``current``.
    """
    repositories = [project.app_image(hs, part).rpartition(":")[0]
                    for part in ("backend", "frontend")]
    old = [f"{repository}:{current}" for repository in repositories]
    new = [f"{repository}:{previous}" for repository in repositories]
    retag = " ".join(f"-e {shlex.quote(f's#{_sed_literal(a)}#{b}#g')}" for a, b in zip(old, new))
    pulls = " && ".join(f"docker pull --quiet {shlex.quote(ref)}" for ref in new)
    fetch = (f"docker image inspect {shlex.join(new)} >/dev/null || "
             f"({delivery.with_registry_login(hs, pulls)})")
    return "\n".join([
        "set -eux",
        f"cd {shlex.quote(hs.stack.paths.base_dir)}",
        *(f"grep -qF {shlex.quote(ref)} compose.yml" for ref in old),
        project.compose_command(hs, "down"),
        f"sed -i {retag} compose.yml",
        fetch,
        project.compose_command(hs, "up", "-d"),
    ])


def _sed_literal(text: str) -> str:
    """An image reference as a sed pattern: only its dots are special there."""
    return text.replace(".", r"\.")


def on_host(site: Site, step: str, script: str) -> int:
    """A shell script on the site's host over SSH; its exit code, output logged."""
    proc = site.box.ssh(site.host, script, timeout=COMMAND_TIMEOUT, check=False)
    log_file(step).write_text(proc.stdout + proc.stderr)
    return proc.returncode


# --- measuring -----------------------------------------------------------------------------------


def measure(site: Site, step: str, action: Callable[[], int], rate: float, tail: float) -> Row:
    """Run ``action`` under the steady load (from LEAD seconds before to ``tail`` after)."""
    seconds = COMMAND_TIMEOUT + LEAD + tail + 60
    with load.steady(site.url, site.hs.stack.domain, site.ca_file, rate=rate,
                     max_seconds=seconds, max_requests=int(rate * seconds)) as run:
        time.sleep(LEAD)
        started = run.elapsed()
        code = action()
        returned = run.elapsed()
        time.sleep(tail)
    failed = [s.start for s in run.samples if not s.ok]
    row = Row(step, code, returned - started, run.report(),
              failed_before=sum(1 for start in failed if start < started),
              failed_after=sum(1 for start in failed if start >= returned))
    print(f"{step}: exit {code} in {row.seconds:.0f} s; {row.report.summary()}", flush=True)
    return row


def wait_healthy(site: Site, seconds: float = 300) -> bool:
    """Until ``/health`` answers 200 through nginx (as the load sends it)."""
    target = load.Target.of(site.url, site.hs.stack.domain, site.ca_file)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if target.send("GET", "/health", timeout=5) == 200:
                return True
        except (OSError, http.client.HTTPException):  # not answering yet
            pass
        time.sleep(2)
    return False


# --- the bench -----------------------------------------------------------------------------------


def prepare(versions: list[str], layout: str, hosts: int) -> Site:
    """Fresh hosts with the stack at FIRST: images built and pushed (docker layout),
    bootstrap, deploy."""
    box = sandbox.up(os.environ[sandbox.PREFIX_ENV], hosts)
    web = box.hosts[-1]
    if layout == "docker":
        wanted = images.sandbox_images("pull")
        images.build(wanted, versions)
        sandbox.push_images(box.prefix, wanted, versions)
    for step, args in [("bootstrap", ["bootstrap"]),
                       (f"setup deploy {FIRST}", ["deploy", "--version", FIRST])]:
        if rsdeploy(step, *args):
            sys.exit(f"{step} failed: see {log_file(step)}")
    hs = load_inventory(str(INVENTORY), str(box.paths.secrets))[web.name]
    # The self-signed certificate the deploy made is the one CA the load trusts.
    ca_file = box.paths.root / "site.pem"
    ca_file.write_text(box.ssh(web.name,
                               f"cat {shlex.quote(tls.host_certificate_paths(hs)[0])}").stdout)
    site = Site(box, hs, f"https://127.0.0.1:{web.port(443)}", ca_file)
    if not wait_healthy(site):
        sys.exit(f"the site never answered /health after deploying {FIRST}")
    return site


def release_steps(site: Site, versions: list[str], rate: float, tail: float) -> list[Row]:
    """Steps 1-4 of the module's docstring, measured in turn on the same host."""
    back = ((f"rollback --to {FIRST}", ["rollback", "--to", FIRST]) if has_rollback() else
            (f"deploy {FIRST} (no rollback command yet)", ["deploy", "--version", FIRST]))
    steps = [(f"deploy {NEXT}", ["deploy", "--version", NEXT]), back,
             (f"deploy {BROKEN}", ["deploy", "--version", BROKEN])]
    if BAD_MIGRATION in versions:
        steps.append((f"deploy {BAD_MIGRATION}", ["deploy", "--version", BAD_MIGRATION]))
    rows = [measure(site, step, lambda s=step, a=args: rsdeploy(s, *a), rate, tail)
            for step, args in steps]
    if BAD_MIGRATION not in versions:
        rows.append(Row(f"deploy {BAD_MIGRATION}", note="skipped: not in refapp.VERSIONS yet"))
    return rows


def guide_step(site: Site, rate: float, tail: float) -> Row:
    """Step 5: back at NEXT (deployed, healthy), then the guide's rollback to FIRST."""
    step, setup = f"guide's rollback {NEXT} -> {FIRST}", f"setup deploy {NEXT} again"
    if rsdeploy(setup, "deploy", "--version", NEXT) or not wait_healthy(site):
        return Row(step, note=f"skipped: {NEXT} did not deploy again (see {log_file(setup)})")
    script = guide_rollback_script(site.hs, NEXT, FIRST)
    return measure(site, step, lambda: on_host(site, step, script), rate, tail)


def print_table(rows: list[Row]) -> None:
    print(f"\n{'step':<44}{'exit':>5}{'cmd s':>8}{'failed/total':>15}{'longest run s':>15}"
          f"{'p95 ms':>8}{'failed before':>15}{'failed after':>14}")
    for row in rows:
        if row.report is None:
            print(f"{row.step:<44}  {row.note}")
            continue
        r = row.report
        print(f"{row.step:<44}{row.code:>5}{row.seconds:>8.1f}{f'{r.failed}/{r.total}':>15}"
              f"{r.longest_failure_run:>15.1f}{r.p95 * 1000:>8.0f}{row.failed_before:>15}"
              f"{row.failed_after:>14}{' TRUNCATED' if r.truncated else ''}")
    print("\nfailures by kind and status:")
    for row in rows:
        if row.report and row.report.failed:
            kinds = "; ".join(f"{kind}: " + ", ".join(f"{k} x{n}" for k, n in counts.items())
                              for kind, counts in row.report.failures_by_kind.items())
            print(f"  {row.step}: {kinds}")
    print(f"\ncommand output: {LOGS}/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="requests a second (default 20)")
    parser.add_argument("--tail", type=float, default=15.0,
                        help="seconds of load after each command returns (default 15)")
    parser.add_argument("--layout", choices=("docker", "systemd"), default="docker",
                        help="the sandbox's layout (default docker)")
    parser.add_argument("--split", action="store_true",
                        help="four hosts (db+redis, two app hosts, web+monitoring): the app "
                             "hosts switch one at a time behind nginx")
    parser.add_argument("--keep", action="store_true", help="keep the sandbox host afterwards")
    args = parser.parse_args()
    prefix = (PREFIX if args.layout == "docker" else f"{PREFIX}-sysd") + ("-split" if args.split else "")
    # The sandbox inventory reads these when it is loaded, here and in every rsdeploy run.
    os.environ.update({sandbox.PREFIX_ENV: prefix, "RS_SANDBOX_DELIVERY": "pull",
                       sandbox.LAYOUT_ENV: args.layout,
                       "RS_SANDBOX_TOPOLOGY": "split" if args.split else "default"})
    versions = [v for v in (FIRST, NEXT, BROKEN, BAD_MIGRATION) if v in refapp.VERSIONS]
    try:
        site = prepare(versions, args.layout, 4 if args.split else 1)
        rows = release_steps(site, versions, args.rate, args.tail)
        if args.layout == "docker" and not args.split:  # the guide's is one host's Compose
            rows.append(guide_step(site, args.rate, args.tail))
        print_table(rows)
    finally:
        if not args.keep:
            sandbox.down(prefix)


if __name__ == "__main__":
    main()
