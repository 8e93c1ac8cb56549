"""The ablation behind --recipe improved: the lab's recipe, each proposed change alone, the preset.

    python scripts/ablation.py --data-dir ../shared/data/tensorflow_datasets --seeds 0 1 2 --out runs/ablation

Trains every variant with every seed (python -m jaxmnist.train, one workdir each, reused if it is
already complete), then prints a Markdown table: final test accuracy as mean and spread over the
seeds, and the mean wall time of a run. Runs one after another: on a shared CPU, parallel runs
would only slow each other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> flags on top of the lab's defaults
    "lab recipe (5 epochs)": [],
    "+ translate 2 px": ["--translate", "2"],
    "+ dropout 0.3": ["--dropout", "0.3"],
    "+ cosine schedule": ["--schedule", "cosine"],
    "+ label smoothing 0.1": ["--label-smoothing", "0.1"],
    "improved preset (15 epochs)": ["--recipe", "improved"],
}


def final_accuracy(workdir: Path) -> float | None:
    path = workdir / "metrics.jsonl"
    epochs = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    expected = json.loads((workdir / "config.json").read_text())["config"]["epochs"] if epochs else None
    return epochs[-1]["test_accuracy"] if epochs and epochs[-1]["epoch"] == expected else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--idx-dir")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--out", default="runs/ablation")
    args = parser.parse_args()
    source = ["--data-dir", args.data_dir] if args.data_dir else ["--idx-dir", args.idx_dir]
    rows = []
    for name, flags in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        accuracies, seconds = [], []
        for seed in args.seeds:
            workdir = Path(args.out) / f"{'-'.join(flags) or 'lab'}-seed{seed}".replace("--", "")
            timing = workdir / "wall_seconds.txt"
            if final_accuracy(workdir) is None:
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "jaxmnist.train", *source, *flags, "--seed", str(seed),
                                "--workdir", str(workdir), "--restart"], check=True, cwd=ROOT, capture_output=True)
                timing.write_text(f"{time.perf_counter() - start:.1f}\n")
            accuracies.append(final_accuracy(workdir))
            seconds.append(float(timing.read_text()))
            print(f"{name}, seed {seed}: {accuracies[-1]:.2f}% in {seconds[-1]:.0f} s", flush=True)
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        rows.append(f"| {name} | {' '.join(map(str, flags)) or '(defaults)'} | {statistics.mean(accuracies):.2f}% "
                    f"+- {spread:.2f} | {', '.join(f'{a:.2f}' for a in accuracies)} | {statistics.mean(seconds):.0f} s |")
    print("\n| variant | flags | test accuracy, mean +- std | per seed | wall time |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
