"""Stop a real training run several times, resume it, and compare with a straight run.

    python scripts/resume_check.py --idx-dir ../shared/data/mnist-idx --epochs 2 --kill-after 9 17 8
    python scripts/resume_check.py --idx-dir ../shared/data/mnist-idx --epochs 1 \
        --stop SIGINT "Train Epoch: 1 [57600/60000" 0.05      # Ctrl-C 50 ms after that line

Runs `python -m jaxmnist.train` once uninterrupted, then once more in another workdir that is
stopped at each given moment (restarting it each time) and finally run to the end: killed with
SIGKILL after a number of seconds (--kill-after), or sent a signal a delay after a line of its
output (--stop). Prints both runs' epoch metrics and whether metrics and final parameters are
bit-identical.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from child_runs import (  # scripts/, on sys.path when run as a script
    ROOT,
    run_or_exit,
    train_command,
)

from jaxmnist.runtime.checkpoint import Checkpoints
from jaxmnist.runtime.reporting import quiet_libraries

TIMINGS = ("train_seconds", "epoch_seconds", "images_per_second")


def results(workdir: Path):
    """Epoch metrics without wall-clock fields, and the latest parameters."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    records = [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]
    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    return records, checkpoints.restore_variables(checkpoints.latest_step())[0]["params"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx-dir", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--kill-after", type=float, nargs="+", default=[],
                        help="seconds after each (re)start at which it is killed with SIGKILL")
    parser.add_argument("--stop", nargs=3, action="append", default=[], metavar=("SIGNAL", "LINE", "DELAY"),
                        help="send SIGNAL (SIGINT, SIGTERM, SIGKILL) DELAY seconds after the first output line that "
                             "starts with LINE; repeatable")
    parser.add_argument("--checkpoint-seconds", type=float, default=5.0)
    args = parser.parse_args()
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        def command(workdir):
            return train_command("--idx-dir", args.idx_dir, "--epochs", str(args.epochs),
                                 "--checkpoint-seconds", str(args.checkpoint_seconds), "--workdir", str(workdir))

        straight, killed = Path(tmp) / "straight", Path(tmp) / "killed"
        run_or_exit(command(straight), "the uninterrupted run")
        stops = [("SIGKILL", None, seconds) for seconds in args.kill_after]
        stops += [(name, line, float(delay)) for name, line, delay in args.stop]
        for name, line, delay in stops:
            process = subprocess.Popen(command(killed), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            seen = []
            if line is not None:  # read up to the line, then wait the delay
                for output in process.stdout:
                    seen.append(output)
                    if output.startswith(line):
                        break
            time.sleep(delay)
            process.send_signal(getattr(signal, name))
            out, err = process.communicate()
            lines = "".join(seen).splitlines() + out.splitlines()
            resumed = [l for l in lines if l.startswith("Resuming")]
            said = err.strip().splitlines()[-1] if err.strip() else f"exit status {process.returncode}"
            where = f"{delay} s after '{line}'" if line else f"after {delay} s"
            print(f"{name} {where}: {resumed[0] if resumed else 'fresh start'}; exit {process.returncode}: {said}")
        final = run_or_exit(command(killed), "the final resumed run")
        status = [line for line in final.stdout.splitlines() if line.startswith(("Resuming", "This run already"))]
        print("final run:", status[0] if status else "started afresh")
        (straight_records, straight_params), (killed_records, killed_params) = results(straight), results(killed)
        for name, records in (("uninterrupted", straight_records), ("killed+resumed", killed_records)):
            for r in (r for r in records if r["kind"] == "epoch"):
                print(f"{name:15s} epoch {r['epoch']}: {r['correct']}/10000 ({r['test_accuracy']:.2f}%), "
                      f"test loss {r['test_loss']!r}, train loss {r['train_loss']!r}")
        same_params = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(straight_params), jax.tree.leaves(killed_params)))
        print(f"metrics identical: {straight_records == killed_records}; parameters bit-identical: {same_params}")


if __name__ == "__main__":
    main()
