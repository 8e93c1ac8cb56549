"""The ablation behind --recipe improved, as a sweep: the lab's recipe, each proposed change alone, the preset.

    python scripts/ablation.py --seeds 0 1 2 --root runs/ablation -- --data-dir ../shared/data/tensorflow_datasets

Takes every flag of `python -m jaxmnist.sweep` except --grid (it defines its own combinations
below); the flags after -- go to every run (add --validation 5000 to choose and compare on
validation). Each combination with each seed is an ordinary run in <root>/<settings>_seed=<N>,
several at once, skipped when finished; the table of mean +- std per combination ends up in
<root>/summary.md and summary.csv. --slurm FILE writes the same ablation as a job array.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jaxmnist.apps.sweep.command import main

COMBINATIONS = [  # each on top of the lab's defaults and the flags after --
    {},  # the lab's recipe, 5 epochs
    {"translate": "2"},
    {"dropout": "0.3"},
    {"schedule": "cosine"},
    {"label-smoothing": "0.1"},
    {"lr": "3e-3", "warmup-epochs": "1"},  # a higher peak rate, after one warmup epoch
    {"optimizer": "adamw", "weight-decay": "0.05"},
    {"epochs": "15", "translate": "2", "dropout": "0.3", "schedule": "cosine", "label-smoothing": "0.1"},
    {"recipe": "improved"},  # 15 epochs
]

if __name__ == "__main__":
    sys.exit(main(combinations=COMBINATIONS, command=[sys.executable, str(Path(__file__).resolve())]))
