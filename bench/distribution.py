"""Time what a user's install costs: building the wheel and sdist of this checkout, and
installing the wheel into a clean virtualenv outside the checkout; print min/median/max.

    .venv/bin/python bench/distribution.py [--runs 3]

Installs take their dependencies from the package index through pip's cache, as a user's
second install would (the first run warms it and is not counted). The walkthrough's wall time
(pip install to a verified site) and the runner image's size are printed by
tests/e2e/test_walkthrough.py (run it with -s).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from rsdeploy_dev.distribution import build_distributions, install


def timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def report(name: str, seconds: list[float]) -> None:
    print(f"{name:34} min {min(seconds):6.1f} s  median {statistics.median(seconds):6.1f} s  "
          f"max {max(seconds):6.1f} s  ({len(seconds)} runs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="counted runs of each (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rsdeploy-bench-dist-") as tmp:
        root = Path(tmp)
        wheel, _ = build_distributions(root / "warm")
        install(root / "warm-venv", str(wheel))  # pip's cache holds the dependencies after this
        builds = [timed(lambda i=i: build_distributions(root / f"dist{i}")) for i in range(args.runs)]
        installs = [timed(lambda i=i: install(root / f"venv{i}", str(wheel)))
                    for i in range(args.runs)]
        size = sum(p.stat().st_size for p in (root / "venv0").rglob("*") if p.is_file())
        print(f"wheel {wheel.name}: {wheel.stat().st_size / 1024:.0f} KiB; "
              f"a virtualenv with it: {size / 2**20:.0f} MiB")
    report("build sdist + wheel (python -m build)", builds)
    report("install the wheel into a clean venv", installs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
