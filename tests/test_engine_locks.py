"""The test groups' shared use of this machine: a sandbox site measured under load overlaps
neither another measured site nor heavy work (an image build or push, hosts bootstrapping),
while heavy works run side by side. (Processes, as the test groups are.)"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time

from rsdeploy_dev import REPO_ROOT

HOLD = """
import sys, time
from pathlib import Path
from rsdeploy_dev import engine
engine.LOCK_DIR = Path({directory!r})  # not the checkout's: the suite's own groups use that one
with engine.{lock}():
    print(f"{{time.monotonic():.3f}} in", flush=True)
    time.sleep({seconds})
    print(f"{{time.monotonic():.3f}} out", flush=True)
"""


def holding(directory, lock: str, seconds: float) -> subprocess.Popen:
    script = HOLD.format(directory=str(directory), lock=lock, seconds=seconds)
    return subprocess.Popen([sys.executable, "-c", script],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)


def wait_until_held(directory, name: str) -> None:
    """Wait until some process holds lock ``name`` (what a waiting measurement holds first)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(directory / f".{name}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            fcntl.flock(handle, fcntl.LOCK_UN)
        time.sleep(0.05)
    raise AssertionError(f"nobody took {name} within 30 s")


def entered(proc: subprocess.Popen) -> float:
    """When the holder got its lock (waits for it)."""
    return float(proc.stdout.readline().split()[0])


def left(proc: subprocess.Popen) -> float:
    """When the holder let its lock go (waits for it)."""
    out, _ = proc.communicate(timeout=60)
    return float(out.split()[0])


def test_measurements_and_heavy_work_take_turns(tmp_path):
    first = holding(tmp_path, "measuring", 1)
    spans = [(entered(first), None)]
    second, work = holding(tmp_path, "measuring", 1), holding(tmp_path, "heavy_work", 0.5)
    spans[0] = (spans[0][0], left(first))
    spans += [(entered(proc), left(proc)) for proc in (second, work)]
    spans.sort()
    for (_, done), (began, _) in zip(spans, spans[1:]):
        assert began >= done, spans  # one at a time, whichever the lock let in first


def test_a_measurement_waits_for_the_heavy_work_in_flight(tmp_path):
    work = holding(tmp_path, "heavy_work", 2)
    entered(work)
    measurement = holding(tmp_path, "measuring", 0)
    work_done, measured = left(work), entered(measurement)
    measurement.communicate(timeout=60)
    assert measured >= work_done


def test_heavy_works_run_side_by_side(tmp_path):
    first, second = holding(tmp_path, "heavy_work", 2), holding(tmp_path, "heavy_work", 2)
    began = [entered(first), entered(second)]
    assert max(began) < min(left(first), left(second)), began  # both in at once


def test_heavy_work_starting_after_a_waiting_measurement_waits_for_it(tmp_path):
    """Heavy works one after another (image builds) do not keep a measurement waiting."""
    first = holding(tmp_path, "heavy_work", 2)
    entered(first)
    measurement = holding(tmp_path, "measuring", 1)
    wait_until_held(tmp_path, "measurement-next")  # the measurement waits for the first by now
    later = holding(tmp_path, "heavy_work", 1)
    measured, later_began = entered(measurement), entered(later)
    for proc in (first, measurement, later):
        proc.communicate(timeout=60)
    assert later_began > measured + 0.9, (measured, later_began)
