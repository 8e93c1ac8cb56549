"""train_and_evaluate: one training run, from its checks to its last epoch, resumed where it stopped.

Read _train as the Flax example's loop: for each epoch, train its chunks of steps, evaluate,
log, save. Around it, each in one place:
- train_and_evaluate: every check that can refuse the run, before anything is written; then the
  workdir's lock, and --restart's removal;
- resume.py: which checkpoint the run continues from, and whether it is this run's at all;
- Saver (below): a save at each epoch's end, every --checkpoint-seconds, and before a stop,
  asked once per chunk, as CLU's periodic actions are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import jax
import numpy as np

from jaxmnist.config import Config
from jaxmnist.core.loops import DeviceDataset, TrainTotals, chunks, epoch_order, evaluate, make_runner, num_batches, stack_batches
from jaxmnist.core.models import build_model
from jaxmnist.core.steps import EvalTotals, StepOptions, create_train_state, derive_keys, learning_rate_schedule
from jaxmnist.runtime import data, parallel, peers
from jaxmnist.runtime import workdir as workdirs
from jaxmnist.runtime.checkpoint import Checkpoints
from jaxmnist.runtime.dashboard import Dashboard
from jaxmnist.runtime.ranking import chosen_by
from jaxmnist.runtime.reporting import MetricsLog, Progress, epoch_line, log, train_line, write_config
from jaxmnist.runtime.resume import resume, run_identity
from jaxmnist.runtime.stopping import NOT_STARTED, Interrupted, StopRequest, TrainingStopped, stop_if_asked, stop_on_signals


def train_and_evaluate(config: Config, dataset: data.MNIST | None = None,
                       stop: StopRequest | None = None) -> list[dict[str, Any]]:
    """Train and evaluate per epoch; returns this process's epoch records. dataset replaces the
    data flags (tests); it is checked as loaded data is. stop is set by Ctrl-C and SIGTERM (by
    default this call catches them itself, while it runs)."""
    if stop is None:
        with stop_on_signals() as stop:
            return train_and_evaluate(config, dataset, stop)
    # 1. Every check that can refuse the run, before anything is written.
    for flag, value in (("--workdir", config.workdir), ("--data-dir", config.data_dir), ("--idx-dir", config.idx_dir),
                        ("--cache-dir", config.cache_dir)):
        workdirs.check_path_argument(flag, value)
    path = workdirs.check_workdir(config.workdir)
    dataset, source = _load_data(config, dataset)
    peers.check_same_everywhere(_same_on_every_process(config, source), wait_seconds=config.join_timeout)
    stop_if_asked(stop)
    mesh = parallel.make_mesh(config.devices)
    parallel.check_divisible(mesh, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)

    # 2. Take the workdir; only then may what an earlier run wrote be discarded.
    with _own_workdir(path) as metrics:
        stop_if_asked(stop)
        if config.restart:
            parallel.on_main_process("restart", lambda: workdirs.discard_previous_run(path))
        return _train(config, path, dataset, source, mesh, metrics, stop)


PER_HOST_SETTINGS = ("data_dir", "idx_dir", "cache_dir", "progress")  # may differ: what they read is compared


def _same_on_every_process(config: Config, source: data.Source) -> dict[str, Any]:
    """What every process of a run must share: its flags but where each host keeps things, and the
    data itself."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in PER_HOST_SETTINGS}
    return settings | {"data": source.fingerprint}


def _train(config: Config, path: Path, dataset: data.MNIST, source: data.Source, mesh, metrics: MetricsLog,
           stop: StopRequest) -> list[dict[str, Any]]:
    (train_images, train_labels), (val_images, val_labels) = split_validation(dataset, config.validation)
    num_train = len(train_images)
    steps_per_epoch = num_batches(num_train, config.batch_size)
    model = build_model(config)
    keys = derive_keys(config.seed)
    state = create_train_state(config, keys.init, steps_per_epoch)
    eval_sets = {"test": stack_batches(dataset.test_images, dataset.test_labels, config.eval_batch_size)}
    if config.validation:
        eval_sets["validation"] = stack_batches(val_images, val_labels, config.eval_batch_size)
    train_set = DeviceDataset(train_images, train_labels)
    keys, state, totals, train_set, eval_sets = parallel.replicate((keys, state, TrainTotals.zeros(), train_set, eval_sets),
                                                                   mesh)
    batch_sharding = parallel.batch_sharded(mesh)
    run_steps = make_runner(config.loop, jax.default_backend(), StepOptions.from_config(config), batch_sharding)
    schedule = jax.jit(learning_rate_schedule(config, steps_per_epoch))  # for the records: one program, not one per op

    checkpoints = Checkpoints(path / "checkpoints")
    progress = Progress(config.progress and parallel.is_main_process())
    with checkpoints, progress:  # saves reach the disk before the process ends
        identity = run_identity(config, source, mesh.devices.size)
        state, totals, step, meta = resume(checkpoints, config, source, mesh.devices.size, identity["model_digest"], state,
                                           totals, steps_per_epoch)
        evaluated = "test_accuracy" in meta or not step  # an epoch-end checkpoint holds its epoch's record
        _start_records(config, path, metrics, identity, mesh, step, meta, stop)
        _say_where_it_starts(step, steps_per_epoch, config.epochs, evaluated)
        saver = Saver(checkpoints, identity, steps_per_epoch, config.checkpoint_seconds, saved_step=step)
        best_accuracy = saver.best_accuracy()
        clock = EpochClock(float(jax.device_get(totals.images)))  # a resumed epoch: what it trained before
        records = []

        # An epoch whose last step is saved but not yet evaluated is finished first.
        first_epoch = step // steps_per_epoch + 1 if evaluated else math.ceil(step / steps_per_epoch)
        metrics.warn_of_missing_epochs(first_epoch - 1)
        for epoch in range(first_epoch, config.epochs + 1):
            order = parallel.replicate(epoch_order(jax.random.fold_in(keys.shuffle, epoch), num_train, config.batch_size),
                                       mesh)
            first_index = step - (epoch - 1) * steps_per_epoch
            progress.start(epoch, num_train, min(first_index * config.batch_size, num_train))
            for start, end in chunks(first_index, steps_per_epoch, config.log_every):
                saver.between_chunks(stop, step, state, totals, where=_where(epoch, start, steps_per_epoch))
                with _traced(_profile_dir(config, path, start)) as traced:
                    state, totals, loss = run_steps(state, totals, train_set, order, end - start, keys.augment)
                    traced.append(loss)  # a trace waits for the steps to run, not only to be dispatched
                step += end - start
                progress.advance(min(end * config.batch_size, num_train) - min(start * config.batch_size, num_train))
                if (end - 1) % config.log_every == 0:  # the chunk ends just after a log point: read its loss
                    _log_train_loss(float(loss), epoch, end - 1, step, config, num_train, steps_per_epoch, metrics, saver)
            progress.close()

            record = epoch_record(model, epoch, step, state, totals, eval_sets, batch_sharding, schedule, clock)
            metrics.write(record)
            records.append(record)
            log.info(epoch_line(record))
            # The checkpoint holds what a resume starts the next epoch with: its totals are zero.
            totals, clock = parallel.replicate(TrainTotals.zeros(), mesh), EpochClock(0.0)
            saver.save(step, state, totals, record)
            chosen_on, accuracy = chosen_by(record)
            if accuracy > best_accuracy:
                best_accuracy = accuracy
                log.info("Best model saved with %saccuracy: %.2f%%", "validation " if chosen_on == "validation" else "",
                         best_accuracy)
    return records


def split_validation(dataset: data.MNIST, validation: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(images, labels) to train on, and (images, labels) held out: --validation N holds out the
    training split's last N images, the same whatever the seed. The data's fingerprint stays the
    whole split's: the split is the recipe's, not the data's."""
    split = len(dataset.train_images) - validation
    return ((dataset.train_images[:split], dataset.train_labels[:split]),
            (dataset.train_images[split:], dataset.train_labels[split:]))


class Saver:
    """When the state goes to disk: at each epoch's end with its record (a candidate for best),
    every `every_seconds` of wall time, and before a stop; never twice for one step. Asked once
    per chunk, between chunks, where the state is whole."""

    def __init__(self, checkpoints: Checkpoints, identity: dict[str, Any], steps_per_epoch: int, every_seconds: float,
                 saved_step: int):
        self.checkpoints, self.identity, self.steps_per_epoch = checkpoints, identity, steps_per_epoch
        self.every_seconds = every_seconds
        self.saved_step, self.last_save = saved_step, time.perf_counter()  # what is on disk: the resumed state

    def save(self, step: int, state, totals: TrainTotals, record: dict[str, Any] | None = None) -> None:
        counters = {"step": state.step, **totals._asdict()}
        about = self.identity | {"step": step, "epoch": step // self.steps_per_epoch}
        rank = None
        if record is not None:  # an epoch's end: its accuracies make it a candidate for best (ranking.rank)
            about |= {k: record[k] for k in ("test_accuracy", "correct", "test_loss")} | {"record": record}
            rank = {k: record[k] for k in ("test_accuracy", "val_accuracy") if k in record} | {"step": step}
        self.checkpoints.save(step, state, counters, about, rank)
        if record is not None:
            self.checkpoints.wait()  # on disk before the console says "Best model saved" (a kill after it loses nothing)
        self.saved_step, self.last_save = step, time.perf_counter()

    def between_chunks(self, stop: StopRequest, step: int, state, totals: TrainTotals, where: str) -> None:
        """Save if one is due or a stop was asked for (every process agrees on both), then stop if asked."""
        self.checkpoints.check()  # a failed save ends the run now, not at its end
        stop_signal, save_due = parallel.agree(stop.signal, time.perf_counter() - self.last_save > self.every_seconds)
        if (stop_signal or save_due) and self.saved_step != step:
            self.save(step, state, totals)
        if stop_signal:
            if not step:
                raise Interrupted(NOT_STARTED, stop_signal)
            raise Interrupted(f"Stopped at step {step} ({where}); the state is saved: run the same command again to "
                              "resume.", stop_signal)

    def best_accuracy(self) -> float:
        """The accuracy that chose the best checkpoint so far (on validation or test); -1 before any."""
        best = self.checkpoints.best_step()
        return chosen_by(self.checkpoints.metrics(best))[1] if best is not None else -1.0

    def what_is_kept(self) -> str:
        best = self.checkpoints.best_step()
        if best is None:
            return "No epoch had ended, so no checkpoint is kept; try a lower --lr."
        chosen_on, accuracy = chosen_by(self.checkpoints.metrics(best))
        on = " on validation" if chosen_on == "validation" else ""
        return f"The best checkpoint (step {best}, {accuracy:.2f}%{on}) is kept."


class EpochClock:
    """This process's share of an epoch: wall time since it started training it, and images trained
    before then (a resumed epoch counts only what this process trained)."""

    def __init__(self, images_before: float):
        self.start = time.perf_counter()
        self.images_before = images_before


def epoch_record(model, epoch: int, step: int, state, totals: TrainTotals, eval_sets: dict[str, Any], batch_sharding,
                   schedule, clock: EpochClock) -> dict[str, Any]:
    """The epoch's record: its training loss, accuracy and speed, and the loss and accuracy on each
    of eval_sets ("test", and "validation" where the run holds one out)."""
    jax.block_until_ready(state)  # the device may still be training: time it, not the dispatch
    train_seconds = time.perf_counter() - clock.start
    results = {name: evaluate(model, state.variables(), batches, batch_sharding, with_probabilities=False)[0]
               for name, batches in eval_sets.items()}
    totals, results = jax.device_get((totals, results))
    test = _scores(results["test"])
    record = {
        "kind": "epoch", "epoch": epoch, "step": step,
        "lr": float(schedule(step - 1)),  # the rate this epoch's updates used
        "train_loss": float(totals.loss_sum / max(totals.images, 1)),
        # null where a resume from a checkpoint older than the counter cannot know it (resume.py)
        "train_accuracy": _percentage(totals.correct, totals.images),
        "test_loss": test.loss, "test_accuracy": test.accuracy, "correct": test.correct, "test_images": test.count,
        "train_seconds": round(train_seconds, 3), "epoch_seconds": round(time.perf_counter() - clock.start, 3),
        "images_per_second": round((float(totals.images) - clock.images_before) / max(train_seconds, 1e-9), 1),
    }
    if "validation" in results:
        validation = _scores(results["validation"])
        record |= {"val_loss": validation.loss, "val_accuracy": validation.accuracy, "val_correct": validation.correct,
                   "val_images": validation.count}
    if not math.isfinite(record["train_loss"]):
        raise TrainingStopped(f"The training loss became {record['train_loss']} in epoch {epoch}; stopped.")
    return record


class Scores(NamedTuple):
    """One evaluation set's results, as the epoch's record states them."""

    loss: float  # the mean cross-entropy
    accuracy: float  # a percentage
    correct: int
    count: int


def _scores(totals: EvalTotals) -> Scores:
    count = int(totals.count)
    return Scores(float(totals.loss_sum / count), 100.0 * int(totals.correct) / count, int(totals.correct), count)


def _percentage(part, whole) -> float | None:
    """100 * part / whole; None where part is not known (NaN) or there is no whole."""
    return 100.0 * float(part) / float(whole) if math.isfinite(part) and whole > 0 else None


def _log_train_loss(loss: float, epoch: int, index: int, step: int, config: Config, num_train: int, steps_per_epoch: int,
                    metrics: MetricsLog, saver: Saver) -> None:
    """The lab's progress line at a log point, its record, and a stop if the loss is not a number."""
    log.info(train_line(epoch, index, config.batch_size, num_train, steps_per_epoch, loss))
    metrics.write({"kind": "train", "epoch": epoch, "step": step, "loss": loss})
    if not math.isfinite(loss):
        raise TrainingStopped(f"The training loss became {loss} at epoch {epoch}, step {step}; stopped. "
                              + saver.what_is_kept())


def _where(epoch: int, index: int, steps_per_epoch: int) -> str:
    """Where a stop before batch index of epoch leaves the run, for its last line."""
    return f"the end of epoch {epoch - 1}" if index == 0 else f"batch {index} of {steps_per_epoch} in epoch {epoch}"


def _start_records(config: Config, path: Path, metrics: MetricsLog, identity: dict[str, Any], mesh, step: int,
                   meta: dict[str, Any], stop: StopRequest) -> None:
    """metrics.jsonl cut back to the resumed step (records past it are replayed, not written twice),
    its torn epoch record restored from the checkpoint, and config.json (re)written."""
    if not step:
        stop_if_asked(stop)  # before config.json: a run stopped before its first step leaves no trace
    if parallel.is_main_process():
        metrics.truncate_after(step)
        if "record" in meta and not any(r["step"] == step for r in metrics.records("epoch")):
            metrics.write(meta["record"])  # its line was torn by a kill: the checkpoint has it
        write_config(path, identity, parallel.describe(mesh))
    log.info("Using device: %s", parallel.describe(mesh))


def _say_where_it_starts(step: int, steps_per_epoch: int, epochs: int, evaluated: bool) -> None:
    if step >= epochs * steps_per_epoch and evaluated:
        log.info("This run already finished %d epoch%s; pass more --epochs to continue it, or --restart.",
                 step // steps_per_epoch, "" if step // steps_per_epoch == 1 else "s")
    elif step:
        log.info("Resuming from epoch %d, step %d", step // steps_per_epoch + 1, step)


def _load_data(config: Config, dataset: data.MNIST | None) -> tuple[data.MNIST, data.Source]:
    if dataset is None:  # process 0 first: a TFDS download and the decoded cache are written once
        dataset = parallel.main_process_first("data", lambda: data.load(config.data_dir, config.idx_dir, config.cache_dir))
    data.check_sizes(dataset, config.allow_small_data)
    num_train = len(split_validation(dataset, config.validation)[0][0])
    if config.validation and num_train < config.batch_size:
        raise data.DataError(f"--validation {config.validation} leaves {max(num_train, 0):,} of the "
                             f"{len(dataset.train_images):,} training images to train on, fewer than one batch "
                             f"(--batch-size {config.batch_size}).")
    if config.batch_size > num_train:
        raise data.DataError(f"--batch-size {config.batch_size} is larger than the {num_train:,} training images.")
    return dataset, data.describe(dataset, config.data_dir, config.idx_dir)


@contextlib.contextmanager
def _own_workdir(path: Path) -> Iterator[MetricsLog]:
    """Create and lock the workdir on process 0 for the run's whole life; a run that fails before
    writing anything leaves no empty folder behind."""
    if not parallel.is_main_process():
        yield MetricsLog(path / "metrics.jsonl", enabled=False)
        return
    created = workdirs.create(path)
    try:
        with workdirs.exclusive(path):
            metrics = MetricsLog(path / "metrics.jsonl", dashboard=Dashboard(path / "tensorboard"))
            try:
                yield metrics
            finally:
                metrics.close()
    finally:
        if created:
            workdirs.remove_if_unused(path)


def _profile_dir(config: Config, path: Path, start: int) -> Path | None:
    """--profile traces the chunk after the first log point, compiled by then."""
    return path / "profile" if config.profile and start == 1 and parallel.is_main_process() else None


@contextlib.contextmanager
def _traced(directory: Path | None) -> Iterator[list]:
    """A jax.profiler trace of the work inside, into directory (None: no trace), readable in
    TensorBoard's profile tab or Perfetto. The arrays appended to the list it yields are waited
    for before the trace ends."""
    outputs: list = []
    if directory is None:
        yield outputs
        return
    jax.profiler.start_trace(str(directory))
    try:
        yield outputs
    finally:
        jax.block_until_ready(outputs)
        jax.profiler.stop_trace()
        log.info("Profile of the steps after the first log point written to %s", directory)
