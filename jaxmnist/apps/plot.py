"""Draw a run's figures: learning curves, training samples, confusion matrix, misclassified digits.

    jaxmnist plot --workdir runs/mnist                         # -> runs/mnist/plots/*.png
    jaxmnist plot --workdir runs/a --workdir runs/b --out cmp  # curves of several runs, named by what differs
    jaxmnist plot --sweep runs/sweep                           # -> runs/sweep/plots/sweep.png

(`python -m jaxmnist.plot` and `python scripts/plot.py` are the same command.)

Reads <workdir>/metrics.jsonl and <workdir>/eval/<best step>.json (computing the latter with
jaxmnist.apps.evaluate when it is missing). The only module that draws. Each figure is a function
that returns a matplotlib Figure (a notebook shows it; jaxmnist.api lists them), and the command
saves them. Figures are made without pyplot: no display, no global state, nothing to close.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxmnist.apps.evaluate import (
    evaluate_checkpoint,
    load_run_data,
    read_run,
    restore_model,
    write_report,
)
from jaxmnist.apps.sweep.plan import differing_settings, label
from jaxmnist.config import Config
from jaxmnist.core.augment import random_transform
from jaxmnist.core.optimizers import OPTIMIZERS
from jaxmnist.datasets import DATASETS
from jaxmnist.core.loops import epoch_order
from jaxmnist.core.steps import derive_keys, split_step_key
from jaxmnist.errors import UserError
from jaxmnist import data
from jaxmnist.apps.console import run_command, setup_console
from jaxmnist.runtime.checkpoint import Checkpoints, OtherModel
from jaxmnist.ranking import chosen_by, rank
from jaxmnist.metrics import MetricsLog
from jaxmnist.runtime.reporting import log
from jaxmnist.files import check_path_argument, replace_file
from jaxmnist.runtime.workdir import is_run


def run_labels(workdirs: list[Path]) -> list[str]:
    """Each run named by what differs in its recorded recipe (`lr=0.003, dropout=0.3, seed=1`); the
    folder's name where the recipes are the same, or a run has no config.json."""
    try:
        recipes = [read_run(workdir)["config"] for workdir in workdirs]
    except UserError:
        return [workdir.name for workdir in workdirs]
    labels = [label(settings) for settings in differing_settings(recipes)]
    return labels if all(labels) else [workdir.name for workdir in workdirs]


# The sets an epoch record may hold: (name in the legend, its loss key, its accuracy key, line style).
CURVE_SETS = (("test", "test_loss", "test_accuracy", "o-"), ("validation", "val_loss", "val_accuracy", "s--"),
              ("training", None, "train_accuracy", "^:"))


def _new_figure(**kwargs) -> Figure:
    """A Figure on its own Agg canvas: it can be measured and saved with no pyplot and no display."""
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, path: Path, dpi: int = 90) -> None:
    """Write figure as a PNG in one step: a kill leaves the old file or the new, never half of one."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    replace_file(path, buffer.getvalue())


def curves(workdirs: list[str | Path]) -> Figure:
    """curves.png: training loss (every log point and per epoch), test and validation loss, training,
    test and validation accuracy with the best epoch marked (by the set that chose it), and the
    learning rate."""
    workdirs = [Path(workdirs)] if isinstance(workdirs, (str, Path)) else [Path(workdir) for workdir in workdirs]
    for workdir in workdirs:
        if not (workdir / "metrics.jsonl").is_file():
            raise UserError(f"{workdir} has no metrics.jsonl: is it a jaxmnist workdir?")
    fig = _new_figure(figsize=(11, 7.5))
    axes = fig.subplots(2, 2)
    (loss_ax, test_loss_ax), (accuracy_ax, lr_ax) = axes
    last_epoch, validation = 1, False
    for workdir, name in zip(workdirs, run_labels(workdirs) if len(workdirs) > 1 else [None] * len(workdirs)):
        metrics = MetricsLog(workdir / "metrics.jsonl")
        points, epochs = metrics.records("train"), metrics.records("epoch")
        steps_per_epoch = epochs[0]["step"] / epochs[0]["epoch"] if epochs else 1
        line = loss_ax.plot([p["step"] / steps_per_epoch for p in points], [p["loss"] for p in points],
                            alpha=0.45, lw=1, label=f"{name}: batch" if name else "one batch (log points)")[0]
        x = [e["epoch"] for e in epochs]
        last_epoch, validation = max([last_epoch, *x]), validation or any("val_loss" in e for e in epochs)
        loss_ax.plot(x, [e["train_loss"] for e in epochs], "o-", color=line.get_color(),
                     label=f"{name}: epoch mean" if name else "epoch mean")
        colour = None  # overlaid runs: one colour per run, one line style per set; one run: a colour per set
        for which, loss_key, accuracy_key, style in CURVE_SETS:
            if not any(e.get(accuracy_key) is not None for e in epochs):
                continue  # no validation set, or records from before training accuracy
            label = f"{name}: {which}" if name else which
            drawn = accuracy_ax.plot(x, [_value(e, accuracy_key) for e in epochs], style, color=colour, label=label)[0]
            if loss_key:
                test_loss_ax.plot(x, [e[loss_key] for e in epochs], style, color=drawn.get_color(), label=label)
            colour = drawn.get_color() if name else None
        if epochs:
            _mark_best(accuracy_ax, epochs, colour or "gold", name)
        lr_ax.step(x, [e["lr"] for e in epochs], "o-", where="mid", label=name)
    loss_ax.set(title="Training loss", xlabel="epoch", ylabel="cross-entropy", yscale="log")
    test_loss_ax.set(title=f"Test{' and validation' if validation else ''} loss (unrotated images)", xlabel="epoch",
                     ylabel="cross-entropy")
    accuracy_ax.set(title="Accuracy (training: the augmented images trained on)", xlabel="epoch", ylabel="accuracy (%)")
    if all(_recorded(workdir, "dataset") in ("mnist", None) for workdir in workdirs):  # the lab's result is MNIST's
        accuracy_ax.axhline(99.05, color="grey", ls=":", lw=1, label="the lab: 99.05%")
    optimizers = " / ".join(sorted({OPTIMIZERS[name].label for name in {_recorded(w, "optimizer") for w in workdirs}
                                    if name in OPTIMIZERS}))
    lr_ax.set(title="Learning rate", xlabel="epoch", ylabel=f"{optimizers} learning rate".strip(), yscale="log")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)  # one epoch: one tick, not 0.6-1.4
        ax.set_xlim(0 if ax is loss_ax else 0.5, last_epoch + 0.5)  # whole epochs, also for a run of one
    fig.tight_layout()
    return fig


def _recorded(workdir: Path, setting: str) -> Any:
    """A setting the run recorded ("optimizer": "adam"); None where it has no record of it."""
    try:
        return read_run(workdir)["config"].get(setting)
    except UserError:
        return None


def _mark_best(ax, epochs: list[dict], colour, name: str | None) -> None:
    """A star on the best epoch, at the accuracy of the set that chose it (ranking.rank's rule)."""
    best = max(epochs, key=rank)
    chosen_on, accuracy = chosen_by(best)
    ax.plot(best["epoch"], accuracy, "*", ms=14, color=colour, markeredgecolor="black",
            label=f"{name + ': ' if name else ''}best: epoch {best['epoch']}, chosen by {chosen_on} accuracy")


SWEEP_CURVES = {"test_accuracy": "Test accuracy (%)", "val_accuracy": "Validation accuracy (%)",
                "train_accuracy": "Training accuracy (%)", "train_loss": "Training loss", "test_loss": "Test loss"}


def sweep(root: str | Path) -> Figure:
    """sweep.png: for each recipe among the runs in root, the mean over its seeds of every epoch
    curve, with a band of +-1 standard deviation; over the epochs that all its seeds have reached."""
    root = Path(root)
    workdirs = sorted(d for d in root.iterdir() if d.is_dir() and is_run(d) and (d / "metrics.jsonl").is_file())
    if not workdirs:
        raise UserError(f"{root} holds no jaxmnist runs: is it a sweep's --root?")
    groups: dict[str, list[list[dict]]] = {}
    recipes: dict[str, dict] = {}
    for workdir in workdirs:
        recipe = {k: v for k, v in read_run(workdir)["config"].items() if k in Config().recipe_dict() and k != "seed"}
        key = json.dumps(recipe, sort_keys=True)
        recipes.setdefault(key, recipe)
        groups.setdefault(key, []).append(MetricsLog(workdir / "metrics.jsonl").records("epoch"))
    names = dict(zip(recipes, (label(s) or "all runs" for s in differing_settings(list(recipes.values())))))
    shown = [key for key in SWEEP_CURVES if any(key in r for runs in groups.values() for records in runs for r in records)]
    fig = _new_figure(figsize=(5 * len(shown), 4.2))
    axes = fig.subplots(1, len(shown), squeeze=False)
    for ax, curve in zip(axes.flat, shown):
        for key, runs in groups.items():
            epochs = min(len(records) for records in runs)
            values = np.array([[_value(r, curve) for r in records[:epochs]] for records in runs])  # [seeds, epochs]
            x, mean = np.arange(1, epochs + 1), values.mean(axis=0)
            std = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(epochs)  # the table's sample std
            line = ax.errorbar(x, mean, yerr=std, fmt="o-", capsize=3, label=f"{names[key]} ({len(runs)} seeds)")[0]
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set(title=SWEEP_CURVES[curve], xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)  # one epoch: one tick, not 0.6-1.4
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{root}: mean over seeds, band +-1 std")
    fig.tight_layout()
    return fig


def _value(record: dict, key: str) -> float:
    """A record's figure, NaN where it has none (no validation set) or it is not known (null)."""
    return np.nan if record.get(key) is None else record[key]


def structure(config: Config) -> Figure:
    """structure.png: the run's network as a column of its layers (the lab report's Figure 3), each
    with its output shape and parameters; blocks of layers as one box (jaxmnist.apps.summary lists all)."""
    from jaxmnist.apps.summary import layers
    from jaxmnist.core.models import build_model

    rows = layers(build_model(config))
    parameters: dict[str, int] = {}
    for row in rows:  # a block's box counts the parameters of the layers inside it
        top = row.name.split("/")[0].split(" ")[0]
        parameters[top] = parameters.get(top, 0) + row.parameters
    boxes = [row for row in rows if row.depth == 0]
    fig = _new_figure(figsize=(4.2, 0.55 * (len(boxes) + 1)))
    ax = fig.subplots()
    for i, row in enumerate([None, *boxes]):
        y = len(boxes) - i
        name, shape = ("input", "28x28x1") if row is None else (row.name, "x".join(map(str, row.output)))
        count = parameters.get(name.split(" ")[0], 0) if row is not None else 0
        text = f"{name}   {shape}" + (f"   {count:,} params" if count else "")
        ax.text(0.5, y, text, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "facecolor": "#dde8f5" if count else "#f2f2f2", "edgecolor": "#6a7f99"})
        if i:
            ax.annotate("", xy=(0.5, y + 0.25), xytext=(0.5, y + 0.75), arrowprops={"arrowstyle": "->", "color": "#6a7f99"})
    total = sum(parameters.values())
    ax.set(xlim=(0, 1), ylim=(-0.6, len(boxes) + 0.6), title=f"{config.model}: {total:,} parameters")
    ax.axis("off")
    fig.tight_layout()
    return fig


def samples(config: Config, dataset: data.MNIST, count: int = 16) -> Figure:
    """samples.png: the first images of epoch 1's first batch, shuffled and rotated exactly as training saw them."""
    if not (isinstance(count, int) and 2 <= count <= config.batch_size and count % 2 == 0):  # two rows from one batch
        raise ValueError(f"count must be an even number from 2 to {config.batch_size} (--batch-size), got {count!r}.")
    keys = derive_keys(config.seed)
    (train_images, train_labels), _ = data.split_validation(dataset, config.validation)  # the images trained on
    order = epoch_order(jax.random.fold_in(keys.shuffle, 1), len(train_images), config.batch_size)
    ids = np.asarray(order.indices[0])
    augment_key, _ = split_step_key(jax.random.fold_in(keys.augment, 0))  # step 0's, as the train step splits it
    images = random_transform(augment_key, train_images[ids], config.rotation, config.translate, config.flip)
    fig = _new_figure(figsize=(count * 0.75, 4.2))
    axes = fig.subplots(2, count // 2)
    names = DATASETS[config.dataset].classes
    for ax, image, label in zip(axes.flat, np.asarray(images), train_labels[ids]):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(names[label], fontsize=9)
        ax.axis("off")
    fig.suptitle(f"First training batch of epoch 1, as the model sees it (rotation +-{config.rotation:g} degrees"
                 + (f", shift +-{config.translate} pixels" if config.translate else "")
                 + (", mirrored at random)" if config.flip else ")"))
    fig.tight_layout()
    return fig


def confusion(report: dict) -> Figure:
    """confusion.png: the confusion matrix with the classes' names, counts annotated (up to 26
    classes: more do not fit); the diagonal is shaded separately."""
    matrix = np.array(report["confusion_matrix"])
    names, n = report["classes"], len(matrix)
    errors = np.where(np.eye(n, dtype=bool), 0, matrix)
    side = max(7.0, 0.28 * n + 3)  # inches: 47 classes still get readable labels
    fig = _new_figure(figsize=(side, side - 1))
    ax = fig.subplots()
    image = ax.imshow(errors, cmap="Reds")
    for t in range(n if n <= 26 else 0):
        for p in range(n):
            if matrix[t, p]:
                dark = errors[t, p] > 0.55 * errors.max()  # white on the darkest reds, to stay readable
                colour = "tab:green" if t == p else "white" if dark else "black"
                ax.text(p, t, matrix[t, p], ha="center", va="center", fontsize=8 if n <= 10 else 5, color=colour,
                        weight="bold" if t == p or dark else None)
    long_names = max(len(name) for name in names) > 2
    ax.set_xticks(range(n), names, rotation=45 if long_names else 0, ha="right" if long_names else "center",
                  fontsize=8 if n <= 26 else 6)
    ax.set_yticks(range(n), names, fontsize=8 if n <= 26 else 6)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"Confusion matrix, step {report['step']}{_chosen(report)}\n{report['correct']}/{report['test_images']} "
                 "test images correct\n" + ("(colour: mistakes only; green: correct counts)" if n <= 26 else
                                            "(colour: mistakes only; counts in the saved report)"))
    fig.colorbar(image, ax=ax, label="misclassified images")
    fig.tight_layout()
    return fig


def _chosen(report: dict) -> str:
    """' (best by validation accuracy)' and the like, for a figure's title; '' where not recorded."""
    return f" (best by {report['chosen_by']} accuracy)" if report.get("chosen_by") else ""


def errors(report: dict, dataset: data.MNIST, limit: int = 150) -> Figure:
    """errors.png: the misclassified test images, most confident mistakes first."""
    if data.describe(dataset, None, None).fingerprint != report["data"]["fingerprint"]:
        raise UserError(f"These are not the images the report was made on ({report['data']['name']}): its indices "
                        "would title other pictures.")
    wrong = report["misclassified"][:limit]
    names = report["classes"]
    apart = "\n" if max(len(name) for name in names) > 3 else " "  # "Ankle boot -> Sneaker" needs its own line
    columns = 10
    rows = max(1, -(-len(wrong) // columns))
    height = rows * (1.45 if apart == " " else 1.65) + 0.6  # inches: the last 0.6 hold the title, whatever the rows
    fig = _new_figure(figsize=(columns * 1.25, height))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, wrong):
        ax.imshow(dataset.test_images[m["index"]], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{names[m['true']]} -> {names[m['predicted']]}{apart}({m['confidence']:.2f})", fontsize=7 if
                     apart == "\n" else 8)
    shown = f"the {len(wrong)} most confident" if len(report["misclassified"]) > limit else "all"
    fig.suptitle(f"Misclassified test images ({shown} of {len(report['misclassified'])}), step {report['step']}"
                 f"{_chosen(report)}: true -> predicted (confidence)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / height))  # the rows below the title, never under it
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxmnist.plot", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    runs = parser.add_mutually_exclusive_group(required=True)
    runs.add_argument("--workdir", action="append", help="a run's workdir; repeat to overlay runs")
    runs.add_argument("--sweep", help="a sweep's --root: each recipe's mean curves over its seeds, into sweep.png")
    parser.add_argument("--out", help="where the PNGs go (default: <first workdir or sweep>/plots)")
    parser.add_argument("--data-dir", help="TFDS data directory (default: the run's own data source)")
    parser.add_argument("--idx-dir", help="MNIST IDX files (default: the run's own data source)")
    args = parser.parse_args(argv)
    setup_console()  # a warning (a torn metrics line) is one plain line, as every command's

    def work() -> None:
        out = draw_sweep(Path(args.sweep), args.out) if args.sweep else draw(args)
        if args.sweep:
            written = "sweep.png"
        elif len(args.workdir) > 1:  # the per-image figures describe one model: say whose
            written = f"curves.png (all {len(args.workdir)} runs), and samples.png, structure.png, confusion.png and " \
                      f"errors.png of {args.workdir[0]},"
        else:
            written = "curves.png, samples.png, structure.png, confusion.png and errors.png"
        log.info("Wrote %s to %s", written, out)

    return run_command(work)


def draw_sweep(root: Path, out: str | None) -> Path:
    """sweep.png of a sweep's root, into out (default: <root>/plots)."""
    if not root.is_dir():
        raise UserError(f"--sweep {root} is not a folder.")
    folder = _output_folder(Path(out) if out else root / "plots")
    save(sweep(root), folder / "sweep.png")
    return folder


def _output_folder(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out} cannot be used as a folder ({error.strerror}).") from None
    return out


def draw(args: argparse.Namespace) -> Path:
    """Every figure, into --out; each failure is one UserError sentence."""
    for flag, value in [("--workdir", w) for w in args.workdir] + [("--out", args.out), ("--data-dir", args.data_dir),
                                                                    ("--idx-dir", args.idx_dir)]:
        check_path_argument(flag, value)
    workdirs = [Path(w) for w in args.workdir]
    for workdir in workdirs:
        if not (workdir / "metrics.jsonl").is_file():
            raise UserError(f"{workdir} has no metrics.jsonl: is it a jaxmnist workdir?")
    out = _output_folder(Path(args.out) if args.out else workdirs[0] / "plots")
    save(curves(workdirs), out / "curves.png")  # metrics.jsonl alone: whatever the code's model is now
    # The other figures describe the best checkpoint's model: one sentence, before any of them is
    # written, when this code's model is no longer the one that trained it.
    try:
        restore_model(workdirs[0], "best")
    except OtherModel as error:
        raise OtherModel(f"{error} Only {out / 'curves.png'} was drawn: it needs no model.") from None

    # The per-image figures describe the first run's best checkpoint, on the data it trained on.
    workdir = workdirs[0]
    run = read_run(workdir)
    config = Config(**{k: v for k, v in run["config"].items() if k in Config.__dataclass_fields__} | {"restart": False})
    dataset, source = load_run_data(run, args.data_dir, args.idx_dir)
    best = Checkpoints(workdir / "checkpoints", read_only=True).best_step()
    report = _saved_report(workdir / "eval" / f"{best}.json", source)
    if report is None:  # missing, or computed on other images: its indices would title the wrong ones
        report = evaluate_checkpoint(workdir, "best", dataset, args.data_dir or config.data_dir, args.idx_dir or config.idx_dir)
        with contextlib.suppress(OSError):  # a read-only workdir only costs recomputing next time
            write_report(workdir, report)
    save(samples(config, dataset), out / "samples.png")
    save(structure(config), out / "structure.png", dpi=110)
    save(confusion(report), out / "confusion.png")
    save(errors(report, dataset), out / "errors.png")
    return out


def _saved_report(path: Path, source) -> dict | None:
    """The evaluation saved at path, if it is readable and indexes this very data."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same_images = report.get("data", {}).get("fingerprint") == source.fingerprint
    return report if same_images and "classes" in report else None  # without classes: an older jaxmnist's
