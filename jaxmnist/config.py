"""Every setting of a run, with the lab's values as defaults, and the command line made from it.

Two kinds of setting, declared field by field:
- the recipe (`_recipe`): what a run computes. A resumed run must use the same values
  (run.py compares them with the checkpoint's), because any change alters the numbers.
- run options (`_option`): where and how a run is observed (paths, devices, logging, caches);
  they may change freely on resume.

No JAX here: `--help` and flag errors answer without importing it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from typing import Any, Sequence

from jaxmnist.core.optimizers import OPTIMIZERS
from jaxmnist.datasets import DATASETS
from jaxmnist.files import EMPTY_PATH

SEED_LIMIT = 2**64  # seeds are 64-bit: derive_keys folds the high 32 bits in
MODEL_NAMES = ("lab", "resnet")  # jaxmnist.core.models.MODELS's keys, named here so --help needs no JAX


def _recipe(default: Any, help: str, metavar: str | None = None, **extra: Any) -> Any:
    """A setting that changes what the run computes; help and metavar become the flag's."""
    return dataclasses.field(default=default, metadata={"help": help, "metavar": metavar, "recipe": True, **extra})


def _option(default: Any, help: str, metavar: str | None = None, **extra: Any) -> Any:
    """A setting that never changes the numbers, so a resumed run may change it."""
    return dataclasses.field(default=default, metadata={"help": help, "metavar": metavar, "recipe": False, **extra})


# The one answer to an empty path flag (an unset shell variable, most often), for every command.


class SettingError(ValueError):
    """A setting's value is invalid; name is the field, the message one sentence."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


def flag(name: str) -> str:
    """A Config field's command-line flag: weight_decay -> --weight-decay."""
    return "--" + name.replace("_", "-")


# The presets of --recipe. "improved" is the best combination the ablation in docs/results.md found:
# the lab report's translation, dropout and cosine schedule, with a higher peak learning rate
# after a warmup epoch and AdamW's decoupled weight decay, over 15 epochs.
RECIPES: dict[str, dict[str, Any]] = {
    "lab": {},
    "improved": {"epochs": 15, "translate": 2, "dropout": 0.3, "schedule": "cosine", "lr": 3e-3, "warmup_epochs": 1.0,
                 "optimizer": "adamw", "weight_decay": 0.05},
    # The residual network with the improved recipe's augmentation and schedule, over 12 epochs: its
    # epochs cost about 5.6 times the lab CNN's on a CPU, so 12 fit in about 20 minutes on 2 cores.
    "resnet": {"model": "resnet", "epochs": 12, "translate": 2, "dropout": 0.1, "schedule": "cosine", "lr": 3e-3,
               "warmup_epochs": 1.0, "optimizer": "adamw", "weight_decay": 0.05},
    # Fashion-MNIST with the lab CNN: the improved recipe without rotation or dropout. On a validation
    # set, turning clothes hurt (-0.7 points), mirroring them too (-0.6), and dropout 0.3 kept the
    # small CNN below its training accuracy (docs/datasets.md).
    "fashion": {"dataset": "fashion_mnist", "epochs": 15, "rotation": 0.0, "translate": 2, "schedule": "cosine",
                "lr": 3e-3, "warmup_epochs": 1.0, "optimizer": "adamw", "weight_decay": 0.05},
}


def preset_flags(name: str) -> str:
    """A preset as the flags it stands for: '--epochs 15 --translate 2 ...'."""
    def spelled(key: str, value: Any) -> str:
        if isinstance(value, bool):
            return flag(key) if value else "--no-" + flag(key)[2:]
        return f"{flag(key)} {value:g}" if isinstance(value, float) else f"{flag(key)} {value}"

    return " ".join(spelled(key, value) for key, value in RECIPES[name].items())


_DECAYING = " or ".join(name for name, optimizer in OPTIMIZERS.items() if optimizer.takes_weight_decay)


def _recipe_help() -> str:
    presets = ", ".join(f"{name} ({preset_flags(name) or 'every default above'})" for name in RECIPES)
    return f"start from a preset: {presets}; flags given with it override it"


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run. The defaults are the lab's recipe."""

    # --- the recipe ------------------------------------------------------------------------------
    model: str = _recipe("lab", "the network (jaxmnist/core/models): lab (the lab's two-conv CNN), resnet (a small "
                         "residual network with BatchNorm), or one you registered", "{" + ",".join(MODEL_NAMES) + "}",
                         choices=MODEL_NAMES)
    dataset: str = _recipe("mnist", "the images to learn (jaxmnist/datasets.py), by their TFDS name: " + ", ".join(
        f"{name} ({info.title}, {len(info.classes)} classes)" for name, info in DATASETS.items()), "NAME",
        choices=tuple(DATASETS))
    epochs: int = _recipe(5, "passes over the training images (MNIST's 60,000)", "N")
    validation: int = _recipe(0, "hold out the last N training images (the same ones whatever the seed) as a validation "
                              "set, never trained on: each epoch reports it beside the test set, and it chooses the "
                              "best checkpoint; 0 = none, the test set chooses, as in the lab", "N")
    batch_size: int = _recipe(64, "training images per step; the last, smaller batch of an epoch is kept", "N")
    optimizer: str = _recipe("adam", "the optimizer (jaxmnist/core/optimizers.py): " + "; ".join(
        f"{name}: {optimizer.help}" for name, optimizer in OPTIMIZERS.items()), "{" + ",".join(OPTIMIZERS) + "}",
        choices=tuple(OPTIMIZERS))
    lr: float = _recipe(1e-3, "the optimizer's learning rate before any decay", "RATE")
    lr_decay_epochs: int = _recipe(5, "with --schedule step, multiply the learning rate by --lr-decay after every N "
                                   "epochs (so with --epochs 5 the lab's decay never happens)", "N")
    lr_decay: float = _recipe(0.1, "the step decay's factor (PyTorch StepLR's gamma)", "FACTOR")
    rotation: float = _recipe(10.0, "rotate each training image by a random angle in +-DEGREES; 0 = off", "DEGREES")
    translate: int = _recipe(0, "shift each training image by a random whole number of pixels in +-PIXELS on each "
                             "axis; 0 = off", "PIXELS")
    flip: bool = _recipe(False, "mirror each training image left to right with probability 1/2 (for clothes; a mirrored "
                         "digit is no digit)")
    dropout: float = _recipe(0.0, "dropout rate after the second pooling layer, in training only; 0 = off", "RATE")
    schedule: str = _recipe("step", "learning-rate schedule: step (the lab's StepLR) or cosine (from --lr to 0 over "
                            "the run)", "{step,cosine}", choices=("step", "cosine"))
    warmup_epochs: float = _recipe(0.0, "first raise the learning rate linearly from 0 over this many epochs; 0 = off",
                                   "EPOCHS")
    label_smoothing: float = _recipe(0.0, "smooth the training targets by this amount (optax.smooth_labels); 0 = off",
                                     "AMOUNT")
    weight_decay: float = _recipe(0.0, f"weight decay of the kernels, biases exempt, with --optimizer {_DECAYING}; "
                                  "0 = none, as in the lab", "RATE")
    seed: int = _recipe(0, "the one seed every random stream (init, shuffle, augmentation) derives from; "
                        "0 to 2**64-1", "N")
    eval_batch_size: int = _recipe(500, "test images per evaluation batch (the last one is padded)", "N")
    loop: str = _recipe(
        "auto",
        "how steps are driven: python (one compiled step per batch, fastest on CPU), device (the steps between "
        "two log points in one compiled loop, fastest on GPU), or auto (by backend); the two agree to about 1e-5",
        "{auto,python,device}", choices=("auto", "python", "device"),
    )
    precision: str = _recipe(
        "float32", "arithmetic of convolutions and matrix products: float32 (the lab's, and the CPU's) or tf32 "
        "(faster on NVIDIA GPUs, a 10-bit mantissa)", "{float32,tf32}", choices=("float32", "tf32"))
    deterministic: bool = _recipe(True, "on a GPU, compute the same numbers on every run (XLA's deterministic ops); "
                                  "--no-deterministic trades that for speed")

    # --- run options ------------------------------------------------------------------------------
    recipe: str = _option("lab", _recipe_help(), "{" + ",".join(RECIPES) + "}", choices=tuple(RECIPES))
    workdir: str = _option(None, "the run's folder: config.json, metrics.jsonl, checkpoints/", "DIR",
                           default_text="runs/DATASET: runs/mnist, runs/fashion_mnist, runs/emnist-letters, ...")
    data_dir: str | None = _option(None, "a TFDS data directory holding --dataset", "DIR",
                                   default_text="TFDS's own: $TFDS_DATA_DIR or ~/tensorflow_datasets, downloading "
                                                "the dataset if needed")
    idx_dir: str | None = _option(None, "read the dataset's four IDX files from DIR instead of TFDS", "DIR",
                                  default_text="use TFDS")
    allow_small_data: bool = _option(False, "train on fewer images than the dataset has (MNIST: 60,000 / 10,000; "
                                     "tests, experiments)")
    devices: str = _option("all", "data-parallel over all devices of every process, or the first N", "{all,N}")
    log_every: int = _option(100, "print the training loss every N batches", "N")
    progress: bool = _option(True, "on an interactive terminal, a progress bar per epoch with speed and time left")
    checkpoint_seconds: float = _option(30.0, "save the latest state mid-epoch at most every SECONDS too", "SECONDS")
    join_timeout: float = _option(300.0, "in a multi-process run, give up when the other processes have not all "
                                  "joined within SECONDS", "SECONDS")
    peer_timeout: float = _option(30.0, "in a multi-process run, stop every process when one has not answered for "
                                  "SECONDS (killed, or its machine gone)", "SECONDS")
    cache_dir: str = _option("~/.cache/jaxmnist", "keep compiled programs (xla/) and MNIST decoded from TFDS here "
                             "between runs; '' = off", "DIR")
    restart: bool = _option(False, "discard what an earlier run wrote in --workdir and start again")
    profile: bool = _option(False, "trace the steps between the first two log points with jax.profiler into "
                            "WORKDIR/profile (TensorBoard's profile tab, or Perfetto)")

    def __post_init__(self) -> None:
        self._check_kinds()
        if self.workdir is None:  # each dataset its own folder: a Fashion-MNIST run never meets the MNIST run
            object.__setattr__(self, "workdir", f"runs/{self.dataset.replace('/', '-')}")
        for name in ("epochs", "batch_size", "lr_decay_epochs", "log_every", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise SettingError(name, f"{flag(name)} must be a positive integer, got {getattr(self, name)}.")
        splits = DATASETS[self.dataset]
        for name, images in (("batch_size", splits.train_size), ("eval_batch_size", splits.test_size)):
            if getattr(self, name) > images:
                raise SettingError(name, f"{flag(name)} must be at most {images:,} (the split's images), "
                                         f"got {getattr(self, name)}.")
        checks = (
            ("checkpoint_seconds", self.checkpoint_seconds > 0, "must be positive"),
            ("join_timeout", 1 <= self.join_timeout < math.inf, "must be at least 1 second"),
            ("peer_timeout", 2 <= self.peer_timeout < math.inf, "must be at least 2 seconds"),
            ("validation", self.validation >= 0, "must be 0 (none) or a number of training images to hold out"),
            # Training computes in float32: a rate below its normal range rounds towards 0, one above
            # it is infinite, and neither trains (a "best" of 10% was saved for --lr 1e-50).
            ("lr", FLOAT32_TINY <= self.lr <= FLOAT32_MAX, "must be a finite positive number that float32 holds "
                                                          "(1.2e-38 to 3.4e38)"),
            ("lr_decay", 0 < self.lr_decay <= 1, "must be in (0, 1]"),
            ("translate", 0 <= self.translate <= 13, "must be between 0 and 13 pixels"),
            ("dropout", 0 <= self.dropout < 1, "must be in [0, 1)"),
            ("weight_decay", 0 <= self.weight_decay < 1, "must be in [0, 1)"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "must be in [0, 1)"),
            ("warmup_epochs", 0 <= self.warmup_epochs < self.epochs, f"must be at least 0 and less than --epochs ({self.epochs})"),
            ("rotation", 0 <= self.rotation <= 180, "must be between 0 and 180 degrees"),
            ("seed", 0 <= self.seed < SEED_LIMIT, "must be between 0 and 2**64-1"),
            ("devices", self.devices == "all" or (self.devices.isascii() and self.devices.isdigit() and int(self.devices) > 0),
             "must be 'all' or a positive integer"),
            ("workdir", self.workdir.strip() != "", EMPTY_PATH),
        )
        for name, valid, requirement in checks:
            if not valid:
                raise SettingError(name, f"{flag(name)} {requirement}, got {getattr(self, name)!r}.")
        if self.weight_decay and not OPTIMIZERS[self.optimizer].takes_weight_decay:
            raise SettingError("weight_decay", f"--weight-decay needs --optimizer {_DECAYING}: "
                                               f"{OPTIMIZERS[self.optimizer].label} takes no weight decay.")
        if self.data_dir is not None and self.idx_dir is not None:
            raise SettingError("idx_dir", "Give either --data-dir (TFDS) or --idx-dir (IDX files), not both.")

    def _check_kinds(self) -> None:
        """What the command line's parser checks, for a Config made in Python (jaxmnist.api): each value
        of its field's type (a folder may be a Path), and one of its choices where it has them."""
        for field in dataclasses.fields(self):
            value, kind, choices = getattr(self, field.name), _field_type(field), field.metadata.get("choices")
            if isinstance(value, os.PathLike) and kind is str:
                object.__setattr__(self, field.name, value := os.fspath(value))
            fits = value is None and field.default is None or (
                isinstance(value, bool) if kind is bool else
                isinstance(value, kind) and not isinstance(value, bool) or kind is float and type(value) is int)
            if not fits:
                raise SettingError(field.name, f"{flag(field.name)} must be a{'n' if kind is int else ''} "
                                               f"{kind.__name__}, got {value!r}.")
            # A model may be registered in Python too (a notebook's): build_model names an unknown one.
            if choices is not None and value not in choices and field.name != "model":
                raise SettingError(field.name, f"{flag(field.name)} must be one of {', '.join(choices)}, got {value!r}.")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready values."""
        return dataclasses.asdict(self)

    def recipe_dict(self) -> dict[str, Any]:
        """The recipe alone: what a resumed run must keep."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["recipe"]}


FLOAT32_TINY, FLOAT32_MAX = 1.1754943508222875e-38, 3.4028234663852886e38  # float32's normal range

EXAMPLES = """\
examples:
  jaxmnist train --data-dir ../shared/data/tensorflow_datasets   # train the lab's recipe into runs/mnist
  jaxmnist evaluate --workdir runs/mnist                         # test accuracy and errors of the best model
  jaxmnist plot --workdir runs/mnist                             # figures into runs/mnist/plots

Run the same command again to resume an interrupted run; Ctrl-C saves and stops."""


def _given(name: str, argv: Sequence[str]) -> bool:
    """Whether the command line sets this field itself (as --flag VALUE or --flag=VALUE)."""
    spelled = flag(name)
    return any(arg == spelled or arg.startswith(spelled + "=") for arg in argv)


def _field_type(field: dataclasses.Field) -> type:
    """The Python type a flag's string is parsed with (annotations are strings here)."""
    annotation = str(field.type)
    for candidate in (bool, int, float):
        if annotation.startswith(candidate.__name__):
            return candidate
    return str


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line (no usage block) and exit status 2, and a flag
    is taken only as spelled out in full: `--epoch 2` would silently be --epochs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def checkpoint_parser(prog: str, description: str, committee: bool = False) -> OneLineParser:
    """The start of every command that uses a trained checkpoint: --workdir and --step. With
    committee, --workdir may be repeated: args.workdir is then a list, None when not given."""
    parser = OneLineParser(prog=prog, description=description)
    if committee:
        parser.add_argument("--workdir", action="append", help="a training run's workdir (default: runs/mnist); "
                            "repeat it to evaluate a committee of runs")
    else:
        parser.add_argument("--workdir", default="runs/mnist", help="a training run's workdir (default: %(default)s)")
    parser.add_argument("--step", default="best", help="best, latest, or a step number (default: %(default)s)")
    return parser


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with one --flag per Config field; unknown flags are errors."""
    parser = OneLineParser(prog=prog, description=description, epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(Config):
        default = field.metadata.get("default_text", "%(default)s")
        kwargs: dict[str, Any] = {"default": field.default, "help": f"{field.metadata['help']} (default: {default})"}
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        if _field_type(field) is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["help"] = f"{field.metadata['help']} (default: {'on' if field.default else 'off'})"
        else:
            kwargs["type"] = _field_type(field)
            kwargs["metavar"] = field.metadata["metavar"]
        parser.add_argument(flag(field.name), dest=field.name, **kwargs)
    return parser


def parse_config(argv: Sequence[str] | None, prog: str, description: str) -> Config:
    """Parse a command line into a validated Config: --recipe's preset first, explicit flags over it.

    A bad value is the parser's one-line error (exit 2); when the value came from the preset, the
    message says so and how to change it.
    """
    parser = build_parser(prog, description)
    recipe = parser.parse_known_args(argv)[0].recipe
    preset = RECIPES[recipe]
    parser.set_defaults(**preset)
    args = parser.parse_args(argv)
    try:
        return Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    except SettingError as error:
        if error.name in preset and not _given(error.name, sys.argv[1:] if argv is None else argv):
            parser.error(f"{error} ({flag(error.name)} {preset[error.name]} comes from --recipe {recipe}; give "
                         f"{flag(error.name)} yourself to change it.)")
        parser.error(str(error))
        raise  # unreachable: parser.error exits
