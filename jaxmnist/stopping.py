"""Ctrl-C and SIGTERM as a request that training honours at its next step boundary.

SIGTERM is what SLURM, Kubernetes and preemptible cloud machines send before they kill a job:
it gets the same treatment as Ctrl-C, so either one ends the run with its state saved.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by a signal handler; read by the loop between steps, so no step is cut in half."""

    def __init__(self) -> None:
        self.signal = 0  # the signal's number, 0 while none arrived


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM set the request instead of interrupting the program."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield request
        return

    def handler(signum, _frame):
        request.signal = request.signal or signum

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield request
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop: unwinds like Ctrl-C, to the same one-line exit."""


def terminate_like_ctrl_c() -> None:
    """Make SIGTERM raise Terminated (as SIGINT raises KeyboardInterrupt) until stop_on_signals
    takes over, so a stop during start-up is one line too."""

    def handler(_signum, _frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum
