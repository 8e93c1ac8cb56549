"""The sweep's result: per combination, the mean and spread over seeds of its runs' accuracies.

Read from each run's own metrics.jsonl, nothing else: the final epoch's test (and validation)
accuracy, and those of its best epoch, the one a run's checkpoint keeps (ranking.rank: the highest
validation accuracy when the run has a validation set, else the highest test accuracy; the earlier
on a tie).
Written as summary.md and summary.csv into the sweep's root.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import statistics
from itertools import groupby
from pathlib import Path
from typing import Any, Sequence

from jaxmnist.apps.sweep.plan import Run, epoch_records
from jaxmnist.ranking import rank
from jaxmnist.files import replace_file

# (column, the record's key, final or best epoch); validation columns only where a run has them.
METRICS = (("final test", "test_accuracy", "final"), ("best test", "test_accuracy", "best"),
           ("final val", "val_accuracy", "final"), ("best val", "val_accuracy", "best"))


@dataclasses.dataclass
class Row:
    """One combination: its runs' figures, seed by seed (finished runs only)."""

    combination: str
    settings: dict[str, str]
    seeds: list[int]
    planned: int  # how many seeds the sweep asked for
    values: dict[str, list[float]]  # column -> one value per finished seed
    best_epochs: list[int]
    seconds: list[float]  # each run's epochs, start to end (no start-up)


def best_epoch(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch a run's checkpoint keeps as best, by the checkpoints' own ranking rule."""
    return max(records, key=rank)


def summarize(runs: Sequence[Run], finished: set[Path]) -> list[Row]:
    """A row per combination, in the sweep's order, from the runs whose workdir is in finished."""
    rows = []
    for combination, group in groupby(runs, key=lambda run: run.combination):
        group = list(group)
        done = [(run, epoch_records(run)) for run in group if run.workdir in finished]
        values: dict[str, list[float]] = {column: [] for column, _, _ in METRICS}
        for _, records in done:
            chosen = {"final": records[-1], "best": best_epoch(records)}
            for column, key, which in METRICS:
                if key in chosen[which]:
                    values[column].append(chosen[which][key])
        rows.append(Row(combination, group[0].settings, [run.seed for run, _ in done], len(group), values,
                        [best_epoch(records)["epoch"] for _, records in done],
                        [sum(r.get("epoch_seconds", 0.0) for r in records) for _, records in done]))
    return rows


def mean_and_std(values: list[float]) -> tuple[float | None, float | None]:
    """The mean, and the sample standard deviation (None with fewer than two values: no spread is known)."""
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def _columns(rows: list[Row]) -> list[str]:
    return [column for column, _, _ in METRICS if any(row.values[column] for row in rows)]


def markdown(rows: list[Row]) -> str:
    """The table in Markdown: accuracies in %, mean +- std over the seeds."""
    columns = _columns(rows)
    header = ["combination", "seeds", *columns, "best epoch per seed", "time of a run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.combination, f"{len(row.seeds)} of {row.planned}"]
        for column in columns:
            mean, std = mean_and_std(row.values[column])
            cells.append("-" if mean is None else f"{mean:.2f}" + (f" +- {std:.2f}" if std is not None else ""))
        seconds = mean_and_std(row.seconds)[0]
        cells += [", ".join(map(str, row.best_epochs)) or "-", "-" if seconds is None else f"{seconds:.0f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[Row]) -> str:
    """The table as CSV: one column per setting, then mean and std of each figure (std empty below two seeds)."""
    names = list(dict.fromkeys(name for row in rows for name in row.settings))
    columns = _columns(rows)
    header = [*names, "seeds", "planned"] + [f"{c.replace(' ', '_')}_{s}" for c in columns for s in ("mean", "std")]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*header, "best_epochs", "seconds_mean"])
    for row in rows:
        figures = [x for column in columns for x in mean_and_std(row.values[column])]
        writer.writerow([*(row.settings.get(n, "") for n in names), " ".join(map(str, row.seeds)), row.planned,
                         *("" if x is None else f"{x:.4f}" for x in figures), " ".join(map(str, row.best_epochs)),
                         "" if not row.seconds else f"{statistics.mean(row.seconds):.1f}"])
    return out.getvalue()


def write(root: Path, rows: list[Row]) -> list[Path]:
    """summary.md and summary.csv into root, each replaced whole (a kill never leaves half a table)."""
    written = []
    for name, text in (("summary.md", markdown(rows)), ("summary.csv", csv_text(rows))):
        replace_file(root / name, text)
        written.append(root / name)
    return written
