"""Every knob of a run, with the lab's values as defaults, and the command line made from it."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Sequence


def _knob(default: Any, help: str, **extra: Any) -> Any:
    """A config field whose help text becomes the flag's help."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run. Defaults reproduce the lab (seed.md); the workdir records the rest."""

    epochs: int = _knob(5, "passes over the 60,000 training images")
    batch_size: int = _knob(64, "training images per step; the last partial batch is kept")
    lr: float = _knob(1e-3, "Adam learning rate before any decay")
    lr_decay_epochs: int = _knob(5, "multiply the learning rate by --lr-decay every this many epochs")
    lr_decay: float = _knob(0.1, "the step-decay factor (StepLR's gamma)")
    rotation: float = _knob(10.0, "random rotation of training images, uniform in +-DEGREES; 0 = off")
    translate: int = _knob(0, "random shift of training images, uniform in +-PIXELS on each axis; 0 = off")
    dropout: float = _knob(0.0, "dropout rate after the second pooling layer, training only; 0 = off")
    schedule: str = _knob("step", "learning-rate schedule: step (the lab's StepLR) or cosine (from --lr to 0 over the run)",
                          choices=("step", "cosine"))
    warmup_epochs: float = _knob(0.0, "ramp the learning rate linearly from 0 over this many epochs first; 0 = off")
    label_smoothing: float = _knob(0.0, "optax.smooth_labels on the training targets; 0 = off")
    weight_decay: float = _knob(0.0, "decoupled weight decay of the kernels (optax.adamw, biases exempt); 0 = the "
                                "lab's plain Adam")
    recipe: str = _knob("lab", "a named preset of the knobs above: lab (the defaults) or improved; flags given "
                        "with it override it", choices=("lab", "improved"))
    seed: int = _knob(0, "the one seed every random stream (init, shuffle, rotation) derives from")
    workdir: str = _knob("runs/mnist", "where config.json, metrics.jsonl and checkpoints/ go")
    log_every: int = _knob(100, "print the training loss every this many batches")
    eval_batch_size: int = _knob(500, "test images per evaluation batch (the last one is padded)")
    data_dir: str | None = _knob(None, "TFDS data directory (default: TFDS's own, or $TFDS_DATA_DIR)")
    idx_dir: str | None = _knob(None, "read the four MNIST IDX files from here instead of TFDS")
    loop: str = _knob(
        "auto",
        "how steps are driven: python (one jitted step per batch, fastest on CPU), device (the steps "
        "between log points in one compiled loop, fastest on GPU), auto (by backend)",
        choices=("auto", "python", "device"),
    )
    devices: str = _knob("all", "data-parallel over all local devices (and every process's), or the first N")
    cache_dir: str = _knob(
        "~/.cache/jaxmnist",
        "kept between runs: compiled programs (xla/) and MNIST decoded from TFDS (mnist-*.npz); '' = off")
    checkpoint_seconds: float = _knob(30.0, "also save the latest state mid-epoch at most this often")
    restart: bool = _knob(False, "discard the checkpoints and metrics of a run already in --workdir")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lr_decay_epochs", "log_every", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{_flag(name)} must be a positive integer, got {getattr(self, name)}.")
        if not self.checkpoint_seconds > 0:
            raise ValueError(f"--checkpoint-seconds must be positive, got {self.checkpoint_seconds}.")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}.")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"--lr-decay must be in (0, 1], got {self.lr_decay}.")
        if not 0 <= self.translate <= 13:
            raise ValueError(f"--translate must be between 0 and 13 pixels, got {self.translate}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}.")
        if not 0 <= self.weight_decay < 1:
            raise ValueError(f"--weight-decay must be in [0, 1), got {self.weight_decay}.")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}.")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"--warmup-epochs must be at least 0 and less than --epochs ({self.epochs}), got {self.warmup_epochs}.")
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"--rotation must be between 0 and 180 degrees, got {self.rotation}.")
        if self.devices != "all" and not (self.devices.isdigit() and int(self.devices) > 0):
            raise ValueError(f"--devices must be 'all' or a positive integer, got {self.devices}.")
        if self.data_dir is not None and self.idx_dir is not None:
            raise ValueError("Give either --data-dir (TFDS) or --idx-dir (IDX files), not both.")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready values."""
        return dataclasses.asdict(self)


# The presets of --recipe. "improved" is the best combination the ablation in README.md found:
# the lab report's translation, dropout and cosine schedule, with a higher peak learning rate
# after a warmup epoch and decoupled weight decay, over 15 epochs.
RECIPES: dict[str, dict[str, Any]] = {
    "lab": {},
    "improved": {"epochs": 15, "translate": 2, "dropout": 0.3, "schedule": "cosine", "lr": 3e-3, "warmup_epochs": 1.0,
                 "weight_decay": 0.05},
}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _field_type(field: dataclasses.Field) -> type:
    """The Python type a flag's string is parsed with (annotations are strings here)."""
    annotation = str(field.type)
    for candidate in (bool, int, float):
        if annotation.startswith(candidate.__name__):
            return candidate
    return str


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with one --flag per Config field; unknown flags are errors."""
    parser = OneLineParser(prog=prog, description=description)
    for field in dataclasses.fields(Config):
        kwargs: dict[str, Any] = {"default": field.default, "help": f"{field.metadata['help']} (default: %(default)s)"}
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        if _field_type(field) is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _field_type(field)
            kwargs["metavar"] = field.name.upper()
        parser.add_argument(f"--{_flag(field.name)}", dest=field.name, **kwargs)
    return parser


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Config:
    """Build the config, turning a bad value into the parser's one-line error (exit 2)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    try:
        return Config(**values)
    except ValueError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits


def parse_config(argv: Sequence[str] | None, prog: str, description: str) -> Config:
    """Parse a command line into a validated Config: --recipe's preset first, explicit flags over it."""
    parser = build_parser(prog, description)
    recipe = parser.parse_known_args(argv)[0].recipe
    parser.set_defaults(**RECIPES[recipe])
    return config_from_args(parser.parse_args(argv), parser)
