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
import time
from pathlib import Path

from child_runs import run_or_exit, train_command  # scripts/, on sys.path when run as a script
from jaxmnist.config import parse_config
from jaxmnist.workdir import WorkdirError, check_resumable

VARIANTS = {  # name -> flags on top of the lab's defaults
    "lab recipe (5 epochs)": [],
    "+ translate 2 px": ["--translate", "2"],
    "+ dropout 0.3": ["--dropout", "0.3"],
    "+ cosine schedule": ["--schedule", "cosine"],
    "+ label smoothing 0.1": ["--label-smoothing", "0.1"],
    "+ peak lr 3e-3 after 1 warmup epoch": ["--lr", "3e-3", "--warmup-epochs", "1"],
    "+ weight decay 0.05": ["--weight-decay", "0.05"],
    "the four proposals, 15 epochs": ["--epochs", "15", "--translate", "2", "--dropout", "0.3", "--schedule", "cosine",
                                      "--label-smoothing", "0.1"],
    "improved preset (15 epochs)": ["--recipe", "improved"],
}


def final_accuracy(workdir: Path, flags: list[str]) -> float | None:
    """The last epoch's test accuracy of a finished run made with these flags, else None (so a
    workdir left by an older preset or an interrupted run is trained again). "Made with these
    flags" is what a resume accepts: the same knobs, wherever and under whichever preset name."""
    config_path, metrics_path = workdir / "config.json", workdir / "metrics.jsonl"
    if not (config_path.exists() and metrics_path.exists()):
        return None
    expected = parse_config(flags, prog="ablation", description="")
    try:
        check_resumable(json.loads(config_path.read_text())["config"], expected)
    except WorkdirError:
        return None
    epochs = [r for r in map(json.loads, metrics_path.read_text().splitlines()) if r["kind"] == "epoch"]
    return epochs[-1]["test_accuracy"] if epochs and epochs[-1]["epoch"] == expected.epochs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--idx-dir")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), metavar="VARIANT",
                        help="variant names to run, as in the table (default: all)")
    parser.add_argument("--out", default="runs/ablation")
    args = parser.parse_args()
    source = ["--data-dir", args.data_dir] if args.data_dir else ["--idx-dir", args.idx_dir] if args.idx_dir else []
    rows = []
    for name, flags in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        accuracies, seconds = [], []
        for seed in args.seeds:
            workdir = Path(args.out) / f"{'-'.join(flags) or 'lab'}-seed{seed}".replace("--", "")
            timing = workdir / "wall_seconds.txt"
            run_flags = [*flags, "--seed", str(seed)]
            accuracy = final_accuracy(workdir, run_flags)
            if accuracy is None:
                start = time.perf_counter()
                run_or_exit(train_command(*source, *run_flags, "--workdir", str(workdir), "--restart"),
                            f"{name}, seed {seed}", keep_output=workdir.with_name(workdir.name + ".log"))
                timing.write_text(f"{time.perf_counter() - start:.1f}\n")
                accuracy = final_accuracy(workdir, run_flags)
            accuracies.append(accuracy)
            seconds.append(float(timing.read_text()))
            print(f"{name}, seed {seed}: {accuracies[-1]:.2f}% in {seconds[-1]:.0f} s", flush=True)
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        shown_flags = "`" + " ".join(flags) + "`" if flags else "(defaults)"
        rows.append(f"| {name} | {shown_flags} | {statistics.mean(accuracies):.2f}% "
                    f"+- {spread:.2f} | {', '.join(f'{a:.2f}' for a in accuracies)} | {statistics.mean(seconds):.0f} s |")
    print("\n| variant | flags | test accuracy, mean +- std | per seed | wall time |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
