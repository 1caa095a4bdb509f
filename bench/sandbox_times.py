"""Measure the sandbox and image build times on this machine.

    .venv/bin/python bench/sandbox_times.py           # warm builds, sandbox up/up/down
    .venv/bin/python bench/sandbox_times.py --cold    # also rebuild every image from scratch

Prints one line per measurement: seconds and what was measured. Uses its own sandbox prefix
(rs-bench) and removes it at the end; images stay (they are the cache).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from rsdeploy_dev import images, sandbox

PREFIX = "rs-bench"


def timed(what: str, action: Callable[[], object]) -> float:
    """Run ``action`` and print how long it took."""
    started = time.monotonic()
    action()
    elapsed = time.monotonic() - started
    print(f"BENCH {elapsed:8.1f} s  {what}", flush=True)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="also time no-cache image builds")
    parser.add_argument("--hosts", type=int, default=2, help="sandbox hosts to bring up")
    args = parser.parse_args()
    names = ["host", *images.INFRA]
    if args.cold:
        for name in names:
            timed(f"cold build {name}", lambda n=name: images.build([n], no_cache=True))
    timed(f"warm build of {len(names)} images (nothing changed)", lambda: images.build(names))
    timed(f"sandbox up --hosts {args.hosts} (new)", lambda: sandbox.up(PREFIX, args.hosts))
    timed(f"sandbox up --hosts {args.hosts} (already up)", lambda: sandbox.up(PREFIX, args.hosts))
    timed("sandbox down", lambda: sandbox.down(PREFIX))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
