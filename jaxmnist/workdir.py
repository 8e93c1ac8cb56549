"""The run directory: create it safely, and decide whether a run found in it may be continued."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from jaxmnist.config import Config

# Settings that change where or how a run is observed, never what it computes (devices: only
# the order in which floats are summed): a resumed run may change them freely. More --epochs is
# safe too with the step decay, which ignores the total (check_resumable makes cosine the exception).
_FREE_TO_CHANGE = {"epochs", "workdir", "data_dir", "idx_dir", "log_every", "eval_batch_size", "loop",
                   "checkpoint_seconds", "restart", "cache_dir", "devices", "recipe"}


_DEFAULTS = Config().to_dict()  # what a run recorded before a knob existed meant


class WorkdirError(Exception):
    """The workdir cannot be used; the message is one sentence for the user."""


def prepare_workdir(workdir: str, restart: bool = False) -> Path:
    """The absolute, writable workdir; with restart, the previous run's outputs are removed first."""
    path = Path(workdir).absolute()
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WorkdirError(f"--workdir {workdir} cannot be created ({error.strerror}).") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir {workdir} is not writable.")
    if restart:
        shutil.rmtree(path / "checkpoints", ignore_errors=True)
        (path / "metrics.jsonl").unlink(missing_ok=True)
    return path


def check_resumable(saved: dict[str, Any], config: Config) -> None:
    """Refuse to continue a run whose recorded config computes something different."""
    current = config.to_dict()
    free = _FREE_TO_CHANGE - ({"epochs"} if config.schedule == "cosine" else set())  # cosine spans the whole run
    differing = [name for name in current if name not in free and saved.get(name, _DEFAULTS[name]) != current[name]]
    if differing:
        settings = ", ".join(f"--{n.replace('_', '-')} {saved.get(n, _DEFAULTS[n])} -> {current[n]}" for n in differing)
        raise WorkdirError(
            f"{config.workdir} holds a run with different settings ({settings}); "
            "use another --workdir, or --restart to discard that run."
        )
