"""What a run tells the world: the lab's console lines, metrics.jsonl and config.json."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from jaxmnist.errors import UserError
from jaxmnist.runtime.dashboard import Dashboard
from jaxmnist.runtime.workdir import FORMAT, RUN_MARKER
from jaxmnist.files import append_line, replace_file

log = logging.getLogger("jaxmnist")


def quiet_libraries() -> None:
    """Orbax and JAX report routine decisions as absl warnings (a metadata file not found, a
    checkpoint kept), and a failed save as tracebacks from its threads; every failure that matters
    reaches the user as an exception, turned into our own one sentence."""
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    logging.getLogger("tensorboardX").setLevel(logging.ERROR)  # "NaN found": the run says so itself
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # Orbax's tasks after a failed save
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.FATAL)


def write_config(workdir: Path, identity: dict[str, Any], device: str) -> None:
    """config.json: the run's marker, every setting, its data, the library versions and the device.

    identity is what each checkpoint holds too ({"config", "data", "devices"}), so a lost
    config.json costs nothing. Written atomically: a kill never leaves half a file.
    """
    versions = {name: package_version(name) for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")}
    record = RUN_MARKER | {"format": FORMAT} | identity | {"versions": versions, "device": device}
    replace_file(workdir / "config.json", json.dumps(record, indent=2) + "\n")


def package_version(package: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class MetricsLog:
    """metrics.jsonl, one JSON object a line: kind "train" at log points, kind "epoch" per epoch."""

    def __init__(self, path: Path, enabled: bool = True, dashboard: Dashboard | None = None,
                 on_record: Callable[[dict[str, Any]], None] | None = None):
        self.path = path
        self.enabled = enabled  # False in every process but the first of a multi-process run
        self.dashboard = dashboard  # TensorBoard events made from the same records
        self.on_record = on_record  # a caller's live view of them (a notebook's curves)

    def truncate_after(self, step: int) -> None:
        """Drop records past step: a resumed run replays them, and must not write them twice. The
        file is replaced as a whole (a kill never leaves it empty), and only when a record goes."""
        if not self.enabled:
            return
        kept = [record for record in self.records() if record["step"] <= step]
        text = "".join(json.dumps(record) + "\n" for record in kept)
        if self.path.exists() and self.path.read_bytes() != text.encode():  # a record past step, or a torn line
            replace_file(self.path, text)
        if self.dashboard is not None:
            self.dashboard.rebuild(kept)

    def warn_of_missing_epochs(self, last_epoch: int) -> None:
        """One line if epochs 1..last_epoch (all trained) lack their record: the file was cut short
        or edited, so curves and TensorBoard would miss them without a word. Training is unaffected."""
        if not self.enabled:
            return
        recorded = {record["epoch"] for record in self.records("epoch")}
        missing = [epoch for epoch in range(1, last_epoch + 1) if epoch not in recorded]
        if missing:
            which = f"epoch {missing[0]}" if len(missing) == 1 else f"{len(missing)} epochs ({missing[0]} to {missing[-1]})"
            log.warning("%s has no record of %s, which the checkpoints show were trained: it was cut short or edited. "
                        "Training goes on; the curves will lack them.", self.path, which)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_line(self.path, json.dumps(record) + "\n")
        if self.dashboard is not None:
            self.dashboard.write(record)
        if self.on_record is not None:
            self.on_record(record)

    def close(self) -> None:
        if self.dashboard is not None:
            self.dashboard.close()

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


def _is_record(record: Any) -> bool:
    """What every line of metrics.jsonl holds: its kind, and its epoch and step as whole numbers
    (a line edited by hand into "step": "6" is damage, not a record to compare with numbers)."""
    return (isinstance(record, dict) and isinstance(record.get("kind"), str)
            and all(type(record.get(key)) is int for key in ("epoch", "step")))


class MetricsError(UserError):
    """metrics.jsonl cannot be read; the message is one sentence."""


def train_line(epoch: int, index: int, batch_size: int, num_images: int, num_steps: int, loss: float) -> str:
    """The lab's progress line, e.g. 'Train Epoch: 1 [6400/60000 (11%)]\\tLoss: 0.329942'."""
    return f"Train Epoch: {epoch} [{index * batch_size}/{num_images} ({100.0 * index / num_steps:.0f}%)]\tLoss: {loss:.6f}"


def epoch_line(record: dict[str, Any]) -> str:
    """The lab's accuracy line, followed by what the lab did not print; the validation set's
    line under it where the run holds one out."""
    train_accuracy = "unknown" if record["train_accuracy"] is None else f"{record['train_accuracy']:.2f}%"
    line = (
        f"\nTest Accuracy: {record['correct']}/{record['test_images']} ({record['test_accuracy']:.2f}%)"
        f"  test loss {record['test_loss']:.4f} | train loss {record['train_loss']:.4f}, accuracy {train_accuracy}"
        f" | lr {record['lr']:.1e} | {record['epoch_seconds']:.1f} s | {record['images_per_second']:.0f} images/s\n"
    )
    if "val_accuracy" in record:
        line += (f"Validation Accuracy: {record['val_correct']}/{record['val_images']} ({record['val_accuracy']:.2f}%)"
                 f"  validation loss {record['val_loss']:.4f}\n")
    return line


class Progress:
    """A bar per epoch with speed and time left, below the lab's lines, on an interactive terminal
    only: piped or redirected, the output is exactly the lab's lines."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: tqdm | None = None

    def start(self, epoch: int, num_images: int, done: int) -> None:
        """A new bar for epoch, done of num_images already trained (a resumed epoch)."""
        self.close()
        if self.enabled:
            self._bar = tqdm(total=num_images, initial=done, desc=f"Epoch {epoch}", unit="img",
                             leave=False, file=sys.stderr, dynamic_ncols=True)

    def advance(self, images: int) -> None:
        if self._bar is not None:
            self._bar.update(images)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()  # also when the run stops early: no half-drawn bar is left behind
