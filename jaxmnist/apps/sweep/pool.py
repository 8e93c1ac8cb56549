"""Run a sweep's training runs on this machine: several at once, each pinned to its share of the cores.

Each run is its own `python -m jaxmnist.train` process, detached from the terminal (setsid), so that a signal
reaches it only through the sweep: Ctrl-C, SIGTERM or SIGHUP to the sweep is passed on to every run
(each saves and stops, as it would alone), and no new run starts; if the sweep's process dies
(even by SIGKILL), each run gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and saves and stops. A run's output goes to
<root>/<run>.log, appended to on every start, beside its workdir (a workdir holds only what the run
writes).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence, TextIO

from jaxmnist.apps.sweep.plan import Run, epoch_records
from jaxmnist.runtime.reporting import log
from jaxmnist.runtime.stopping import STOP_SIGNALS, exit_code, stop_on_signals

REPORT_SECONDS = 30.0  # a progress line at least this often while runs train
POLL_SECONDS = 0.2
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                    "TF_NUM_INTEROP_THREADS")


def train_command() -> list[str]:
    """`python -m jaxmnist.train` with this interpreter."""
    return [sys.executable, "-m", "jaxmnist.train"]


def core_shares(cores: Sequence[int], jobs: int) -> list[list[int]]:
    """The cores of each of `jobs` simultaneous runs: disjoint and as even as the count allows;
    with more jobs than cores, runs share a core each in turn."""
    if jobs <= len(cores):
        return [list(cores[i * len(cores) // jobs:(i + 1) * len(cores) // jobs]) for i in range(jobs)]
    return [[cores[i % len(cores)]] for i in range(jobs)]


@dataclasses.dataclass
class _Running:
    run: Run
    process: subprocess.Popen
    cores: list[int]
    started: float
    output: TextIO
    epochs_before: int  # epochs a resumed run had trained before it started here
    log_offset: int  # where this start's output begins in <run>.log


@dataclasses.dataclass
class Outcome:
    """What became of the runs this call started."""

    finished: list[Run] = dataclasses.field(default_factory=list)
    stopped: list[Run] = dataclasses.field(default_factory=list)
    failed: list[tuple[Run, str]] = dataclasses.field(default_factory=list)  # and each one's reason
    signal: int = 0  # the stop signal the sweep received, 0 if none


def run_all(runs: Sequence[Run], jobs: int, already_done: int = 0) -> Outcome:
    """Train runs, `jobs` at a time, until all have ended or a stop signal has ended those running."""
    shares = core_shares(sorted(os.sched_getaffinity(0)), min(jobs, len(runs)))
    waiting, running, outcome = list(runs), [], Outcome()
    timings: list[tuple[float, int]] = []  # (seconds, epochs) of each run that ended here
    last_report = time.monotonic()
    with stop_on_signals() as stop:
        while waiting or running:
            if stop.signal and not outcome.signal:  # pass it on, once; each run saves and stops
                outcome.signal = stop.signal
                log.info("Stopping: %d running run(s) save and stop; %d not started.", len(running), len(waiting))
                for entry in running:
                    entry.process.send_signal(stop.signal)
            while waiting and shares and not stop.signal:
                running.append(_start(waiting.pop(0), shares.pop(0)))
            for entry in [e for e in running if e.process.poll() is not None]:
                running.remove(entry)
                shares.append(entry.cores)
                timings.append((time.monotonic() - entry.started, _epochs_done(entry.run) - entry.epochs_before))
                _record_end(entry, outcome)
                _report(already_done + len(outcome.finished), running, waiting, timings, jobs)
                last_report = time.monotonic()
            if time.monotonic() - last_report > REPORT_SECONDS:
                _report(already_done + len(outcome.finished), running, waiting, timings, jobs)
                last_report = time.monotonic()
            if stop.signal and not running:
                break
            time.sleep(POLL_SECONDS)
    return outcome


def _start(run: Run, cores: list[int]) -> _Running:
    """Start one run pinned to cores, with every thread pool it may make sized to them."""
    run.workdir.parent.mkdir(parents=True, exist_ok=True)
    output = (run.workdir.parent / f"{run.name}.log").open("a")
    command = [*train_command(), *run.flags]
    output.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} on cores {','.join(map(str, cores))}: {' '.join(command)}\n")
    output.flush()
    env = os.environ | {name: str(len(cores)) for name in THREAD_VARIABLES}
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # runs sharing a GPU must not each take 75% of it
    started_at = output.tell()  # this start's lines: its failure's reason is among them, never an older line

    def in_the_child() -> None:  # before any thread exists
        os.sched_setaffinity(0, cores)
        _end_with_parent()

    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                               preexec_fn=in_the_child)
    log.info("Started %s on core(s) %s.", run.name, ",".join(map(str, cores)))
    return _Running(run, process, cores, time.monotonic(), output, _epochs_done(run), started_at)


def _end_with_parent() -> None:
    """Linux: SIGTERM to this child when the sweep's process ends, however it ends (even a SIGKILL),
    so the run saves and stops instead of training on alone and holding its workdir's lock."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _record_end(entry: _Running, outcome: Outcome) -> None:
    entry.output.close()
    code, run = entry.process.returncode, entry.run
    if code == 0:
        outcome.finished.append(run)
        last = epoch_records(run)[-1]
        log.info("Finished %s: %.2f%% test accuracy at epoch %d.", run.name, last["test_accuracy"], last["epoch"])
    elif code in {exit_code(signum) for signum in STOP_SIGNALS}:
        outcome.stopped.append(run)
        log.info("Stopped %s; its state is saved.", run.name)
    else:
        reason = _last_line(run.workdir.parent / f"{run.name}.log", entry.log_offset) or f"exit status {code}"
        outcome.failed.append((run, reason))
        log.error("%s failed: %s (all it printed: %s.log)", run.name, reason, run.workdir.parent / run.name)


def _last_line(path: Path, offset: int) -> str:
    """The trainer's reason for failing: the last line it printed in this start (from offset on)."""
    with path.open("rb") as log_file:
        log_file.seek(offset)
        lines = [line for line in log_file.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _report(done: int, running: list[_Running], waiting: list[Run], timings: list[tuple[float, int]],
            jobs: int) -> None:
    """One progress line: runs done, running (and how far), left, and the time left: the epochs
    still to train at the seconds per epoch of the runs that ended, `jobs` at a time."""
    epochs_timed = sum(epochs for _, epochs in timings)
    if epochs_timed:
        seconds_per_epoch = sum(seconds for seconds, _ in timings) / epochs_timed
        epochs_left = (sum(run.config.epochs for run in waiting)
                       + sum(max(e.run.config.epochs - _epochs_done(e.run), 0) for e in running))
        at_once = max(min(jobs, len(waiting) + len(running)), 1)
        # Nothing left to train is not nothing left to do: the last runs still evaluate, save and end.
        eta = (f"about {_duration(seconds_per_epoch * epochs_left / at_once)} left" if epochs_left else
               "the last runs are finishing")
    else:
        eta = "time left known after the first run"
    where = ", ".join(f"{e.run.name} ({_epochs_done(e.run)} of {e.run.config.epochs} epochs done)" for e in running)
    log.info("[%s] %d done, %d running, %d left; %s%s", time.strftime("%H:%M:%S"), done, len(running), len(waiting),
             eta, f" | running: {where}" if where else "")


def _epochs_done(run: Run) -> int:
    """How many epochs a run has finished, from the last whole line of its metrics.jsonl (the run
    may be writing the next); 0 before the first."""
    try:
        lines = (run.workdir / "metrics.jsonl").read_text(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(line)
            if record.get("kind", "epoch") == "epoch":  # a "train" record is of the epoch still training
                return int(record["epoch"])
    return 0


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
