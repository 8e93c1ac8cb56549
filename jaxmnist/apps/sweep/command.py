"""`python -m jaxmnist.sweep`: train every combination of a grid with every seed, then tabulate.

Everything is checked before any run starts: each run's flags as the trainer checks them, and each
workdir that exists (it must hold the same recipe's run, finished or not). Then the runs that have
not finished train here (pool), or become a SLURM job array (--slurm), and the table is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from jaxmnist.apps.sweep import pool, slurm, table
from jaxmnist.apps.sweep.plan import (
    Combination,
    Run,
    Status,
    SweepError,
    parse_grid,
    plan,
    status,
)
from jaxmnist.config import OneLineParser
from jaxmnist.runtime.reporting import log
from jaxmnist.apps.console import run_command, setup_console
from jaxmnist.runtime.stopping import exit_code
from jaxmnist.files import exclusive

DESCRIPTION = """\
Train every combination of --grid's values with every one of --seeds, each as an ordinary
`python -m jaxmnist.train` run (the flags after -- are passed to all of them) in its own workdir
under --root, named by what differs. Runs as many at once as --jobs, each pinned to its share of
the cores, reporting progress; finished runs are skipped when started again, Ctrl-C saves and stops
the runs (the same command resumes them), and it ends with a table of mean +- std per combination,
written to --root as summary.md and summary.csv."""

EXAMPLE = """\
example:
  python -m jaxmnist.sweep --seeds 0 1 2 --grid lr=1e-3,3e-3 --grid dropout=0,0.3 --root runs/sweep \\
      -- --epochs 5 --data-dir ../shared/data/tensorflow_datasets"""


def main(argv: Sequence[str] | None = None, combinations: Sequence[Combination] | None = None,
         command: Sequence[str] | None = None) -> int:
    """Run a sweep from a command line. A sweep definition (scripts/ablation.py) passes its own
    combinations instead of --grid, and the command that runs it again (for --slurm)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own, common = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = _parser().parse_args(own)
    setup_console()
    command = list(command or [sys.executable, "-m", "jaxmnist.sweep"])
    return run_command(lambda: _sweep(args, common, combinations, command))


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m jaxmnist.sweep", description=DESCRIPTION, epilog=EXAMPLE,
                           usage="%(prog)s [--seeds N ...] [--grid NAME=V1,V2 ...] [--root DIR] [--jobs N] "
                                 "[--slurm FILE] [-- TRAIN FLAGS]", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="N", help="the seeds of every combination (default: 0)")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                        help="a training flag and its values; repeat for more flags (all combinations are run)")
    parser.add_argument("--root", default="runs/sweep", help="the folder of the runs' workdirs and the table (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), metavar="N",
                        help="runs at once, the cores shared evenly among them (default: one per core, here %(default)s)")
    parser.add_argument("--slurm", metavar="FILE", help="write a SLURM job-array script to FILE instead of training here")
    parser.add_argument("--array-task", type=int, metavar="N", help="train only run N (what each task of --slurm's script does)")
    return parser


def _sweep(args: argparse.Namespace, common: list[str], combinations: Sequence[Combination] | None,
           command: list[str]) -> int:
    if combinations is not None and args.grid:
        raise SweepError("This sweep defines its own combinations; it takes no --grid.")
    if args.jobs < 1:
        raise SweepError(f"--jobs must be at least 1, got {args.jobs}.")
    root = Path(args.root)
    runs = plan(combinations if combinations is not None else parse_grid(args.grid), args.seeds, root, common)
    if args.slurm:
        again = [*command, "--seeds", *map(str, args.seeds), *(x for g in args.grid for x in ("--grid", g)),
                 "--root", args.root]
        slurm.write(Path(args.slurm), again, common, runs, root)
        log.info("Wrote %s: %d runs as a SLURM job array; submit it with sbatch %s.", args.slurm, len(runs), args.slurm)
        return 0
    if args.array_task is not None:
        return _array_task(runs, args.array_task)

    root.mkdir(parents=True, exist_ok=True)
    with exclusive(root, flag="--root", holder="sweep", lock_file=SWEEP_LOCK):  # two sweeps would share runs and logs
        return _run_here(runs, root, args.jobs)


SWEEP_LOCK = ".jaxmnist-sweep.lock"


def _run_here(runs: list[Run], root: Path, jobs: int) -> int:
    """Train the runs not finished yet on this machine, then write the table of all that have."""
    statuses = {run.name: status(run) for run in runs}  # refuses a foreign folder before any run starts
    todo = [run for run in runs if statuses[run.name] is not Status.FINISHED]
    resumed = sum(statuses[run.name] is Status.STARTED for run in runs)
    log.info("Sweep of %d runs in %s: %d finished already (skipped), %d to resume, %d new%s.", len(runs), root,
             len(runs) - len(todo), resumed, len(todo) - resumed, f"; up to {min(jobs, len(todo))} at a time" if todo else "")
    outcome = pool.run_all(todo, jobs, already_done=len(runs) - len(todo)) if todo else pool.Outcome()

    finished = {run.workdir for run in runs if status(run) is Status.FINISHED}  # each run's own records say
    rows = table.summarize(runs, finished)
    written = table.write(root, rows)
    log.info("\n%s\n(mean +- std over seeds, accuracy in %%; also in %s and %s)", table.markdown(rows).rstrip(), *written)
    if outcome.signal:
        log.info("Stopped: %d of %d runs finished; run the same command again to resume the rest.", len(finished), len(runs))
        return exit_code(outcome.signal)
    if outcome.failed:
        raise SweepError(f"{len(outcome.failed)} of {len(runs)} runs failed (the first: {outcome.failed[0][0].name}: "
                         f"{outcome.failed[0][1]}); the table holds the others.")
    return 0


def _array_task(runs: list[Run], index: int) -> int:
    """One task of the job array: skip its run if finished, else become its trainer (signals and all)."""
    if not 0 <= index < len(runs):
        raise SweepError(f"--array-task {index} is not a run of this sweep (0 to {len(runs) - 1}).")
    run = runs[index]
    if status(run) is Status.FINISHED:
        log.info("Task %d: %s has finished already; nothing to do.", index, run.name)
        return 0
    log.info("Task %d: %s", index, run.name)
    run.workdir.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [*pool.train_command(), *run.flags])
    return 1  # unreachable: execv replaces this process
