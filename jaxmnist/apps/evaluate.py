"""`python -m jaxmnist.evaluate`: restore a checkpoint and analyse its errors on the test set;
with several --workdir, the same for a committee: the mean of the runs' probabilities.

Uses the same forward-only evaluation as training (loops.evaluate), so the best step's count
of correct test images is exactly the one its training epoch logged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist.config import checkpoint_parser
from jaxmnist.core.augment import normalize
from jaxmnist.core.loops import evaluate, stack_batches
from jaxmnist.core.models import build_model
from jaxmnist.core.steps import EvalTotals
from jaxmnist import data
from jaxmnist.datasets import DATASETS, DIGITS
from jaxmnist.runtime.checkpoint import (
    CheckpointError,
    Checkpoints,
    OtherModel,
    check_same_computation,
)
from jaxmnist.runtime.reporting import log
from jaxmnist.apps.console import run_command, setup_console
from jaxmnist.files import check_path_argument, replace_file
from jaxmnist.runtime.workdir import WorkdirError, where_recorded

DEFAULT_WORKDIR = "runs/mnist"
MISSES_SHOWN = 20  # a committee's misses printed; the --out report holds them all


def resolve_step(checkpoints: Checkpoints, step: str | int) -> int:
    """'best', 'latest' or a step number (938 or "938") -> a step that has a checkpoint."""
    step = str(step)
    if not checkpoints.steps():
        raise CheckpointError(f"{checkpoints.directory} holds no checkpoints: train first with python -m jaxmnist.train.")
    if step == "best":
        best = checkpoints.best_step()
        if best is None:
            raise CheckpointError(f"{checkpoints.directory} has no end-of-epoch checkpoint yet, so no best; use --step latest.")
        return best
    if step == "latest":
        return checkpoints.latest_step()
    if not (step.isascii() and step.isdigit()) or int(step) not in checkpoints.steps():
        raise CheckpointError(f"There is no checkpoint for --step {step} in {checkpoints.directory}; it has best, latest or {checkpoints.steps()}.")
    return int(step)


class RestoredModel(NamedTuple):
    """A trained model: the module its run recorded, its variables, the checkpoint's meta and step."""

    model: Any  # a flax.linen Module
    variables: dict[str, Any]  # {"params": ...} and, for models with BatchNorm, "batch_stats"
    meta: dict[str, Any]
    step: int


def restore_model(workdir: str | Path, step: str = "best") -> RestoredModel:
    """The model of one checkpoint, built from the config its run recorded and checked against the
    saved shapes; with its meta and step number."""
    check_path_argument("--workdir", str(workdir), required=True)
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise CheckpointError(f"--workdir {workdir} is a file, not a training run's folder.")
    if not workdir.is_dir():
        raise CheckpointError(f"--workdir {workdir} does not exist.")
    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    number = resolve_step(checkpoints, step)
    meta = checkpoints.meta(number)
    model = build_model(meta["config"])  # the model its run recorded, as this code builds it
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
    # Onto this process's first device, whatever mesh the checkpoint was written from.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), expected)
    try:
        variables, meta = checkpoints.restore_variables(number, target)  # first: a shape names a parameter
        check_same_computation(meta, model, f"Checkpoint step {number} in {checkpoints.directory}")
    except OtherModel as error:
        raise OtherModel(f"{error}: this code's model is not the one that trained it; use the code that did.") from None
    except CheckpointError:
        checkpoints.manager.reload()
        if number in checkpoints.steps():
            raise
        # Not damaged: a run training in this workdir replaced it while it was read.
        if step in ("best", "latest"):
            return restore_model(workdir, step)
        raise CheckpointError(f"Checkpoint step {number} in {workdir} was removed by the run training there "
                              "while it was read; use --step best or latest.") from None
    return RestoredModel(model, variables, meta, number)


def read_run(workdir: str | Path) -> dict[str, Any]:
    """What a run recorded about itself ({"config", "data", ...}): its config.json, or, when that
    is lost or damaged, the newest checkpoint's copy of the same record."""
    workdir = Path(workdir)
    try:
        record = json.loads((workdir / "config.json").read_text())
        if isinstance(record, dict) and isinstance(record.get("config"), dict):
            return record
    except (OSError, ValueError):
        pass
    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    if not checkpoints.steps():
        raise CheckpointError(f"{workdir} has neither a readable config.json nor checkpoints: is it a jaxmnist run?")
    return checkpoints.meta(checkpoints.latest_step())


SCALES = ("pixels", "unit", "normalized")


def load_model(workdir: str | Path, step: str = "best") -> Callable[..., np.ndarray]:
    """A trained model as a function predict(images, scale=None) -> class probabilities [N, classes].

    images are [N, 28, 28] (or [N, 28, 28, 1]), white digits on black as in MNIST. uint8 images are
    pixels 0..255. Float images must say what they hold, because guessing gives wrong answers
    silently: scale="pixels" (0..255), "unit" (0..1, the usual float form) or "normalized" (the
    lab's (x/255 - 0.1307) / 0.3081).
    """
    restored = restore_model(workdir, step)
    return predictor(restored.model, restored.variables)


def predictor(model, variables) -> Callable[..., np.ndarray]:
    """load_model's predict function for a model whose variables are already restored."""
    forward = jax.jit(lambda images: jax.nn.softmax(model.apply(variables, images)))

    def predict(images: np.ndarray, scale: str | None = None) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"predict takes images [N, 28, 28], got an array of shape {images.shape}.")
        scale = scale or ("pixels" if images.dtype == np.uint8 else None)
        if scale not in SCALES:
            raise ValueError(f"Float images need scale= one of {', '.join(SCALES)} (got {scale!r}): say whether "
                             "they hold 0..255, 0..1 or normalized values.")
        if scale == "normalized":
            return np.asarray(forward(jnp.asarray(images, jnp.float32)[..., None]))
        return np.asarray(forward(normalize(jnp.asarray(images), white=1.0 if scale == "unit" else 255.0)))

    return predict


def error_analysis(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str] = DIGITS) -> dict[str, Any]:
    """Confusion matrix (rows: the true class), per-class accuracy by class name, frequent confusions
    and every misclassified image (by class number); classes are the dataset's names."""
    n = len(classes)
    predictions = probabilities.argmax(axis=1)
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    per_class = {classes[c]: {"correct": int(confusion[c, c]), "total": int(confusion[c].sum()),
                              "accuracy": 100.0 * confusion[c, c] / max(confusion[c].sum(), 1)} for c in range(n)}
    off_diagonal = [(int(confusion[t, p]), t, p) for t in range(n) for p in range(n) if t != p and confusion[t, p]]
    wrong = np.flatnonzero(predictions != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predictions[wrong]], kind="stable")]  # most confident first
    return {
        "classes": list(classes),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "top_confusions": [{"true": t, "predicted": p, "count": n} for n, t, p in sorted(off_diagonal, key=lambda e: (-e[0], e[1], e[2]))],
        "misclassified": [{"index": int(i), "true": int(labels[i]), "predicted": int(predictions[i]),
                           "confidence": float(probabilities[i, predictions[i]])} for i in wrong],
    }


def load_run_data(run: dict[str, Any], data_dir: str | None = None,
                  idx_dir: str | None = None) -> tuple[data.MNIST, data.Source]:
    """MNIST from the given flags (other data, on purpose) or, when neither is given, from the
    source the run recorded (run is read_run's record or a checkpoint's meta): a relative path is
    taken from the folder the run started in, and files that now hold other images than the run
    trained on are refused. With the Source record that says which data it is."""
    config = run["config"]
    own = data_dir is None and idx_dir is None
    if own:
        data_dir, idx_dir = (where_recorded(config.get(name), run.get("cwd")) for name in ("data_dir", "idx_dir"))
    dataset = data.load(data_dir, idx_dir, config.get("cache_dir", ""), dataset_name(run))
    source = data.describe(dataset, data_dir, idx_dir, dataset_name(run))
    recorded = run.get("data")
    if own and recorded and recorded["fingerprint"] != source.fingerprint:
        raise data.DataError(f"The run trained on {recorded['name']} (fingerprint {recorded['fingerprint']}), but "
                             f"{source.name} now holds other images ({source.fingerprint}); give --data-dir or "
                             "--idx-dir to evaluate on other data on purpose.")
    return dataset, source


def dataset_name(run: dict[str, Any]) -> str:
    """The --dataset a run (read_run's record, or a checkpoint's meta) trained on."""
    return run["config"].get("dataset", "mnist")


def class_names(run: dict[str, Any]) -> tuple[str, ...]:
    """The names of the run's classes, in label order: "0".."9" for MNIST, "T-shirt/top".. for Fashion-MNIST."""
    return DATASETS[dataset_name(run)].classes


def evaluate_checkpoint(workdir: str | Path, step: str = "best", dataset: data.MNIST | None = None,
                        data_dir: str | None = None, idx_dir: str | None = None) -> dict[str, Any]:
    """Evaluate one checkpoint on every test image: the report that write_report saves. dataset
    (with data_dir or idx_dir naming it) replaces the run's own data."""
    restored = restore_model(workdir, step)
    meta = restored.meta
    if dataset is None:
        dataset, source = load_run_data(meta, data_dir, idx_dir)
    else:  # arrays from Python: checked against the run's classes, as loaded ones are
        data.check_arrays(dataset, dataset_name(meta))
        source = data.describe(dataset, data_dir, idx_dir, dataset_name(meta))
    totals, probabilities = probabilities_on_test_set(restored, dataset)
    count = int(totals.count)
    return {
        "step": restored.step, "epoch": meta["epoch"], "correct": int(totals.correct), "test_images": count,
        "test_accuracy": 100.0 * int(totals.correct) / count, "test_loss": float(totals.loss_sum) / count,
        "logged_correct": meta.get("correct"),
        # Which set ranks the run's checkpoints for "best" (ranking.rank), as its recipe says.
        "chosen_by": "validation" if meta["config"].get("validation") else "test",
        "dataset": dataset_name(meta),
        "data": source._asdict(),  # the images that "index" below refers to
        "run_data": meta.get("data"),  # what the run trained and logged on
        **error_analysis(dataset.test_labels, probabilities, class_names(meta)),
    }


def probabilities_on_test_set(restored: RestoredModel, dataset: data.MNIST) -> tuple[EvalTotals, np.ndarray]:
    """Every test image through a restored model, in its run's evaluation batches: the summed
    totals and the probabilities [N, classes]."""
    batch_size = restored.meta["config"].get("eval_batch_size", 500)
    batches = jax.device_put(stack_batches(dataset.test_images, dataset.test_labels, batch_size))
    totals, probabilities = evaluate(restored.model, restored.variables, batches)
    return totals, np.asarray(probabilities)


def restore_committee(workdirs: Sequence[str | Path], step: str = "best") -> list[RestoredModel]:
    """Each run's checkpoint (step applies to each), refused in one sentence unless every run is
    named once and all recorded the same data: a committee averages answers about the same images."""
    seen: dict[Path, str | Path] = {}
    for workdir in workdirs:
        if Path(workdir).resolve() in seen:
            raise WorkdirError(f"--workdir {workdir} is the same run as --workdir {seen[Path(workdir).resolve()]}: "
                               "name each member of a committee once.")
        seen[Path(workdir).resolve()] = workdir
    members = [restore_model(workdir, step) for workdir in workdirs]
    kinds = {dataset_name(member.meta) for member in members}
    if len(kinds) > 1:  # the same files, read as other classes: their probabilities cannot be averaged
        raise data.DataError(f"The runs learned different datasets ({', '.join(sorted(kinds))}): a committee's members "
                             "must answer with the same classes.")
    first = members[0].meta.get("data")
    for workdir, member in zip(workdirs, members):
        recorded = member.meta.get("data")
        if recorded is None or first is None:
            raise data.DataError(f"--workdir {workdir if recorded is None else workdirs[0]} does not record which "
                                 "data it was evaluated on, so it cannot join a committee.")
        if recorded["fingerprint"] != first["fingerprint"]:
            raise data.DataError(f"--workdir {workdirs[0]} was evaluated on {first['name']} (fingerprint "
                                 f"{first['fingerprint']}) but --workdir {workdir} on {recorded['name']} "
                                 f"({recorded['fingerprint']}): a committee's members must answer about the same images.")
    return members


def committee_probabilities(members: Sequence[RestoredModel],
                            dataset: data.MNIST) -> tuple[list[EvalTotals], np.ndarray, np.ndarray]:
    """Each member's test totals and probabilities [M, N, classes], and the committee's [N, classes]: their
    mean (the members' models may differ: each answers with a distribution over the same digits)."""
    evaluated = [probabilities_on_test_set(member, dataset) for member in members]
    member_probabilities = np.stack([probabilities for _, probabilities in evaluated])
    return [totals for totals, _ in evaluated], member_probabilities, member_probabilities.mean(axis=0)


def evaluate_committee(workdirs: Sequence[str | Path], step: str = "best", dataset: data.MNIST | None = None,
                       data_dir: str | None = None, idx_dir: str | None = None) -> dict[str, Any]:
    """Evaluate the committee of several runs on every test image: each member's accuracy, the
    committee's, its per-class accuracy and the images it misses, each with every member's answer.
    dataset (with data_dir or idx_dir naming it) replaces the runs' own data."""
    members = restore_committee(workdirs, step)
    if dataset is None:
        dataset, source = load_run_data(members[0].meta, data_dir, idx_dir)  # the same data as every member's
    else:
        source = data.describe(dataset, data_dir, idx_dir, dataset_name(members[0].meta))
    member_totals, member_probabilities, probabilities = committee_probabilities(members, dataset)
    labels, count = dataset.test_labels, len(dataset.test_labels)
    correct = int((probabilities.argmax(axis=1) == labels).sum())
    analysis = error_analysis(labels, probabilities, class_names(members[0].meta))
    member_answers = member_probabilities.argmax(axis=2)  # [M, N]
    for miss in analysis["misclassified"]:
        miss["members"] = member_answers[:, miss["index"]].tolist()
    return {
        "members": [{"workdir": str(workdir), "model": member.meta["config"].get("model", "lab"), "step": member.step,
                     "epoch": member.meta["epoch"], "correct": int(totals.correct), "test_images": int(totals.count),
                     "test_accuracy": 100.0 * int(totals.correct) / int(totals.count)}
                    for workdir, member, totals in zip(workdirs, members, member_totals)],
        "correct": correct, "test_images": count, "test_accuracy": 100.0 * correct / count,
        "dataset": dataset_name(members[0].meta), "data": source._asdict(),  # the images that "index" below refers to
        **analysis,  # of the committee's answers; each misclassified image also has every member's answer
    }


def write_report(workdir: str | Path, report: dict[str, Any]) -> Path:
    """<workdir>/eval/<step>.json, written atomically; OSError when the workdir is read-only,
    WorkdirError when eval/ or the file is a symbolic link (never written through)."""
    out = Path(workdir) / "eval"
    if out.is_symlink():
        raise WorkdirError(f"{out} is a symbolic link, not a folder jaxmnist made; move it away to save reports.")
    out.mkdir(exist_ok=True)
    path = out / f"{report['step']}.json"
    replace_file(path, json.dumps(report, indent=1) + "\n")
    return path


def print_report(report: dict[str, Any]) -> None:
    """The lab's accuracy line, then the per-class table, the confusion matrix and top confusions."""
    log.info("Checkpoint step %d (epoch %d)", report["step"], report["epoch"])
    if report.get("chosen_by") == "validation":
        log.info("The run's best checkpoint is chosen by validation accuracy: the test set took no part in choosing it.")
    elif report.get("chosen_by") == "test":
        log.info("The run's best checkpoint is chosen by test accuracy, as the lab's was: its test accuracy is an "
                 "optimistic estimate (--validation N chooses on held-out training images).")
    log.info("Test Accuracy: %d/%d (%.2f%%)  test loss %.4f",
             report["correct"], report["test_images"], report["test_accuracy"], report["test_loss"])
    run_data = report.get("run_data") or report["data"]
    if run_data["fingerprint"] != report["data"]["fingerprint"]:
        log.info("On %s (fingerprint %s), not the run's own %s.", report["data"]["name"], report["data"]["fingerprint"],
                 run_data["name"])
    elif report["logged_correct"] is not None and report["logged_correct"] != report["correct"]:
        log.warning("Training logged %d correct for this checkpoint, on the same images: the arithmetic differs "
                    "(another JAX version, JAX_ENABLE_X64, another device).", report["logged_correct"])
    _print_per_class(report["per_class"])
    names = report["classes"]
    if len(names) <= MATRIX_PRINTED:
        short = max(len(name) for name in names) <= 4  # else the columns go by number: "T-shirt/top" x 10 is too wide
        log.info("\nconfusion matrix (rows: true, columns: predicted%s)", "" if short else ", by class number")
        rows = names if short else [f"{name} {number}" for number, name in enumerate(names)]
        first = max(6, *(len(row) + 2 for row in rows))
        log.info(" " * first + "".join(f"{name if short else number:>6}" for number, name in enumerate(names)))
        for row, counts in zip(rows, report["confusion_matrix"]):
            log.info(row.rjust(first) + "".join(f"{n:>6d}" for n in counts))
    else:
        log.info("\nThe %dx%d confusion matrix is in the saved report and in `jaxmnist plot`'s confusion.png.",
                 len(names), len(names))
    log.info("\nmost frequent confusions (true -> predicted: count)")
    for entry in report["top_confusions"][:10]:
        log.info("  %s -> %s: %d", names[entry["true"]], names[entry["predicted"]], entry["count"])


MATRIX_PRINTED = 10  # classes: a wider confusion matrix does not fit a terminal's line


def _print_per_class(per_class: dict[str, dict[str, Any]]) -> None:
    width = max(5, *(len(name) for name in per_class))
    log.info("\n%s  correct / total  accuracy", "class".rjust(width))
    for name, row in per_class.items():
        log.info("%*s  %7d / %5d  %7.2f%%", width, name, row["correct"], row["total"], row["accuracy"])


def print_committee_report(report: dict[str, Any], step: str) -> None:
    """Each member's accuracy, the committee's, its per-class table and the first of its misses."""
    width = max(len("committee"), *(len(member["workdir"]) for member in report["members"]))
    log.info("Committee of %d runs (the mean of their probabilities), each at its %s checkpoint, on %s",
             len(report["members"]), step if step in ("best", "latest") else f"step {step}", report["data"]["name"])
    log.info("%-*s  %-6s  %6s  %11s  %8s", width, "member", "model", "step", "correct", "accuracy")
    for member in report["members"]:
        log.info("%-*s  %-6s  %6d  %5d/%5d  %7.2f%%", width, member["workdir"], member["model"], member["step"],
                 member["correct"], member["test_images"], member["test_accuracy"])
    log.info("%-*s  %-6s  %6s  %5d/%5d  %7.2f%%", width, "committee", "mean", "", report["correct"],
             report["test_images"], report["test_accuracy"])
    _print_per_class(report["per_class"])
    misses = report["misclassified"]
    shown = "" if not misses else ", surest first:" if len(misses) <= MISSES_SHOWN else f"; the {MISSES_SHOWN} it is surest of:"
    log.info("\nThe committee misses %d test images%s", len(misses), shown or ".")
    if misses:
        log.info("index  true  answer  probability  members' answers")
    names = report["classes"]
    for miss in misses[:MISSES_SHOWN]:
        log.info("%5d  %4s  %6s  %11.4f  %s", miss["index"], names[miss["true"]], names[miss["predicted"]],
                 miss["confidence"], " ".join(names[answer] for answer in miss["members"]))
    if len(misses) > MISSES_SHOWN:
        log.info("... and %d more.", len(misses) - MISSES_SHOWN)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, evaluate, print; every expected failure is one line and exit 1."""
    parser = checkpoint_parser(prog="python -m jaxmnist.evaluate", description="Restore a checkpoint and analyse its "
                               "errors on its dataset's test images; with several --workdir, the committee of those "
                               "runs (the mean of their probabilities).", committee=True)
    parser.add_argument("--data-dir", default=None, help="TFDS data directory (default: the run's own data source)")
    parser.add_argument("--idx-dir", default=None, help="read the run's dataset's IDX files from here instead of TFDS")
    parser.add_argument("--out", default=None, help="a committee's report as JSON, written to this file (default: "
                        "printed only; one run's report always goes to its eval/ folder)")
    args = parser.parse_args(argv)
    setup_console()
    return run_command(lambda: _evaluate_and_report(args))


def _evaluate_and_report(args) -> None:
    check_path_argument("--data-dir", args.data_dir)
    check_path_argument("--idx-dir", args.idx_dir)
    workdirs = args.workdir or [DEFAULT_WORKDIR]
    if len(workdirs) > 1:
        return _evaluate_committee_and_report(args, workdirs)
    if args.out is not None:
        raise WorkdirError(f"--out is for a committee (two or more --workdir); the report of one run goes to {workdirs[0]}/eval.")
    workdir = workdirs[0]
    report = evaluate_checkpoint(workdir, args.step, data_dir=args.data_dir, idx_dir=args.idx_dir)
    print_report(report)
    try:
        log.info("\nWritten to %s", write_report(workdir, report))
    except OSError as error:  # a read-only workdir: the report above is still whole
        log.warning("\nThe report was not saved: %s/eval cannot be written (%s).", workdir, error.strerror)
    except WorkdirError as error:
        log.warning("\nThe report was not saved: %s", error)


def _evaluate_committee_and_report(args, workdirs: list[str]) -> None:
    out = _check_out(args.out)  # before the work, so a bad --out costs nothing
    report = evaluate_committee(workdirs, args.step, data_dir=args.data_dir, idx_dir=args.idx_dir)
    print_committee_report(report, args.step)
    if out is not None:
        try:
            replace_file(out, json.dumps(report, indent=1) + "\n")
        except OSError as error:
            raise WorkdirError(f"--out {out} cannot be written ({error.strerror}); the report above is whole.") from None
        log.info("\nWritten to %s", out)


def _check_out(out: str | None) -> Path | None:
    """The committee report's file: None when not asked for; refused in one sentence unless it is
    a file (new or old) in a folder that exists."""
    check_path_argument("--out", out)
    if out is None or not out.strip():
        return None
    path = Path(out)
    if path.is_dir():
        raise WorkdirError(f"--out {out} is a folder; name the file the committee's report should go to.")
    if not path.parent.is_dir():
        raise WorkdirError(f"--out {out}: the folder {path.parent} does not exist.")
    return path
