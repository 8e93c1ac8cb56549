"""The console of every command: results on stdout, problems on stderr, one line per failure."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Callable

from tqdm import tqdm

from jaxmnist.errors import UserError
from jaxmnist.runtime.reporting import log, quiet_libraries
from jaxmnist.runtime.stopping import exit_code


class _ConsoleHandler(logging.StreamHandler):
    """Once the reader of stdout has gone (`... | head`), drop the remaining lines quietly instead
    of printing a traceback for each; the work itself (metrics, checkpoints, files) carries on."""

    def emit(self, record: logging.LogRecord) -> None:
        with tqdm.external_write_mode(file=self.stream):  # a progress bar steps aside for the line
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            # Python's own advice: point stdout at devnull, so later lines and the exit flush pass.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        super().handleError(record)


class ProgressBar:
    """A bar per epoch (speed, time left) under the lab's lines, when enabled: a run's on_progress.
    The epoch's first call draws it (part done in a resumed epoch), its last images take it away."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self._bar = enabled, None

    def __call__(self, epoch: int, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
        elif self.enabled:
            self._bar = tqdm(total=total, initial=done, desc=f"Epoch {epoch}", unit="img", leave=False, file=sys.stderr,
                             dynamic_ncols=True)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()  # also when the run stops mid-epoch: no half-drawn bar is left


def setup_console() -> None:
    """Plain lines as the lab printed them: results on stdout, warnings and errors on stderr (the
    Unix convention, so `> log.txt` keeps the results and still shows what went wrong)."""
    results = _ConsoleHandler(sys.stdout)
    results.addFilter(lambda record: record.levelno < logging.WARNING)
    problems = _ConsoleHandler(sys.stderr)
    problems.setLevel(logging.WARNING)
    for handler in (results, problems):
        handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers = [results, problems]  # idempotent: a second main() in one process must not print twice
    log.setLevel(logging.INFO)
    log.propagate = False
    quiet_libraries()


def run_command(work: Callable[[], int | None]) -> int:
    """A command's work with its expected failures as one line on stderr: a UserError's sentence
    and its exit status, or a stop (Ctrl-C, SIGTERM, SIGHUP) as "Stopped." and 128 + the signal.
    Returns the exit status."""
    received = []

    def interrupt(signum, _frame):
        received.append(signum)
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()  # signals reach it alone
    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)} \
        if in_main_thread else {}
    try:
        return work() or 0
    except UserError as error:
        log.error("%s", error)
        return error.exit_code
    except KeyboardInterrupt:
        log.error("Stopped.")
        return exit_code(received[0] if received else signal.SIGINT)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
