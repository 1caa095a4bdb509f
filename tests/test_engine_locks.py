"""The test groups' shared use of this machine's Docker engine: a sandbox host measured under
load and an image build or push never overlap, and measurements do not wait for each other.
(Processes, as the test groups are.)"""

from __future__ import annotations

import subprocess
import sys

from rsdeploy import REPO_ROOT

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


def entered(proc: subprocess.Popen) -> float:
    """When the holder got its lock (waits for it)."""
    return float(proc.stdout.readline().split()[0])


def left(proc: subprocess.Popen) -> float:
    """When the holder let its lock go (waits for it)."""
    out, _ = proc.communicate(timeout=60)
    return float(out.split()[0])


def test_engine_work_waits_for_every_measurement_and_measurements_share(tmp_path):
    first = holding(tmp_path, "measuring", 2)
    in1 = entered(first)
    second = holding(tmp_path, "measuring", 2)
    in2 = entered(second)
    work = holding(tmp_path, "engine_work", 0)
    out1, out2, in_work = left(first), left(second), entered(work)
    work.communicate(timeout=60)
    assert in2 < out1 and in1 < out2  # the measurements overlapped
    assert in_work >= max(out1, out2)  # the build or push waited for both


def test_a_measurement_waits_for_the_engine_work_in_flight(tmp_path):
    work = holding(tmp_path, "engine_work", 2)
    entered(work)
    measurement = holding(tmp_path, "measuring", 0)
    work_done, measured = left(work), entered(measurement)
    measurement.communicate(timeout=60)
    assert measured >= work_done
