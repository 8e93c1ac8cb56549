"""What a run tells the world: the lab's console lines, metrics.jsonl and config.json."""

from __future__ import annotations

import json
import logging
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from jaxmnist.config import Config

log = logging.getLogger("jaxmnist")


def quiet_orbax() -> None:
    """Orbax reports routine decisions as absl warnings; a user needs only our own lines."""
    logging.getLogger("absl").setLevel(logging.ERROR)


class _ConsoleHandler(logging.StreamHandler):
    """Once the reader of stdout has gone (`... | head`), drop the remaining lines quietly instead
    of printing a traceback for each; the work itself (metrics, checkpoints, files) carries on."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            # Python's own advice: point stdout at devnull, so later lines and the exit flush pass.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        super().handleError(record)


def setup_console() -> None:
    """Plain lines on stdout, as the lab printed them (called by the command-line mains only)."""
    handler = _ConsoleHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers = [handler]  # idempotent: a second main() in one process must not print twice
    log.setLevel(logging.INFO)
    log.propagate = False
    quiet_orbax()


def write_config(workdir: Path, config: Config, device: str) -> None:
    """config.json: every knob plus the library versions and the device, for reproducing the run."""
    versions = {name: _version(name) for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")}
    record = {"config": config.to_dict(), "versions": versions, "device": device}
    (workdir / "config.json").write_text(json.dumps(record, indent=2) + "\n")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class MetricsLog:
    """metrics.jsonl, one JSON object a line: kind "train" at log points, kind "epoch" per epoch."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled  # False in every process but the first of a multi-process run

    def truncate_after(self, step: int) -> None:
        """Drop records past step: a resumed run replays them, and must not write them twice."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every record (of one kind), oldest first."""
        if not self.path.exists():
            return []
        records = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        return [r for r in records if kind is None or r["kind"] == kind]


def train_line(epoch: int, index: int, batch_size: int, num_images: int, num_steps: int, loss: float) -> str:
    """The lab's progress line, e.g. 'Train Epoch: 1 [6400/60000 (11%)]\\tLoss: 0.329942'."""
    return f"Train Epoch: {epoch} [{index * batch_size}/{num_images} ({100.0 * index / num_steps:.0f}%)]\tLoss: {loss:.6f}"


def epoch_line(record: dict[str, Any]) -> str:
    """The lab's accuracy line, followed by what the lab did not print."""
    return (
        f"\nTest Accuracy: {record['correct']}/{record['test_images']} ({record['test_accuracy']:.2f}%)"
        f"  test loss {record['test_loss']:.4f} | train loss {record['train_loss']:.4f}"
        f" | lr {record['lr']:.1e} | {record['epoch_seconds']:.1f} s | {record['images_per_second']:.0f} images/s\n"
    )
