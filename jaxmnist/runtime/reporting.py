"""What a run tells the world besides metrics.jsonl (jaxmnist/metrics.py): the lab's console lines,
and config.json."""

from __future__ import annotations

import contextlib
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

from jaxmnist.files import replace_file
from jaxmnist.runtime.workdir import FORMAT, RUN_MARKER

log = logging.getLogger("jaxmnist")


def quiet_libraries() -> None:
    """Orbax and JAX report routine decisions as absl warnings (a metadata file not found, a
    checkpoint kept), and a failed save as tracebacks from its threads: every failure that matters
    reaches the user as an exception, turned into our one sentence."""
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    logging.getLogger("tensorboardX").setLevel(logging.ERROR)  # "NaN found": the run says so itself
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # Orbax's tasks after a failed save
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.FATAL)


def write_config(workdir: Path, identity: dict[str, Any], device: str) -> None:
    """config.json, atomically: the run's marker, its identity (which every checkpoint holds too, so
    a lost config.json costs nothing), the library versions and the device."""
    versions = {name: package_version(name) for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")}
    record = RUN_MARKER | {"format": FORMAT} | identity | {"versions": versions, "device": device}
    replace_file(workdir / "config.json", json.dumps(record, indent=2) + "\n")


def package_version(package: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def train_line(epoch: int, index: int, batch_size: int, num_images: int, num_steps: int, loss: float) -> str:
    """The lab's progress line, e.g. 'Train Epoch: 1 [6400/60000 (11%)]\\tLoss: 0.329942'."""
    return f"Train Epoch: {epoch} [{index * batch_size}/{num_images} ({100.0 * index / num_steps:.0f}%)]\tLoss: {loss:.6f}"


def epoch_line(record: dict[str, Any]) -> str:
    """The lab's accuracy line, then what the lab did not print; the validation set's line under it."""
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
