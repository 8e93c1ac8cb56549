"""train_and_evaluate: one training run, from its checks to its last epoch, resumed where it stopped.

Read `train` as the Flax example's loop: for each epoch, its steps (in chunks between log points),
evaluate, log, save. `start` makes the Run it works with, once every check that can refuse the run
has passed in every process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax

from jaxmnist import data
from jaxmnist.config import Config
from jaxmnist.core.loops import DeviceDataset, TrainTotals, chunks, epoch_order, evaluate, make_runner, num_batches, stack_batches
from jaxmnist.core.models import build_model
from jaxmnist.core.steps import StepOptions, create_train_state, derive_keys, learning_rate_schedule
from jaxmnist.errors import UserError
from jaxmnist.files import exclusive
from jaxmnist.runtime import parallel
from jaxmnist.runtime import workdir as workdirs
from jaxmnist.runtime.checkpoint import Checkpoints
from jaxmnist.ranking import chosen_by
from jaxmnist.metrics import MetricsLog
from jaxmnist.runtime.reporting import epoch_line, log, train_line, write_config
from jaxmnist.runtime.resume import resume, run_identity
from jaxmnist.runtime.stopping import NOT_STARTED, Interrupted, StopRequest, TrainingStopped, stop_if_asked, stop_on_signals

Watcher = Callable[[dict[str, Any]], None]  # of each record metrics.jsonl gets
ProgressHook = Callable[[int, int, int], None]  # (epoch, its images trained so far, of how many)


@dataclasses.dataclass
class Run:
    """What a run works with, made once by `start`: its settings and folder, the data on the
    devices, the model and the compiled step runner."""

    config: Config
    path: Path
    metrics: MetricsLog
    mesh: Any
    model: Any  # the flax module of --model
    identity: dict[str, Any]  # what config.json and every checkpoint record (resume.run_identity)
    train_set: DeviceDataset
    eval_sets: dict[str, Any]  # "test", and "validation" with --validation N
    num_train: int
    steps_per_epoch: int
    run_steps: Callable
    schedule: Callable  # the learning rate by step, for the records
    on_progress: ProgressHook


def train_and_evaluate(config: Config, dataset: data.MNIST | None = None, stop: StopRequest | None = None,
                       on_record: Watcher | None = None, on_progress: ProgressHook | None = None) -> list[dict[str, Any]]:
    """Train and evaluate per epoch; returns this process's epoch records. dataset replaces the
    data flags (tests, notebooks), checked as loaded data are. stop is set by Ctrl-C, SIGTERM and
    SIGHUP (by default this call catches them itself, while it runs). on_record sees each record as
    metrics.jsonl gets it (TensorBoard, live curves); on_progress after each chunk of steps (a
    progress bar)."""
    if stop is None:
        with stop_on_signals() as stop:
            return train_and_evaluate(config, dataset, stop, on_record, on_progress)
    with contextlib.ExitStack() as held:  # the workdir's lock, for the run's whole life
        return train(start(config, dataset, stop, held, on_record, on_progress), stop)


def train(run: Run, stop: StopRequest) -> list[dict[str, Any]]:
    config, records = run.config, []
    keys = parallel.replicate(derive_keys(config.seed), run.mesh)
    state = parallel.replicate(create_train_state(config, keys.init, run.steps_per_epoch), run.mesh)
    totals = parallel.replicate(TrainTotals.zeros(), run.mesh)
    with Checkpoints(run.path / "checkpoints", stop=stop, every_seconds=config.checkpoint_seconds) as checkpoints:
        state, totals, step, meta = resume(checkpoints, run, state, totals)
        _stop_if_asked(checkpoints, step, run.steps_per_epoch)  # before config.json: a stopped start leaves no trace
        _start_records(run, step, meta)
        best = (_best(checkpoints) or (None, "", -1.0))[2]  # the accuracy that chose the best so far

        for epoch in range(step // run.steps_per_epoch + 1, config.epochs + 1):
            order = parallel.replicate(epoch_order(jax.random.fold_in(keys.shuffle, epoch), run.num_train,
                                                   config.batch_size), run.mesh)
            started, images_before = time.perf_counter(), float(jax.device_get(totals.images))
            for begin, end in chunks(step - (epoch - 1) * run.steps_per_epoch, run.steps_per_epoch, config.log_every):
                if step and checkpoints.manager.should_save(step):  # Orbax's policies: the interval, or a stop asked for
                    _save(run, checkpoints, step, state, totals)
                _stop_if_asked(checkpoints, step, run.steps_per_epoch)
                with _profiled(config.profile and begin == 1 and parallel.is_main_process(), run.path) as traced:
                    state, totals, loss = run.run_steps(state, totals, run.train_set, order, end - begin, keys.augment)
                    traced(loss)
                step += end - begin
                run.on_progress(epoch, min(end * config.batch_size, run.num_train), run.num_train)
                if (end - 1) % config.log_every == 0:  # the chunk ends just after a log point: read its loss
                    _log_train_loss(run, float(loss), epoch, end - 1, step, checkpoints)

            record = epoch_record(run, state, totals, epoch, step, started, images_before)
            _stop_if_diverged(record["train_loss"], f"in epoch {epoch}", checkpoints)
            run.metrics.write(record)
            records.append(record)
            log.info(epoch_line(record))
            totals = parallel.replicate(TrainTotals.zeros(), run.mesh)  # what a resume starts the next epoch with
            _save(run, checkpoints, step, state, totals, record)
            checkpoints.wait()  # on disk before the console says "Best model saved": a kill after it loses nothing
            chosen_on, accuracy = chosen_by(record)
            if accuracy > best:
                best = accuracy
                log.info("Best model saved with %saccuracy: %.2f%%", "validation " if chosen_on == "validation" else "", best)
    return records


def start(config: Config, dataset: data.MNIST | None, stop: StopRequest, held: contextlib.ExitStack,
          on_record: Watcher | None = None, on_progress: ProgressHook | None = None) -> Run:
    """Every check that can refuse the run, then process 0 creates and locks the workdir for the
    run's whole life. Each process's outcome is agreed by all before anything is written: one
    fails, all end with its sentence."""
    failure, settings = None, {}
    try:
        stop_if_asked(stop)  # a stop while JAX loaded
        path, config = workdirs.check_for_run(config, data_given=dataset is not None)
        dataset, source = data.for_run(config, dataset)
        settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in PER_HOST_SETTINGS}
        settings["data"] = source.fingerprint  # what each host reads must be the same, wherever it is
        mesh = parallel.make_mesh(config.devices)
        parallel.check_divisible(mesh, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)
        stop_if_asked(stop)
        if parallel.is_main_process():  # a run that fails before writing anything leaves no folder behind
            held.enter_context(workdirs.created(path))
            held.enter_context(exclusive(path))
    except UserError as error:
        failure = error
    parallel.agree_on_start(failure, settings, config.join_timeout)
    if config.restart:
        parallel.on_main_process("restart", lambda: workdirs.discard_previous_run(path))

    (train_images, train_labels), (val_images, val_labels) = data.split_validation(dataset, config.validation)
    eval_sets = {"test": stack_batches(dataset.test_images, dataset.test_labels, config.eval_batch_size)}
    if config.validation:
        eval_sets["validation"] = stack_batches(val_images, val_labels, config.eval_batch_size)
    steps_per_epoch = num_batches(len(train_images), config.batch_size)
    train_set, eval_sets = parallel.replicate((DeviceDataset(train_images, train_labels), eval_sets), mesh)
    run_steps = make_runner(config.loop, jax.default_backend(), StepOptions.from_config(config), parallel.batch_sharded(mesh))
    metrics = MetricsLog(path / "metrics.jsonl", enabled=parallel.is_main_process(), on_record=on_record)
    return Run(config, path, metrics, mesh, build_model(config), run_identity(config, source, mesh.devices.size),
               train_set, eval_sets, len(train_images), steps_per_epoch, run_steps,
               jax.jit(learning_rate_schedule(config, steps_per_epoch)),  # one program, not one per op
               on_progress or (lambda *_: None))


PER_HOST_SETTINGS = ("data_dir", "idx_dir", "cache_dir", "progress")  # may differ: what they read is compared


def _save(run: Run, checkpoints: Checkpoints, step: int, state, totals: TrainTotals, record: dict | None = None) -> None:
    """Hand the state to Orbax; an epoch's end carries its record, and its accuracies rank it (ranking.rank)."""
    meta = run.identity | {"step": step, "epoch": step // run.steps_per_epoch}
    rank = None
    if record is not None:
        meta |= {k: record[k] for k in ("test_accuracy", "correct", "test_loss")} | {"record": record}
        rank = {k: record[k] for k in ("test_accuracy", "val_accuracy") if k in record} | {"step": step}
    checkpoints.save(step, state, {"step": state.step, **totals._asdict()}, meta, rank)


def _stop_if_asked(checkpoints: Checkpoints, step: int, steps_per_epoch: int) -> None:
    """A stop asked for (in any process) ends the run here; Orbax's policy has just saved the state."""
    signum = checkpoints.stop_signal(step)
    if signum:
        checkpoints.wait()
        if not step:
            raise Interrupted(NOT_STARTED, signum)
        index = step % steps_per_epoch
        where = f"batch {index} of {steps_per_epoch} in epoch {step // steps_per_epoch + 1}" if index else \
            f"the end of epoch {step // steps_per_epoch}"
        raise Interrupted(f"Stopped at step {step} ({where}); the state is saved: run the same command again to "
                          "resume.", signum)


def epoch_record(run: Run, state, totals: TrainTotals, epoch: int, step: int, started: float,
                 images_before: float) -> dict[str, Any]:
    """The epoch's record: its training loss, accuracy and speed (this process's share of the
    epoch, from `started`), and the loss and accuracy on each evaluation set."""
    jax.block_until_ready(state)  # the device may still be training: time it, not the dispatch
    train_seconds = time.perf_counter() - started
    sharding = parallel.batch_sharded(run.mesh)
    results = {name: evaluate(run.model, state.variables(), batches, sharding, with_probabilities=False)[0]
               for name, batches in run.eval_sets.items()}
    totals, results = jax.device_get((totals, results))
    test = _scores(results["test"])
    record = {"kind": "epoch", "epoch": epoch, "step": step, "lr": float(run.schedule(step - 1)),  # this epoch's rate
              "train_loss": float(totals.loss_sum / max(totals.images, 1)),
              "train_accuracy": 100.0 * float(totals.correct) / float(totals.images) if totals.images > 0 else None,
              "test_loss": test[0], "test_accuracy": test[1], "correct": test[2], "test_images": test[3],
              "train_seconds": round(train_seconds, 3), "epoch_seconds": round(time.perf_counter() - started, 3),
              "images_per_second": round((float(totals.images) - images_before) / max(train_seconds, 1e-9), 1)}
    if "validation" in results:
        record |= dict(zip(("val_loss", "val_accuracy", "val_correct", "val_images"), _scores(results["validation"])))
    return record


def _scores(totals) -> tuple[float, float, int, int]:
    """One evaluation set's mean loss, accuracy in percent, images read right, and images."""
    correct, count = int(totals.correct), int(totals.count)
    return float(totals.loss_sum / count), 100.0 * correct / count, correct, count


def _log_train_loss(run: Run, loss: float, epoch: int, index: int, step: int, checkpoints: Checkpoints) -> None:
    """The lab's progress line at a log point, its record, and a stop if the loss is not a number."""
    log.info(train_line(epoch, index, run.config.batch_size, run.num_train, run.steps_per_epoch, loss))
    run.metrics.write({"kind": "train", "epoch": epoch, "step": step, "loss": loss})
    _stop_if_diverged(loss, f"at epoch {epoch}, step {step}", checkpoints)


def _best(checkpoints: Checkpoints) -> tuple[int, str, float] | None:
    """The best checkpoint so far: (its step, the set that chose it, that set's accuracy); None before any epoch ended."""
    step = checkpoints.best_step()
    return None if step is None else (step, *chosen_by(checkpoints.manager.metrics(step)))


def _stop_if_diverged(loss: float, where: str, checkpoints: Checkpoints) -> None:
    """A loss that is not a number ends the run, saying which checkpoint is kept."""
    if math.isfinite(loss):
        return
    best = _best(checkpoints)
    if best is None:
        kept = "No epoch had ended, so no checkpoint is kept; try a lower --lr."
    else:
        step, chosen_on, accuracy = best
        kept = f"The best checkpoint (step {step}, {accuracy:.2f}%{' on validation' if chosen_on == 'validation' else ''}) is kept."
    raise TrainingStopped(f"The training loss became {loss} {where}; stopped. {kept}")


def _start_records(run: Run, step: int, meta: dict[str, Any]) -> None:
    """metrics.jsonl cut back to the resumed step, its torn epoch record restored from the checkpoint,
    config.json (re)written; then where the run starts."""
    if parallel.is_main_process():
        run.metrics.truncate_after(step)  # records past the step are replayed, not written twice
        if "record" in meta and not any(r["step"] == step for r in run.metrics.records("epoch")):
            run.metrics.write(meta["record"])  # its line was torn by a kill: the checkpoint has it
        run.metrics.warn_of_missing_epochs(step // run.steps_per_epoch)
        write_config(run.path, run.identity, parallel.describe(run.mesh))
    log.info("Using device: %s", parallel.describe(run.mesh))
    epochs_done = step // run.steps_per_epoch
    if epochs_done >= run.config.epochs:
        more = ("pass more --epochs to continue it" if run.config.schedule == "step" else
                "its cosine schedule ends there, so a longer run is a new one: another --workdir")
        log.info("This run already finished %d epoch%s; %s, or --restart.", epochs_done, "" if epochs_done == 1 else "s",
                 more)
    elif step:
        log.info("Resuming from epoch %d, step %d", epochs_done + 1, step)


@contextlib.contextmanager
def _profiled(wanted: bool, path: Path):
    """--profile: a jax.profiler trace of the chunk after the first log point (compiled by then) into
    <workdir>/profile (TensorBoard, Perfetto); the chunk's result is handed to what it yields, so
    that the trace waits for the steps to run, not only to be dispatched."""
    if not wanted:
        yield lambda result: None
        return
    with jax.profiler.trace(str(path / "profile")):
        yield jax.block_until_ready
    log.info("Profile of the steps after the first log point written to %s", path / "profile")
