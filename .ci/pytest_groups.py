"""Run the test suite as groups side by side: each end-to-end module waits on its own sandbox
host most of the time, so several run at once on two cores.

A group is one pytest process: the tests that need no Docker, each directory whose modules
share Docker fixtures (tests/sandbox, tests/refapp), each end-to-end module (a sandbox of its
own), and the other Docker tests; and one command, ``images``: every offline image built and
pushed to the machine's registry once, before the groups that use them start (the systemd
chains and the unit tests need none, and run beside it). Longest first, ``--jobs`` at a time (a
group in :data:`AFTER` waits for its predecessors). Each group's output goes to
``--logs DIR/<group>.log``; a failed group's log is printed whole. The last line sums them up.
The machine locks' waits and holds go to ``DIR/locks.log`` (``rsdeploy_dev.engine``).

    python .ci/pytest_groups.py --jobs 3 --logs /tmp/rsdeploy-tests
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
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
FIRST = ("images", "e2e-test_systemd_layout", "unit", "e2e-test_docker_releases",
         "e2e-test_docker_rollout", "e2e-test_split_hosts", "e2e-test_systemd_split",
         "e2e-test_docker_real_app", "e2e-test_walkthrough", "e2e-test_docker_build",
         "e2e-test_docker_certbot", "sandbox", "refapp")
#: The groups that need no image of this machine's (they start beside the image build).
NO_IMAGES = ("unit", "e2e-test_systemd_layout", "e2e-test_systemd_split")
#: Groups that start only once others are done (besides the image build, see :func:`after`):
#: the systemd split chain's app hosts get the systemd chain's builds of each release (the
#: release cache). (A chain's hosts bootstrapping no longer starve another's measured site:
#: tests/e2e's ``Site.heavy`` waits for measurements, and they for it.)
AFTER = {"e2e-test_systemd_split": ("e2e-test_systemd_layout",)}
#: The command of the ``images`` group: build, then push, every image (each skipped when done).
IMAGES = [sys.executable, "-c", "import sys; from rsdeploy.cli import main; "
          "sys.exit(main(['images', 'build']) or main(['images', 'push']))"]


def after(name: str) -> tuple[str, ...]:
    """The groups ``name`` waits for: the image build (unless it needs none), and AFTER's."""
    return (*(() if name in (*NO_IMAGES, "images") else ("images",)), *AFTER.get(name, ()))


@dataclass
class Group:
    name: str
    args: list[str]  # pytest's arguments (or, with ``command``, unused)
    command: list[str] | None = None
    code: int | None = None
    seconds: float = 0.0
    counts: tuple[int, int, int] = (0, 0, 0)  # passed, failed (errors too), skipped


def groups() -> list[Group]:
    """Every group, longest first."""
    found = [Group("images", [], IMAGES), Group("unit", ["-m", "not sandbox"])]
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
    command = group.command or [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                *group.args, f"--junitxml={report}", *extra]
    with open(logs / f"{group.name}.log", "w") as log:
        group.code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "RS_TEST_GROUP": group.name,
                                         "RS_LOCK_LOG": str(logs / "locks.log")}).returncode
    group.seconds = time.monotonic() - started
    if group.command:  # no tests of its own: it counts as one that passed or failed
        group.counts = (0, 0, 0) if group.code == 0 else (0, 1, 0)
    else:
        group.counts = counts(report) if group.code != 5 else (0, 0, 0)
    if group.code == 5:
        group.code = 0
    print(f"[{time.strftime('%H:%M:%S')}] {group.name}: exit {group.code} in "
          f"{group.seconds:.0f} s ({group.counts[0]} passed, {group.counts[1]} failed, "
          f"{group.counts[2]} skipped)", flush=True)
    return group


class Queue:
    """The groups in order; each worker takes the first one whose predecessors (:func:`after`)
    are done (or not in this run)."""

    def __init__(self, pending: list[Group]):
        self.pending, self.done = list(pending), []
        self.names = {g.name for g in pending}
        self.changed = threading.Condition()

    def _runnable(self, group: Group) -> bool:
        done = {g.name for g in self.done}
        return all(needed not in self.names or needed in done for needed in after(group.name))

    def _next(self) -> Group | None:
        with self.changed:
            while self.pending:
                for group in self.pending:
                    if self._runnable(group):
                        self.pending.remove(group)
                        return group
                self.changed.wait()
            return None

    def work(self, run_group) -> None:
        """Run groups until none is left."""
        while (group := self._next()) is not None:
            try:
                run_group(group)
            finally:
                with self.changed:
                    self.done.append(group)
                    self.changed.notify_all()


def lock_waits(path: Path) -> str:
    """Seconds each group waited for the machine's locks (its lines in ``path``), longest
    first. Example: ``"lock waits (s): e2e-test_split_hosts 412, unit 0"``"""
    waited: dict[str, float] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        fields = line.split()
        waited[fields[1]] = waited.get(fields[1], 0.0) + float(fields[fields.index("waited") + 1])
    ranked = sorted(waited.items(), key=lambda item: -item[1])
    return "lock waits (s): " + (", ".join(f"{name} {s:.0f}" for name, s in ranked) or "none")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3, help="groups at a time (default 3)")
    parser.add_argument("--logs", default="/tmp/rsdeploy-tests", help="where each group's log goes")
    args, extra = parser.parse_known_args()
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "locks.log").unlink(missing_ok=True)
    started = time.monotonic()
    queue = Queue(groups())
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        workers = [pool.submit(queue.work, lambda group: run(group, logs, extra))
                   for _ in range(args.jobs)]
    for worker in workers:
        worker.result()  # a worker's own error, if one failed
    done = queue.done
    for group in done:
        if group.code:
            print(f"\n===== {group.name} (exit {group.code}): {logs / group.name}.log =====")
            print((logs / f"{group.name}.log").read_text(), flush=True)
    passed, failed, skipped = (sum(g.counts[i] for g in done) for i in range(3))
    failed_groups = sum(1 for g in done if g.code)
    print(lock_waits(logs / "locks.log"))
    print(f"test suite took {time.monotonic() - started:.0f} s ({args.jobs} groups at a time)")
    print(f"{passed} passed, {max(failed, failed_groups)} failed, {skipped} skipped")
    return 1 if failed_groups or failed else 0


if __name__ == "__main__":
    sys.exit(main())
