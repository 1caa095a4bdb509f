"""How far along a pyinfra run is: each operation's line says its step number of all and the time
since the run began; a host that took a while over one gets a line saying how long.

pyinfra prints each operation and each host's result; it shows no count, and on a terminal-less
CI log a long step (an image build, a pip install) is silent until it ends. The deploy files
call :func:`show_steps` once::

    --> Starting operation 42 of 118 (2 min 5 s in): Build the release on the host | Build ...
        [app1] took 3 min 12 s
        [app1] Success

Example: ``progress.show_steps()`` at the top of a deploy file.
"""

from __future__ import annotations

import logging
import sys
import time

from pyinfra import logger as pyinfra_logger
from pyinfra import state as current_state
from pyinfra.api.state import BaseStateCallback

#: A host's operation taking at least this many seconds gets a "took" line.
SLOW_SECONDS = 10


def duration(seconds: float) -> str:
    """Example: ``duration(125)`` -> ``"2 min 5 s"``"""
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


class StepProgress(BaseStateCallback, logging.Filter):
    """pyinfra callbacks counting the steps, and a filter of pyinfra's log that puts the count
    into its "Starting operation" lines; the slow hosts' durations go to stderr."""

    def __init__(self, out=sys.stderr):
        logging.Filter.__init__(self)
        self.out, self.began, self.host_started, self.step = out, None, {}, ""

    def operation_start(self, state, op_hash) -> None:
        order = state.get_op_order()
        now = time.monotonic()
        self.began = self.began or now
        self.step = f"{order.index(op_hash) + 1} of {len(order)} ({duration(now - self.began)} in)"

    def filter(self, record: logging.LogRecord) -> bool:
        if self.step and isinstance(record.msg, str) and "Starting operation:" in record.msg:
            record.msg = record.msg.replace("Starting operation:", f"Starting operation {self.step}:", 1)
        return True

    def operation_host_start(self, state, host, op_hash) -> None:
        self.host_started[(host.name, op_hash)] = time.monotonic()

    def _took(self, host, op_hash) -> None:
        started = self.host_started.pop((host.name, op_hash), None)
        took = time.monotonic() - started if started is not None else 0
        if took >= SLOW_SECONDS:
            print(f"    [{host.name}] took {duration(took)}", file=self.out, flush=True)

    def operation_host_success(self, state, host, op_hash, retry_count: int = 0) -> None:
        self._took(host, op_hash)

    def operation_host_error(self, state, host, op_hash, retry_count: int = 0, max_retries: int = 0) -> None:
        self._took(host, op_hash)


def show_steps() -> None:
    """Have this pyinfra run report its progress (once, however many hosts load the file)."""
    if not any(isinstance(h, StepProgress) for h in current_state.callback_handlers):
        reporter = StepProgress()
        current_state.add_callback_handler(reporter)
        pyinfra_logger.addFilter(reporter)
