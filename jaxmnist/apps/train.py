"""`python -m jaxmnist.train`: train the MNIST lab's CNN and keep its best checkpoint.

This is the command line only: flags in, one line per failure out. The run itself is
jaxmnist.runtime.run.train_and_evaluate, imported after the flags are parsed, so that `--help` and a
mistyped flag answer at once instead of after JAX has loaded.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Sequence

from jaxmnist.config import parse_config
from jaxmnist.errors import UserError
from jaxmnist.runtime.reporting import log
from jaxmnist.apps.console import ProgressBar, setup_console
from jaxmnist.runtime.stopping import stop_on_signals

DESCRIPTION = """\
Train the MNIST lab's two-conv CNN (Adam, step decay, random rotation) in JAX,
test it after every epoch and keep the best checkpoint. Stopped or killed, the
same command resumes it exactly."""


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, train, and turn every expected failure into one line on stderr and a non-zero exit."""
    config = parse_config(argv, prog="python -m jaxmnist.train", description=DESCRIPTION)
    setup_console()
    # From here on Ctrl-C, SIGTERM and SIGHUP only set a flag, honoured between steps of the work:
    # an exception raised inside an import (JAX's, TensorFlow's) aborts the interpreter instead.
    with stop_on_signals() as stop:
        try:
            from jaxmnist.apps.dashboard import Dashboard  # noqa: PLC0415 - JAX loads here, after the flags
            from jaxmnist.runtime import parallel  # noqa: PLC0415
            from jaxmnist.runtime.run import train_and_evaluate

            parallel.configure_jax(config)  # before any device is touched
            parallel.start_backend(config.join_timeout, config.peer_timeout)
            stop.listen()  # again: jax.distributed installs its own SIGTERM handler
            if not parallel.is_main_process():  # one console for the whole run: process 0's
                log.setLevel("ERROR")
            # On an interactive terminal only: piped or redirected, the output is exactly the lab's lines.
            show_bar = config.progress and sys.stderr.isatty() and parallel.is_main_process()
            with Dashboard(config.workdir) as dashboard, ProgressBar(show_bar) as bar:  # each fed by the run
                train_and_evaluate(config, stop=stop, on_record=dashboard.write, on_progress=bar)
        except UserError as error:
            return _fail(error.exit_code, str(error), at_once=error.leaves_threads_behind)
        except OSError as error:  # a workdir file made unwritable mid-run, or a full disk
            return _fail(1, f"Cannot write {error.filename or 'a file'} ({error.strerror or error}); what was saved "
                            "before it is intact: run the same command again once it can be written.")
        except Exception as error:  # a bug: its traceback; or a collective whose peer is gone
            lost = _peer_lost(error)
            if lost:
                return _fail(1, lost, at_once=True)  # jax.distributed's shutdown would wait for the lost peer
            traceback.print_exc()
            return _fail(1, f"{type(error).__name__}: {error} (the traceback above)")
    return 0


LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")  # Gloo's words


def _peer_lost(error: Exception) -> str | None:
    """One sentence for a step's collective that failed because another process of a multi-process
    run is gone (Gloo: "Connection reset by peer"); None for anything else."""
    jax = sys.modules.get("jax")
    if jax is None or jax.process_count() == 1 or not any(words in str(error) for words in LOST_PEER):
        return None
    return (f"Process {jax.process_index()} of {jax.process_count()}: a collective failed because another process of "
            f"the run is gone ({str(error).splitlines()[0][:160]}); what was saved is intact: start all "
            f"{jax.process_count()} processes again to resume.")


def _fail(code: int, sentence: str, at_once: bool = False) -> int:
    """Say why the run ended. A multi-process run's other processes end too: at start-up they have
    agreed on this sentence; later, jax.distributed ends them when this one has gone."""
    log.error("%s", sentence)
    if at_once:  # a failed save: Orbax's threads would keep the process alive
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
