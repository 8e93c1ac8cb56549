"""TensorBoard event files beside metrics.jsonl, so `tensorboard --logdir runs` shows every run.

A watcher of the run's records (train_and_evaluate's on_record), written through tensorboardX (no
TensorFlow needed). metrics.jsonl stays the one truth: at a start's first record the events are
made again from that file, which a resumed run has just cut back to its checkpoint, so no epoch is
shown twice.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from jaxmnist.files import naming
from jaxmnist.metrics import MetricsLog

# val_* only in runs with a validation set; train_accuracy is null in an epoch resumed from a
# checkpoint older than its counter: each is drawn where the record has it.
EPOCH_SCALARS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_accuracy", "train_loss", "lr",
                 "images_per_second")


class Dashboard:
    """<workdir>/tensorboard: train/loss at every log point; epoch/<name> at every epoch's end."""

    def __init__(self, workdir: str | Path):
        self.folder, self.metrics = Path(workdir) / "tensorboard", Path(workdir) / "metrics.jsonl"
        self._writer = None
        self._failed = False  # after a failed write, nothing more

    def write(self, record: dict[str, Any]) -> None:
        if self._failed:
            return
        try:
            with naming(self.folder):  # a full disk: tensorboardX's own error names no file
                if self._writer is None:  # a start's first record: every record metrics.jsonl keeps, this one last
                    from tensorboardX import SummaryWriter

                    shutil.rmtree(self.folder, ignore_errors=True)
                    self._writer = SummaryWriter(str(self.folder), flush_secs=10)
                    for kept in MetricsLog(self.metrics).records():
                        self._add(kept)
                else:
                    self._add(record)
        except OSError:
            self._abandon()
            raise

    def _add(self, record: dict[str, Any]) -> None:
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
        self._writer, self._failed = None, True

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

    def __enter__(self) -> "Dashboard":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
