"""TensorBoard event files beside metrics.jsonl, so `tensorboard --logdir runs` shows every run.

The events are made from the same records as metrics.jsonl, through tensorboardX (a small
writer that needs no TensorFlow). metrics.jsonl stays the one truth: when a resumed run drops the
records past its checkpoint, the events are rebuilt from the records kept, so no epoch is shown
twice.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any, Iterable

from jaxmnist.files import naming

# val_* only in runs with a validation set; train_accuracy is null in an epoch resumed from a
# checkpoint older than its counter: each is drawn where the record has it.
EPOCH_SCALARS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_accuracy", "train_loss", "lr",
                 "images_per_second")


class Dashboard:
    """<workdir>/tensorboard: train/loss at every log point; epoch/<name> at every epoch's end."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._writer = None
        self._rebuilt = False  # nothing is written before rebuild

    def rebuild(self, records: Iterable[dict[str, Any]]) -> None:
        """Start the event files again from these records (the ones metrics.jsonl keeps)."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        self._rebuilt = True
        for record in records:
            self.write(record)

    def write(self, record: dict[str, Any]) -> None:
        if not self._rebuilt:
            return
        try:
            with naming(self.folder):  # a full disk: tensorboardX's own error names no file
                self._write(record)
        except OSError:
            self._abandon()
            raise

    def _write(self, record: dict[str, Any]) -> None:
        if self._writer is None:  # at the first record: a run that fails before one leaves no event file
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.folder), flush_secs=10)
        if record["kind"] == "train":
            self._writer.add_scalar("train/loss", record["loss"], record["step"])
        else:
            for name in EPOCH_SCALARS:
                if record.get(name) is not None:
                    self._writer.add_scalar(f"epoch/{name}", record[name], record["step"])
            self._writer.flush()  # an epoch is worth seeing at once

    def _abandon(self) -> None:
        """After a failed write, tensorboardX's thread and its exit hook would write again and print
        a traceback each: its thread is stopped and its writer marked closed (its own flag)."""
        if self._writer is not None:
            for file_writer in self._writer.all_writers.values():
                events = file_writer.event_writer
                with contextlib.suppress(Exception):
                    events._worker.stop()
                events._closed = True
        self._writer, self._rebuilt = None, False

    def close(self) -> None:
        """The last events to disk; one that cannot be written (a full disk) is a warning, never the
        run's failure: metrics.jsonl, the truth, has every record."""
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as error:
                self._abandon()
                logging.getLogger("jaxmnist").warning("%s could not be completed (%s); metrics.jsonl has every record.",
                                                      self.folder, error.strerror or error)
            self._writer = None
