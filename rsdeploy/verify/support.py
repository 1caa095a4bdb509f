"""Helpers the verify suite's modules share."""

from __future__ import annotations

import time


def settle(probe, done, seconds: float = 90, every: float = 3):
    """Call ``probe`` until ``done(result)`` or ``seconds`` pass (a fresh rollout may still be
    starting); return the last result."""
    deadline = time.monotonic() + seconds
    while True:
        result = probe()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(every)
