"""Time a rollout on fresh sandbox hosts and print the figures.

    .venv/bin/python bench/deploy_times.py [--layout docker|systemd] [--delivery pull|build]
                                           [--hosts N] [--keep]

Bootstrap, first deploy (docker: images pulled from the sandbox registry, or the app built on
the host from its tagged source; systemd: Debian's services installed and the release built on
the host), and a no-op re-run of each with its changed-operation count (0 is the target).
Images are built and pushed first (not timed here: bench/sandbox_times.py times those). With
``--hosts N`` (4 or more) the stack is split over N hosts (RS_SANDBOX_TOPOLOGY=split: db+redis,
N-2 app hosts, web+monitoring); the memory each sandbox host uses after the no-op runs is printed
too (how many hosts this machine can simulate). The hosts are removed afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from rsdeploy_dev import REPO_ROOT
from rsdeploy.apply import changed_operations
from rsdeploy_dev import images, sandbox

PREFIX = "rs-bench"
VERSION = "v1.0.0"


def timed(box, delivery: str, layout: str, *args: str) -> tuple[float, str]:
    env = dict(os.environ, **{sandbox.PREFIX_ENV: box.prefix, sandbox.LAYOUT_ENV: layout},
               RS_SANDBOX_DELIVERY=delivery,
               RS_SANDBOX_TOPOLOGY="split" if len(box.hosts) >= 4 else "default")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "rsdeploy.cli", *args,
                           "-i", str(REPO_ROOT / "inventories" / "sandbox.py"),
                           "--secrets", str(box.paths.secrets)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if proc.returncode:
        sys.exit(f"rsdeploy {args[0]} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return elapsed, proc.stdout + proc.stderr


def memory_mib(box, host: str) -> float:
    """The resident memory of every process on a sandbox host (the containers it runs
    included: their processes are in its PID namespace's view). Shared pages count once per
    process, so this is an upper bound; Docker here reports no cgroup memory figures."""
    out = box.ssh(host, "ps -e -o rss= | awk '{s += $1} END {print s}'").stdout
    return int(out.strip() or 0) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delivery", choices=["pull", "build"], default="pull",
                        help="how the app's images reach the host")
    parser.add_argument("--layout", choices=("docker", "systemd"), default="docker",
                        help="the sandbox's layout (default docker)")
    parser.add_argument("--hosts", type=int, default=1,
                        help="sandbox hosts: 1, or 4 and more for the split topology")
    parser.add_argument("--keep", action="store_true", help="keep the sandbox hosts afterwards")
    args = parser.parse_args()
    if args.hosts not in (1,) and args.hosts < 4:
        parser.error("--hosts: 1, or 4 and more")
    box = sandbox.up(PREFIX if args.layout == "docker" else f"{PREFIX}-sysd", args.hosts)
    try:
        if args.layout == "docker":
            wanted = images.sandbox_images(args.delivery)
            images.build(wanted, [VERSION])
            sandbox.push_images(box.prefix, wanted, [VERSION])
        steps = [("bootstrap (bare host)", ["bootstrap"]),
                 ("first deploy", ["deploy", "--version", VERSION]),
                 ("no-op bootstrap", ["bootstrap"]),
                 ("no-op deploy", ["deploy", "--version", VERSION])]
        figures = [(name, *timed(box, args.delivery, args.layout, *argv)) for name, argv in steps]
        print(f"\n{'step':<24}{'seconds':>9}{'changed ops':>13}")
        for name, seconds, output in figures:
            print(f"{name:<24}{seconds:>9.1f}{changed_operations(output):>13}")
        print(f"\n{len(box.hosts)} host(s); resident memory per host (all its processes, after the runs):")
        for host in box.hosts:
            print(f"  {host.name}: {memory_mib(box, host.name):.0f} MiB")
    finally:
        if not args.keep:
            sandbox.down(box.prefix)


if __name__ == "__main__":
    main()
