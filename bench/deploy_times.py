"""Time the docker layout's rollout on a fresh sandbox host and print the figures.

    .venv/bin/python bench/deploy_times.py [--delivery pull|build] [--keep]

Bootstrap, first deploy (images pulled from the sandbox registry, or the app built on the host
from its tagged source), and a no-op re-run with its changed-operation count (0 is the target). Images are built and pushed first (not timed here:
bench/sandbox_times.py times those). The host is removed afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from rsdeploy import REPO_ROOT
from rsdeploy.apply import changed_operations
from rsdeploy_dev import images, sandbox

PREFIX = "rs-bench"
VERSION = "v1.0.0"


def timed(box, delivery: str, *args: str) -> tuple[float, str]:
    env = dict(os.environ, **{sandbox.PREFIX_ENV: box.prefix}, RS_SANDBOX_DELIVERY=delivery)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "rsdeploy.cli", *args,
                           "-i", str(REPO_ROOT / "inventories" / "sandbox.py"),
                           "--secrets", str(box.paths.secrets)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if proc.returncode:
        sys.exit(f"rsdeploy {args[0]} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return elapsed, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delivery", choices=["pull", "build"], default="pull",
                        help="how the app's images reach the host")
    parser.add_argument("--keep", action="store_true", help="keep the sandbox host afterwards")
    args = parser.parse_args()
    wanted = images.sandbox_images(args.delivery)
    images.build(wanted, [VERSION])
    box = sandbox.up(PREFIX, 1)
    try:
        sandbox.push_images(box.prefix, wanted, [VERSION])
        figures = [("bootstrap (bare host)", *timed(box, args.delivery, "bootstrap"))]
        figures.append(("first deploy", *timed(box, args.delivery, "deploy", "--version", VERSION)))
        figures.append(("no-op re-run", *timed(box, args.delivery, "deploy", "--version", VERSION)))
        print(f"\n{'step':<24}{'seconds':>9}{'changed ops':>13}")
        for name, seconds, output in figures:
            print(f"{name:<24}{seconds:>9.1f}{changed_operations(output):>13}")
    finally:
        if not args.keep:
            sandbox.down(box.prefix)


if __name__ == "__main__":
    main()
