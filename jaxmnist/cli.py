"""The `jaxmnist` command that `pip install` puts on the PATH: `jaxmnist COMMAND [FLAGS]`.

Each command is the `python -m jaxmnist.COMMAND` of the same name with the same flags; this file
only picks the module. It imports only the chosen one, so `jaxmnist train --help` answers before
JAX loads, as `python -m jaxmnist.train --help` does.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from typing import Sequence

from jaxmnist.runtime.stopping import STOP_SIGNALS, exit_code, stop_on_signals

COMMANDS = {
    "train": "train the lab's CNN (or --model resnet), test it after every epoch, keep the best; resumes",
    "evaluate": "restore a checkpoint and analyse its errors on the test set",
    "predict": "read the digit in your own pictures",
    "export": "write the model as a jax.export artifact (and ONNX) to run without jaxmnist",
    "serve": "a local page where you draw a digit and watch the model read it",
    "plot": "a run's figures: curves, samples, structure, confusion matrix, misclassified digits",
    "summary": "a model's layers: output shapes, parameters, multiply-adds (--model lab|resnet)",
    "sweep": "run every combination of seeds and flags as ordinary runs, then a table of mean +- std",
}

# Commands that handle Ctrl-C themselves and answer --help before JAX loads: run() imports no JAX for them.
LIGHT = ("train", "sweep")

USAGE = ("usage: jaxmnist {" + ",".join(COMMANDS) + "} [FLAGS]   (jaxmnist COMMAND --help: its flags; "
         "jaxmnist --version; python -m jaxmnist is the same command)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `jaxmnist COMMAND FLAGS...` as `python -m jaxmnist.COMMAND FLAGS...`; return its exit status."""
    as_program, argv = argv is None, list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        print(f"jaxmnist {version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        stream = sys.stdout if argv else sys.stderr
        print(USAGE, file=stream)
        print("\n".join(f"  {name:9s} {what}" for name, what in COMMANDS.items()), file=stream)
        return 0 if argv else 2
    command, flags = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"jaxmnist: unknown command {command!r}; choose one of {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    return run(command, flags, as_program)


def version() -> str:
    """The installed distribution's version (pyproject.toml's), without importing JAX."""
    from importlib import metadata

    try:
        return metadata.version("jaxmnist")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def run(command: str, argv: Sequence[str] | None = None, as_program: bool | None = None) -> int:
    """Run a command's main (jaxmnist/apps/<command>.py, or apps/sweep/command.py) on argv, by
    default the process's own. Its module (and JAX, for the commands that need it) is imported
    here, so Ctrl-C while they load ends as it does later: "Stopped." and status 130, not a
    traceback, a crash or a command that goes on."""
    module = "jaxmnist.apps.sweep.command" if command == "sweep" else f"jaxmnist.apps.{command}"
    # An interrupt inside an extension's initialisation (JAX's) is not a KeyboardInterrupt: it breaks
    # the import, or is lost. So Ctrl-C and SIGTERM wait until the loading is done, then stop it.
    with stop_on_signals() as stop:
        main_of_command = importlib.import_module(module).main
        if command not in LIGHT:
            importlib.import_module("jax")  # the work would load it first thing
    if stop.signal:
        print("Stopped.", file=sys.stderr)
        return exit_code(stop.signal)
    status = main_of_command(argv)
    # As a program (argv from the command line): the work is done and said, and the process ends
    # right after this; a stop while JAX and Orbax shut down (half a second) would only turn a
    # finished run into a silent 143. Called from Python, the caller's handlers are left alone.
    if (argv is None if as_program is None else as_program) and threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if status in {exit_code(signum) for signum in STOP_SIGNALS} and command not in LIGHT:
            # Stopped mid-work: a stop inside XLA's compiler leaves it unfit to be torn down (a
            # segmentation fault after "Stopped."), and nothing is left to finish: end here.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
