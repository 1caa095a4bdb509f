"""Run the test suite as groups side by side: each end-to-end module waits on its own sandbox
host most of the time, so several run at once on two cores.

A group is one pytest process: the tests that need no Docker, each directory whose modules
share Docker fixtures (tests/sandbox, tests/refapp), each end-to-end module (a sandbox of its
own), and the other Docker tests. Longest first, ``--jobs`` at a time. Each group's output goes to
``--logs DIR/<group>.log``; a failed group's log is printed whole. The last line sums them up.

    python .ci/pytest_groups.py --jobs 3 --logs /tmp/rsdeploy-tests
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
#: Directories whose modules share Docker fixtures: one group each.
SHARED = ("sandbox", "refapp")
#: The longest groups start first (measured: minutes each).
#: The split chain (five hosts) starts once a first chain is done: beside the systemd chain's
#: upgrade under load it starved that host (p95 4 s, two 500s in one run).
FIRST = ("e2e-test_systemd_layout", "e2e-test_docker_rollout", "e2e-test_docker_releases",
         "e2e-test_split_hosts", "e2e-test_docker_real_app", "e2e-test_docker_certbot",
         "e2e-test_docker_build", "sandbox", "e2e-test_docker_bundle", "refapp")


@dataclass
class Group:
    name: str
    args: list[str]
    code: int | None = None
    seconds: float = 0.0
    counts: tuple[int, int, int] = (0, 0, 0)  # passed, failed (errors too), skipped


def groups() -> list[Group]:
    """Every group, longest first."""
    found = [Group("unit", ["-m", "not sandbox"])]
    found += [Group(name, [f"tests/{name}", "-m", "sandbox"]) for name in SHARED]
    found += [Group(f"e2e-{path.stem}", [str(path.relative_to(ROOT)), "-m", "sandbox"])
              for path in sorted((TESTS / "e2e").glob("test_*.py"))]
    others = [f"--ignore=tests/{name}" for name in (*SHARED, "e2e")]
    found.append(Group("other-docker", ["tests", "-m", "sandbox", *others]))
    order = {name: i for i, name in enumerate(FIRST)}
    return sorted(found, key=lambda g: order.get(g.name, len(order)))


def counts(report: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) from a JUnit XML report."""
    if not report.exists():
        return (0, 1, 0)
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failures = int(suite.get("tests", 0)), int(suite.get("failures", 0))
    errors, skipped = int(suite.get("errors", 0)), int(suite.get("skipped", 0))
    return (total - failures - errors - skipped, failures + errors, skipped)


def run(group: Group, logs: Path, extra: list[str]) -> Group:
    """One group as its own pytest process; exit 5 (nothing selected) counts as passed."""
    report = logs / f"{group.name}.xml"
    started = time.monotonic()
    with open(logs / f"{group.name}.log", "w") as log:
        group.code = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *group.args,
             f"--junitxml={report}", *extra], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        ).returncode
    group.seconds = time.monotonic() - started
    group.counts = counts(report) if group.code != 5 else (0, 0, 0)
    if group.code == 5:
        group.code = 0
    print(f"[{time.strftime('%H:%M:%S')}] {group.name}: exit {group.code} in "
          f"{group.seconds:.0f} s ({group.counts[0]} passed, {group.counts[1]} failed, "
          f"{group.counts[2]} skipped)", flush=True)
    return group


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3, help="groups at a time (default 3)")
    parser.add_argument("--logs", default="/tmp/rsdeploy-tests", help="where each group's log goes")
    args, extra = parser.parse_known_args()
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(lambda group: run(group, logs, extra), groups()))
    for group in done:
        if group.code:
            print(f"\n===== {group.name} (exit {group.code}): {logs / group.name}.log =====")
            print((logs / f"{group.name}.log").read_text(), flush=True)
    passed, failed, skipped = (sum(g.counts[i] for g in done) for i in range(3))
    failed_groups = sum(1 for g in done if g.code)
    print(f"test suite took {time.monotonic() - started:.0f} s ({args.jobs} groups at a time)")
    print(f"{passed} passed, {max(failed, failed_groups)} failed, {skipped} skipped")
    return 1 if failed_groups or failed else 0


if __name__ == "__main__":
    sys.exit(main())
