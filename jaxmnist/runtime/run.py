"""train_and_evaluate: one training run, from its checks to its last epoch, resumed where it stopped.

The one place where the pure steps meet files, devices and the console. It reads top to bottom:
1. check everything (the workdir, the data, the devices) before writing anything;
2. take the workdir (a lock; --restart's removal), place the state on the devices, resume;
3. one loop over global steps, whose every turn asks the step number the same questions:
   has an epoch just ended (evaluate, log, save)? is the run done? was a stop asked for (save,
   stop)? is a save due? Then it trains up to the next log point or epoch end.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import jax

from jaxmnist.config import Config
from jaxmnist.core.loops import (
    DeviceDataset,
    TrainTotals,
    epoch_order,
    evaluate,
    make_runner,
    stack_batches,
)
from jaxmnist.core.models import build_model
from jaxmnist.core.steps import (
    StepOptions,
    create_train_state,
    derive_keys,
    learning_rate_schedule,
    steps_per_epoch,
)
from jaxmnist.errors import UserError
from jaxmnist.runtime import data, parallel
from jaxmnist.runtime import workdir as workdirs
from jaxmnist.runtime.checkpoint import (
    CheckpointError,
    Checkpoints,
    DamagedCheckpoint,
    OtherModel,
    UnreadableCheckpoint,
)
from jaxmnist.runtime.dashboard import Dashboard
from jaxmnist.runtime.reporting import (
    MetricsLog,
    Progress,
    epoch_line,
    log,
    train_line,
    write_config,
)
from jaxmnist.runtime.stopping import StopRequest, exit_code, stop_on_signals
from jaxmnist.runtime.workdir import WorkdirError, check_resumable


class TrainingStopped(UserError):
    """The run stopped early; the message says why and what is kept."""


class Interrupted(TrainingStopped):
    """Ctrl-C or SIGTERM: the state was saved and the run can be resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = exit_code(signum)


DETERMINISTIC_GPU_FLAG = "--xla_gpu_deterministic_ops=true"


def configure_jax(config: Config) -> None:
    """The process-wide JAX settings a run asks for, applied through JAX's own configuration:
    determinism on GPUs, the compilation cache, and the precision of convolutions and matmuls.
    Call it before anything touches a device: XLA reads its flags when the backend starts."""
    if config.deterministic and DETERMINISTIC_GPU_FLAG not in os.environ.get("XLA_FLAGS", ""):
        # Deterministic reductions and convolution algorithms: the same seed, the same numbers.
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DETERMINISTIC_GPU_FLAG}".strip()
    if config.cache_dir:  # '' leaves JAX's default: no persistent cache
        jax.config.update("jax_compilation_cache_dir", str(Path(config.cache_dir).expanduser() / "xla"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    # float32 is exact float32 everywhere (GPUs otherwise round inputs to TF32's 10-bit mantissa).
    jax.config.update("jax_default_matmul_precision", "highest" if config.precision == "float32" else "tensorfloat32")


def next_boundary(index: int, num_steps: int, log_every: int) -> int:
    """Where the chunk of steps that starts at batch index of an epoch ends: just after the next log
    point (the batches whose index is a multiple of log_every), or at the epoch's end."""
    return min(-(-index // log_every) * log_every + 1, num_steps)


NOT_STARTED = "Stopped before training started; run the same command to start again."


def stop_if_asked(stop: StopRequest) -> None:
    """Between the steps of starting up: end now, in one line, if a stop was asked for."""
    if stop.signal:
        raise Interrupted(NOT_STARTED, stop.signal)


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
    stop_if_asked(stop)
    mesh = parallel.make_mesh(config.devices)
    parallel.check_divisible(mesh, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)

    # 2. Take the workdir; only then may what an earlier run wrote be discarded.
    with _own_workdir(path) as metrics:
        stop_if_asked(stop)
        if config.restart:
            parallel.on_main_process("restart", lambda: workdirs.discard_previous_run(path))
        return _train(config, path, dataset, source, mesh, metrics, stop)


def _load_data(config: Config, dataset: data.MNIST | None) -> tuple[data.MNIST, data.Source]:
    if dataset is None:  # process 0 first: a TFDS download and the decoded cache are written once
        dataset = parallel.main_process_first("data", lambda: data.load(config.data_dir, config.idx_dir, config.cache_dir))
    data.check_sizes(dataset, config.allow_small_data)
    if config.batch_size > len(dataset.train_images):
        raise data.DataError(f"--batch-size {config.batch_size} is larger than the {len(dataset.train_images):,} "
                             "training images.")
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


def _train(config: Config, path: Path, dataset: data.MNIST, source: data.Source, mesh, metrics: MetricsLog,
           stop: StopRequest):
    num_train = len(dataset.train_images)
    num_steps = steps_per_epoch(num_train, config.batch_size)
    total_steps = config.epochs * num_steps
    keys = derive_keys(config.seed)
    state = create_train_state(config, keys.init, num_steps)
    test_batches = stack_batches(dataset.test_images, dataset.test_labels, config.eval_batch_size)
    keys, state, totals, train_set, test_batches = parallel.replicate(
        (keys, state, TrainTotals.zeros(), DeviceDataset(dataset.train_images, dataset.train_labels), test_batches), mesh)
    batch_sharding = parallel.batch_sharded(mesh)
    run_steps = make_runner(config.loop, jax.default_backend(), StepOptions.from_config(config), batch_sharding)
    schedule = jax.jit(learning_rate_schedule(config, num_steps))  # for the records: one program, not one per op
    identity = run_identity(config, source, mesh.devices.size)

    checkpoints = Checkpoints(path / "checkpoints")
    progress = Progress(config.progress and parallel.is_main_process())
    with checkpoints, progress:  # saves reach the disk before the process ends
        state, totals, step, meta = _resume(checkpoints, config, source, mesh.devices.size, state, totals, num_steps)
        evaluated = "test_accuracy" in meta or not step  # an epoch-end checkpoint holds its epoch's record
        if not step:
            stop_if_asked(stop)  # before config.json: a run stopped before its first step leaves no trace
        if parallel.is_main_process():
            metrics.truncate_after(step)  # records past the checkpoint are replayed, not written twice
            if "record" in meta and not any(r["step"] == step for r in metrics.records("epoch")):
                metrics.write(meta["record"])  # its line was torn by a kill: the checkpoint has it
            write_config(path, identity, parallel.describe(mesh))
        log.info("Using device: %s", parallel.describe(mesh))
        if step >= total_steps and evaluated:
            log.info("This run already finished %d epoch%s; pass more --epochs to continue it, or --restart.",
                     step // num_steps, "" if step // num_steps == 1 else "s")
        elif step:
            log.info("Resuming from epoch %d, step %d", step // num_steps + 1, step)
        best_step = checkpoints.best_step()
        best_accuracy = checkpoints.metrics(best_step)["test_accuracy"] if best_step is not None else -1.0

        def save(record: dict[str, Any] | None = None) -> None:
            counters = {"step": state.step, "loss_sum": totals.loss_sum, "images": totals.images}
            about = identity | {"step": step, "epoch": step // num_steps}
            rank = None
            if record is not None:  # an epoch's end: its test metrics make it a candidate for best
                about |= {k: record[k] for k in ("test_accuracy", "correct", "test_loss")} | {"record": record}
                rank = {"test_accuracy": record["test_accuracy"], "step": step}
            checkpoints.save(step, state, counters, about, rank)

        records = []
        saved_step, last_save = step, time.perf_counter()  # what is on disk now: the resumed state
        epoch_clock = _EpochClock(float(jax.device_get(totals.images)))
        order, order_epoch = None, None
        while True:
            epoch, index = step // num_steps + 1, step % num_steps  # the epoch being trained, its next batch
            if step and index == 0 and not evaluated:  # epoch - 1 has just ended
                progress.close()
                record = _evaluate_epoch(config, epoch - 1, step, state, totals, test_batches, batch_sharding, schedule,
                                         epoch_clock)
                metrics.write(record)
                records.append(record)
                log.info(epoch_line(record))
                totals, epoch_clock = parallel.replicate(TrainTotals.zeros(), mesh), _EpochClock(0.0)  # before the save
                save(record)
                checkpoints.wait()  # an epoch's save is on disk before the console says so (a kill after it loses nothing)
                saved_step, last_save, evaluated = step, time.perf_counter(), True
                if record["test_accuracy"] > best_accuracy:
                    best_accuracy = record["test_accuracy"]
                    log.info("Best model saved with accuracy: %.2f%%", best_accuracy)
            if step >= total_steps:
                break
            checkpoints.check()  # a failed save ends the run now, not at its end
            stop_signal, save_due = parallel.agree(stop.signal, time.perf_counter() - last_save > config.checkpoint_seconds)
            if (stop_signal or save_due) and saved_step != step:
                save()
                saved_step, last_save = step, time.perf_counter()
            if stop_signal:
                if not step:
                    raise Interrupted(NOT_STARTED, stop_signal)
                where = f"the end of epoch {epoch - 1}" if index == 0 else f"batch {index} of {num_steps} in epoch {epoch}"
                raise Interrupted(f"Stopped at step {step} ({where}); the state is saved: run the same command again to "
                                  "resume.", stop_signal)
            if order_epoch != epoch:
                order = parallel.replicate(epoch_order(jax.random.fold_in(keys.shuffle, epoch), num_train, config.batch_size), mesh)
                order_epoch = epoch
                progress.start(epoch, num_train, min(index * config.batch_size, num_train))
            stop_index = next_boundary(index, num_steps, config.log_every)
            # --profile: the chunk after the first log point, compiled by then (TensorBoard's profile tab, Perfetto).
            trace = path / "profile" if config.profile and index == 1 and parallel.is_main_process() else None
            with _traced(trace):
                state, totals, loss = run_steps(state, totals, train_set, order, stop_index - index, keys.augment)
                if trace:
                    jax.block_until_ready(loss)  # the trace holds the steps' execution, not only their dispatch
            step += stop_index - index
            progress.advance(min(stop_index * config.batch_size, num_train) - min(index * config.batch_size, num_train))
            evaluated = False
            if (stop_index - 1) % config.log_every == 0:
                loss = float(loss)  # the only host sync between epochs
                log.info(train_line(epoch, stop_index - 1, config.batch_size, num_train, num_steps, loss))
                metrics.write({"kind": "train", "epoch": epoch, "step": step, "loss": loss})
                if not math.isfinite(loss):
                    raise TrainingStopped(f"The training loss became {loss} at epoch {epoch}, step {step}; stopped. "
                                          + _what_is_kept(checkpoints))
    return records


@contextlib.contextmanager
def _traced(directory: Path | None) -> Iterator[None]:
    """A jax.profiler trace of the work inside, into directory (None: no trace)."""
    if directory is None:
        yield
        return
    jax.profiler.start_trace(str(directory))
    try:
        yield
    finally:
        jax.profiler.stop_trace()
        log.info("Profile of the steps after the first log point written to %s", directory)


def _what_is_kept(checkpoints: Checkpoints) -> str:
    best = checkpoints.best_step()
    if best is None:
        return "No epoch had ended, so no checkpoint is kept; try a lower --lr."
    return f"The best checkpoint (step {best}, {checkpoints.metrics(best)['test_accuracy']:.2f}%) is kept."


class _EpochClock:
    """This process's share of an epoch: wall time since it started training it, and images trained
    since then (a resumed epoch counts only what this process trained)."""

    def __init__(self, images_before: float):
        self.start = time.perf_counter()
        self.images_before = images_before


def _evaluate_epoch(config, epoch, step, state, totals, test_batches, batch_sharding, schedule, clock: _EpochClock) -> dict[str, Any]:
    jax.block_until_ready(state)  # the device may still be training: time it, not the dispatch
    train_seconds = time.perf_counter() - clock.start
    eval_totals, _ = evaluate(build_model(config), state.variables(), test_batches, batch_sharding, with_probabilities=False)
    totals, eval_totals = jax.device_get((totals, eval_totals))
    count = int(eval_totals.count)
    record = {
        "kind": "epoch", "epoch": epoch, "step": step,
        "lr": float(schedule(step - 1)),  # the rate this epoch's updates used
        "train_loss": float(totals.loss_sum / max(totals.images, 1)),
        "test_loss": float(eval_totals.loss_sum / count),
        "test_accuracy": 100.0 * int(eval_totals.correct) / count,
        "correct": int(eval_totals.correct), "test_images": count,
        "train_seconds": round(train_seconds, 3), "epoch_seconds": round(time.perf_counter() - clock.start, 3),
        "images_per_second": round((float(totals.images) - clock.images_before) / max(train_seconds, 1e-9), 1),
    }
    if not math.isfinite(record["train_loss"]):
        raise TrainingStopped(f"The training loss became {record['train_loss']} in epoch {epoch}; stopped.")
    return record


def _resume(checkpoints: Checkpoints, config: Config, source: data.Source, num_devices: int, state, totals, num_steps: int):
    """Continue from the newest usable checkpoint: (state, totals, step, its meta); step 0 and an
    empty meta if there is none.

    Only a checkpoint shown to be damaged (a digest that differs, a missing folder) is set aside,
    by process 0, and the next older one tried: a kill or a flipped bit in the newest save costs only
    the work since the one before. One that cannot be read for another reason (locale, library,
    permissions) is set aside only once an older one reads, which shows the reader works; if none
    reads, the run stops and nothing moves. Another recipe, other data, another device count or
    another model are refused: they are not damage.
    """
    template = totals._asdict() | {"step": state.step}
    unreadable: list[tuple[int, CheckpointError]] = []
    for step in reversed(checkpoints.steps()):
        try:
            meta = checkpoints.meta(step)
            _check_same_run(meta, config, source, num_devices)
            state, progress, _ = checkpoints.restore(step, state, template)
        except OtherModel as error:
            raise OtherModel(f"{error}: the code's model has changed since this run; use --restart to train the new "
                             "one there (discarding the old run), or another --workdir.") from None
        except DamagedCheckpoint as error:
            _set_aside(checkpoints, step, str(error))
            continue
        except UnreadableCheckpoint as error:
            unreadable.append((step, error))
            continue
        for newer, error in unreadable:  # this one reads, so theirs are bad bytes, not a bad reader
            _set_aside(checkpoints, newer, f"{error} Step {step} reads, so its bytes are damaged.")
        if step > config.epochs * num_steps:  # training cannot be undone: refused, not silently kept
            epoch = -(-step // num_steps)
            raise WorkdirError(f"{config.workdir} has trained into epoch {epoch} (step {step}), past --epochs "
                               f"{config.epochs}; give --epochs {epoch} or more to continue it, or --restart.")
        return state, TrainTotals(progress["loss_sum"], progress["images"]), int(progress["step"]), meta
    if unreadable:
        raise CheckpointError(f"{unreadable[0][1]} Nothing was moved or retrained: fix the cause and run the same "
                              "command again, or --restart to discard the run.")
    return state, totals, 0, {}


def _set_aside(checkpoints: Checkpoints, step: int, why: str) -> None:
    moved = parallel.on_main_process("set-aside", lambda: checkpoints.set_aside(step))
    checkpoints.reload()
    log.warning("%s It was moved to %s.", why, moved or "damaged-checkpoints")


def run_identity(config: Config, source: data.Source, num_devices: int) -> dict[str, Any]:
    """What each checkpoint and config.json record about the run beyond its flags: the data, the
    device count, the folder its relative paths are relative to, and the arithmetic (64-bit mode
    and the versions that compute the numbers)."""
    return {"config": config.to_dict(), "data": source._asdict(), "devices": num_devices, "cwd": os.getcwd(),
            "arithmetic": arithmetic()}


def arithmetic() -> dict[str, Any]:
    """What changes the numbers outside the recipe: JAX_ENABLE_X64 and the JAX/jaxlib versions."""
    import jaxlib

    return {"x64": bool(jax.config.jax_enable_x64), "jax": jax.__version__, "jaxlib": jaxlib.__version__}


def _check_same_run(meta: dict[str, Any], config: Config, source: data.Source, num_devices: int) -> None:
    """Only what cannot change the numbers may change on resume: the recipe, the data (by its
    fingerprint, not its path), the number of devices (the order of float sums) and 64-bit mode
    must match; new JAX versions are allowed, and named."""
    check_resumable(meta["config"], config)
    saved_source = meta.get("data")
    if saved_source is not None and saved_source["fingerprint"] != source.fingerprint:
        raise WorkdirError(
            f"{config.workdir} was trained on {saved_source['name']} (fingerprint {saved_source['fingerprint']}), not on "
            f"{source.name} ({source.fingerprint}): other images or another order; resume with its own data, or --restart.")
    saved_devices = meta.get("devices", num_devices)
    if saved_devices != num_devices:
        raise WorkdirError(
            f"{config.workdir} was trained on {saved_devices} device(s), and this run has {num_devices}: the sums would "
            f"change; resume with --devices {saved_devices}, or --restart.")
    saved, current = meta.get("arithmetic", {}), arithmetic()
    if saved.get("x64", False) != current["x64"]:
        setting = lambda x64: "JAX_ENABLE_X64=1" if x64 else "without JAX_ENABLE_X64"  # noqa: E731
        raise WorkdirError(f"{config.workdir} was trained {setting(saved.get('x64', False))}, and this run is "
                           f"{setting(current['x64'])}: the numbers would change; resume as it was trained, or --restart.")
    changed = [f"{name} {saved[name]} -> {current[name]}" for name in ("jax", "jaxlib") if saved.get(name, current[name]) != current[name]]
    if changed:
        log.warning("%s was trained with other library versions (%s): the resumed epochs may not match an "
                    "uninterrupted run's digits exactly.", config.workdir, ", ".join(changed))
