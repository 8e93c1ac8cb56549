"""jaxmnist from Python: what the commands do, as functions a notebook or a script calls.

    from jaxmnist import api

    records = api.train(epochs=1, workdir="runs/nb")           # the lab's recipe, one epoch; epoch records back
    report = api.evaluate("runs/nb")                           # what `jaxmnist evaluate` prints, as a dict
    predict = api.load_model("runs/nb")                        # images [N, 28, 28] -> probabilities [N, classes]
    api.figures.curves(["runs/nb"])                            # a matplotlib Figure (a notebook shows it)

Each name here is the function the commands themselves call, so a notebook and `jaxmnist train`
compute the same thing; docs/python-api.md describes them all. Importing this module loads JAX.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from jaxmnist.apps import plot as figures  # curves, samples, structure, confusion, errors, sweep: each a Figure
from jaxmnist.apps.console import setup_console
from jaxmnist.apps.dashboard import Dashboard
from jaxmnist.apps.evaluate import RestoredModel, load_model, read_run, restore_model
from jaxmnist.apps.evaluate import evaluate_checkpoint as evaluate
from jaxmnist.apps.prepare import PREPARE, prepare_digit
from jaxmnist.apps.summary import layers, table
from jaxmnist.config import RECIPES, Config
from jaxmnist.core.models import MODELS, build_model
from jaxmnist.data import MNIST
from jaxmnist.data import load as load_data
from jaxmnist.datasets import DATASETS
from jaxmnist.errors import UserError
from jaxmnist.runtime import parallel
from jaxmnist.metrics import MetricsLog
from jaxmnist.runtime.run import train_and_evaluate

__all__ = ["Config", "RECIPES", "MODELS", "MNIST", "RestoredModel", "build_model", "evaluate", "figures", "layers",
           "load_data", "load_model", "prepare_digit", "prepare_picture", "read_run", "records", "restore", "summary",
           "train"]

restore = restore_model  # (workdir, step="best") -> RestoredModel(model, variables, meta, step)


def train(config: Config | None = None, *, arrays: MNIST | None = None,
          on_record: Callable[[dict[str, Any]], None] | None = None, **settings: Any) -> list[dict[str, Any]]:
    """Train as `jaxmnist train` does, in this process, and return the epoch records it wrote.

    config (default: the lab's recipe) with settings replacing its fields, as flags would:
    train(epochs=1, workdir="runs/nb", dataset="fashion_mnist"); recipe="improved" starts from that
    preset, as --recipe does. arrays (from load_data) replace the data flags; on_record(record) sees
    each record of metrics.jsonl as it is written (every --log-every batches, and each epoch).
    Called again with the same workdir it resumes, as the command does; Ctrl-C (a notebook's
    interrupt) saves and stops. The console lines go to stdout."""
    if "recipe" in settings:  # a preset's fields first, the settings given over them
        settings = {**RECIPES[settings["recipe"]], **settings} if settings["recipe"] in RECIPES else settings
    config = Config(**settings) if config is None else dataclasses.replace(config, **settings)
    setup_console()
    parallel.configure_jax(config)
    with Dashboard(config.workdir) as dashboard:  # TensorBoard, as the command writes it

        def watch(record: dict[str, Any]) -> None:
            dashboard.write(record)
            if on_record is not None:
                on_record(record)

        return train_and_evaluate(config, arrays, on_record=watch)


def summary(model: Any) -> str:
    """The table `jaxmnist summary` prints: each layer, its output shape, parameters, multiply-adds."""
    return table(layers(model))


def records(workdir: str | Path, kind: str | None = "epoch") -> list[dict[str, Any]]:
    """A run's records from its metrics.jsonl, oldest first: "epoch" (the default), "train" (the
    log points), or None for both; docs/outputs.md lists their fields."""
    if kind not in ("epoch", "train", None):
        raise ValueError(f"kind must be 'epoch', 'train' or None, got {kind!r}.")
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{workdir} has no metrics.jsonl: is it a jaxmnist workdir?")
    return MetricsLog(path).records(kind)


def prepare_picture(picture: Any, dataset: str = "mnist") -> Any:
    """A PIL image or array -> the uint8 [28, 28] image `jaxmnist predict` reads for a run of
    dataset: MNIST's way (ink box, centre of mass) or Fashion-MNIST's (the article's box)."""
    return PREPARE[DATASETS[dataset].prepare](picture)
