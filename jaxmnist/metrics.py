"""metrics.jsonl, a run's records: what the driver writes and every other part reads (the plots,
sweeps, the Python API, TensorBoard). No JAX here, so reading it starts none."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from jaxmnist.errors import UserError
from jaxmnist.files import append_line, replace_file

log = logging.getLogger("jaxmnist")


class MetricsError(UserError):
    """metrics.jsonl cannot be read; the message is one sentence."""


class MetricsLog:
    """metrics.jsonl, one JSON object a line: kind "train" at log points, kind "epoch" per epoch."""

    def __init__(self, path: Path, enabled: bool = True, on_record: Callable[[dict[str, Any]], None] | None = None):
        self.path = path
        self.enabled = enabled  # False in every process but the first of a multi-process run
        self.on_record = on_record  # a watcher of each record written: TensorBoard, a notebook's curves

    def truncate_after(self, step: int) -> None:
        """Drop records past step: a resumed run replays them, and must not write them twice. The
        file is replaced whole (a kill never leaves it empty), and only when a record goes."""
        if not self.enabled:
            return
        text = "".join(json.dumps(record) + "\n" for record in self.records() if record["step"] <= step)
        if self.path.exists() and self.path.read_bytes() != text.encode():  # a record past step, or a torn line
            replace_file(self.path, text)

    def warn_of_missing_epochs(self, last_epoch: int) -> None:
        """One line if epochs 1..last_epoch (all trained) lack their record: the file was cut short or
        edited, so the curves would miss them without a word. Training is unaffected."""
        recorded = {record["epoch"] for record in self.records("epoch")} if self.enabled else set(range(1, last_epoch + 1))
        missing = [epoch for epoch in range(1, last_epoch + 1) if epoch not in recorded]
        if missing:
            which = f"epoch {missing[0]}" if len(missing) == 1 else f"{len(missing)} epochs ({missing[0]} to {missing[-1]})"
            log.warning("%s has no record of %s, which the checkpoints show were trained: it was cut short or edited. "
                        "Training goes on; the curves will lack them.", self.path, which)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            append_line(self.path, json.dumps(record) + "\n")
            if self.on_record is not None:
                self.on_record(record)

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every record (of one kind), oldest first. A torn last line (a kill in mid-write) is
        dropped with a one-line notice; damage anywhere else is an error."""
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().decode("utf-8", errors="replace").splitlines()  # junk is damage, not a crash
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                if not _is_record(record):
                    raise ValueError("not a record")
                records.append(record)
            except ValueError:
                if number < len(lines):
                    raise MetricsError(f"{self.path} is damaged at line {number}; fix or delete that line.") from None
                log.warning("%s ends in a torn line (a run killed while writing it); it is ignored.", self.path)
        return [r for r in records if kind is None or r["kind"] == kind]


# The numbers each kind of record holds: one edited by hand into a string, or deleted, is damage
# (the curves and TensorBoard would fail on it), not a value to draw.
NUMBERS = {"train": ("loss",), "epoch": ("test_accuracy",)}  # always there
NUMBERS_OR_NULL = ("test_loss", "correct", "test_images", "train_loss", "train_accuracy", "lr", "val_accuracy", "val_loss",
                   "images_per_second", "train_seconds", "epoch_seconds")  # where a record has them


def _is_record(record: Any) -> bool:
    """Its kind, its epoch and step as whole numbers ("step": "6" is damage), and its kind's numbers."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    return (isinstance(record, dict) and isinstance(record.get("kind"), str)
            and all(type(record.get(key)) is int for key in ("epoch", "step"))
            and all(number(record.get(key)) for key in NUMBERS.get(record["kind"], ()))
            and all(record.get(key) is None or number(record[key]) for key in NUMBERS_OR_NULL))
