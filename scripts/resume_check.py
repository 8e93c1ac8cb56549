"""Kill a real training run with SIGKILL several times, resume it, and compare with a straight run.

    python scripts/resume_check.py --idx-dir ../shared/data/mnist-idx --epochs 2 --kill-after 9 17 8

Runs `python -m jaxmnist.train` once uninterrupted, then once more in another workdir that is
killed after each of the given numbers of seconds (restarting it each time) and finally run to the
end. Prints both runs' epoch metrics and whether metrics and final parameters are bit-identical.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from child_runs import ROOT, run_or_exit, train_command  # scripts/, on sys.path when run as a script
from jaxmnist.checkpoint import Checkpoints
from jaxmnist.reporting import quiet_libraries
TIMINGS = ("train_seconds", "epoch_seconds", "images_per_second")


def results(workdir: Path):
    """Epoch metrics without wall-clock fields, and the latest parameters."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    records = [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]
    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    return records, checkpoints.restore_params(checkpoints.latest_step())[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx-dir", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--kill-after", type=float, nargs="+", default=[9, 17, 8],
                        help="seconds after each (re)start at which it is killed")
    parser.add_argument("--checkpoint-seconds", type=float, default=5.0)
    args = parser.parse_args()
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        def command(workdir):
            return train_command("--idx-dir", args.idx_dir, "--epochs", str(args.epochs),
                                 "--checkpoint-seconds", str(args.checkpoint_seconds), "--workdir", str(workdir))

        straight, killed = Path(tmp) / "straight", Path(tmp) / "killed"
        run_or_exit(command(straight), "the uninterrupted run")
        for seconds in args.kill_after:
            process = subprocess.Popen(command(killed), cwd=ROOT, stdout=subprocess.PIPE, text=True)
            time.sleep(seconds)
            process.kill()
            out = process.communicate()[0]
            resumed = [line for line in out.splitlines() if line.startswith("Resuming")]
            print(f"killed after {seconds} s ({resumed[0] if resumed else 'fresh start'}; "
                  f"{sum(line.startswith('Train Epoch') for line in out.splitlines())} log lines)")
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
