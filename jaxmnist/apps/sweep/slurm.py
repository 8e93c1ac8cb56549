"""A SLURM job-array script for a sweep: one run per array task, in the sweep's own workdirs.

Each task runs the sweep's own command with --array-task N, which applies the same rule as the
local sweep (a finished run is skipped) and then becomes that run's `python -m jaxmnist.train`,
so SLURM's SIGTERM before a time limit reaches the trainer itself, which saves. Resubmitting the
script resumes what a time limit stopped; the sweep's command without --slurm then prints and
writes the table, since every run has finished.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Sequence

from jaxmnist.apps.sweep.plan import Run
from jaxmnist.files import replace_file


def script(command: Sequence[str], train_flags: Sequence[str], runs: Sequence[Run], root: Path) -> str:
    """The sbatch script's text; command is the sweep's without --slurm, train_flags what follows its --."""
    again = shlex.join([*command, "--", *train_flags]) if train_flags else shlex.join(command)
    tasks = "\n".join(f"#   task {i}: {run.name}" for i, run in enumerate(runs))
    return f"""#!/bin/bash
# A jaxmnist sweep as a SLURM job array, one training run per task. Submit it with
#   sbatch {{this file}}      (partition, time limit, --gres=gpu:1 ...: add #SBATCH lines or sbatch flags)
# Each task skips a finished run, and resumes a stopped one. When all are done, this prints the table:
#   {again}
{tasks}
#SBATCH --job-name=jaxmnist-sweep
#SBATCH --array=0-{len(runs) - 1}
#SBATCH --output={shlex.quote(str(root.absolute()))}/slurm-%A_%a.out
#SBATCH --signal=B:TERM@120
set -euo pipefail
: "${{SLURM_ARRAY_TASK_ID:?is not set: submit this script with sbatch, or set it to a task number}}"
cd {shlex.quote(os.getcwd())}
exec {shlex.join(command)} --array-task "$SLURM_ARRAY_TASK_ID"{" -- " + shlex.join(train_flags) if train_flags else ""}
"""


def write(path: Path, command: Sequence[str], train_flags: Sequence[str], runs: Sequence[Run], root: Path) -> None:
    """Write the script (whole or not at all) and the root its tasks write their output into."""
    root.mkdir(parents=True, exist_ok=True)  # SLURM cannot open --output in a missing folder
    replace_file(path, script(command, train_flags, runs, root), mode=0o755)
