"""Ctrl-C, SIGTERM (SLURM, Kubernetes and preemptible machines send it before a kill) and SIGHUP
(a closed terminal) as a request training honours at its next chunk, every process at the same
step, its state saved. SIGQUIT (Ctrl-\\) keeps Python's default: the way out when a save hangs.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from jaxmnist.errors import UserError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequest:
    """Set by a signal handler; read between chunks of steps, so no step is cut in half."""

    def __init__(self) -> None:
        self.signal = 0  # the first signal's number, 0 while none arrived

    def listen(self) -> None:
        """(Re)install the handlers: jax.distributed.initialize installs its own for SIGTERM."""
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.signal = self.signal or signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT, SIGTERM and SIGHUP set the request instead of ending the program."""
    request = StopRequest()
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    request.listen()
    try:
        yield request
    finally:
        if threading.current_thread() is threading.main_thread():
            for signum, old in previous.items():
                signal.signal(signum, old)


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


class TrainingStopped(UserError):
    """The run stopped early; the message says why and what is kept."""


class Interrupted(TrainingStopped):
    """A stop signal: the state was saved and the run can be resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = exit_code(signum)


NOT_STARTED = "Stopped before training started; run the same command to start again."


def stop_if_asked(stop: StopRequest) -> None:
    """Between the steps of starting up: end now, in one line, if a stop was asked for."""
    if stop.signal:
        raise Interrupted(NOT_STARTED, stop.signal)
