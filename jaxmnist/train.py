"""`python -m jaxmnist.train`: the lab's training run, where pure steps meet files and the console.

train_and_evaluate is the one place with side effects: it loads the data, drives the steps,
evaluates after every epoch, writes metrics and checkpoints, and resumes a run it finds.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax

from jaxmnist import data
from jaxmnist.checkpoint import CheckpointError, Checkpoints
from jaxmnist.config import Config, parse_config
from jaxmnist import parallel
from jaxmnist.loops import DeviceDataset, TrainTotals, epoch_order, evaluate, make_runner, stack_batches
from jaxmnist.reporting import MetricsLog, epoch_line, log, setup_console, train_line, write_config
from jaxmnist.steps import StepOptions, create_train_state, derive_keys, learning_rate_schedule, steps_per_epoch
from jaxmnist.workdir import WorkdirError, check_resumable, prepare_workdir


class TrainingStopped(Exception):
    """The run stopped early; the message says why and what is kept."""

    exit_code = 1


class Interrupted(TrainingStopped):
    """Ctrl-C: the state was saved and the run can be resumed."""

    exit_code = 130  # the shell's convention for SIGINT


def log_chunks(first_index: int, num_steps: int, log_every: int) -> list[tuple[int, int]]:
    """Split an epoch's steps into runs that each end on a log point (index % log_every == 0)."""
    ends = sorted({i + 1 for i in range(0, num_steps, log_every)} | {num_steps})
    ends = [end for end in ends if end > first_index]
    return list(zip([first_index] + ends[:-1], ends))


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[list[bool]]:
    """Turn Ctrl-C into a flag the loop checks between chunks, so no step is cut in half."""
    flag = [False]
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda *_: flag.__setitem__(0, True))
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def enable_compilation_cache(cache_dir: str) -> None:
    """Keep compiled programs in <cache_dir>/xla across runs ('' leaves JAX's default: off)."""
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(Path(cache_dir).expanduser() / "xla"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def train_and_evaluate(config: Config, dataset: data.MNIST | None = None) -> list[dict[str, Any]]:
    """Train and evaluate per epoch; returns the epoch records. dataset overrides the data flags."""
    workdir = prepare_workdir(config.workdir, config.restart)
    dataset = dataset if dataset is not None else data.load(config.data_dir, config.idx_dir, config.cache_dir)
    mesh = parallel.make_mesh(config.devices)
    parallel.check_divisible(mesh, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)
    log.info("Using device: %s", parallel.describe(mesh))

    num_train = len(dataset.train_images)
    num_steps = steps_per_epoch(num_train, config.batch_size)
    keys = parallel.replicate(derive_keys(config.seed), mesh)
    state = parallel.replicate(create_train_state(config, keys.init, num_steps), mesh)
    totals = parallel.replicate(TrainTotals.zeros(), mesh)
    train_set = parallel.replicate(DeviceDataset(dataset.train_images, dataset.train_labels), mesh)
    test_batches = parallel.replicate(stack_batches(dataset.test_images, dataset.test_labels, config.eval_batch_size), mesh)
    batch_sharding = parallel.batch_sharded(mesh)
    run_steps = make_runner(config.loop, jax.default_backend(), StepOptions.from_config(config), batch_sharding)
    schedule = learning_rate_schedule(config, num_steps)
    metrics = MetricsLog(workdir / "metrics.jsonl", enabled=parallel.is_main_process())
    checkpoints = Checkpoints(workdir / "checkpoints")

    state, totals, step = _resume(checkpoints, config, state, totals, num_steps)
    metrics.truncate_after(step)
    if parallel.is_main_process():
        write_config(workdir, config, parallel.describe(mesh))
    best_step = checkpoints.best_step()
    best_accuracy = checkpoints.metrics(best_step)["test_accuracy"] if best_step is not None else -1.0

    def save(epoch_record: dict[str, Any] | None) -> None:
        progress = {"step": state.step, "loss_sum": totals.loss_sum, "images": totals.images}
        meta = {"step": step, "epoch": step // num_steps, "config": config.to_dict()}
        rank = None
        if epoch_record is not None:
            meta |= {k: epoch_record[k] for k in ("test_accuracy", "correct", "test_loss")}
            rank = {"test_accuracy": epoch_record["test_accuracy"], "step": step}
        checkpoints.save(step, state, progress, meta, rank)

    if step >= config.epochs * num_steps:
        log.info("This run already finished %d epochs; pass more --epochs to continue it, or --restart.", step // num_steps)
    records = []
    last_save = time.perf_counter()
    try:
        with _interrupt_flag() as interrupted:
            for epoch in range(step // num_steps + 1, config.epochs + 1):
                epoch_start = time.perf_counter()
                order = parallel.replicate(epoch_order(jax.random.fold_in(keys.shuffle, epoch), num_train, config.batch_size), mesh)
                for start, stop in log_chunks(step - (epoch - 1) * num_steps, num_steps, config.log_every):
                    state, totals, loss = run_steps(state, totals, train_set, order, start, stop, keys.augment)
                    step = (epoch - 1) * num_steps + stop
                    if (stop - 1) % config.log_every == 0:
                        loss = float(loss)  # the only host sync between epochs
                        log.info(train_line(epoch, stop - 1, config.batch_size, num_train, num_steps, loss))
                        metrics.write({"kind": "train", "epoch": epoch, "step": step, "loss": loss})
                        if not math.isfinite(loss):
                            raise TrainingStopped(f"The training loss became {loss} at epoch {epoch}, step {step}; stopped, the best checkpoint is kept.")
                    if interrupted[0]:
                        save(None)
                        raise Interrupted(f"Interrupted at epoch {epoch}, step {step}; the state is saved: run the same command again to resume.")
                    if time.perf_counter() - last_save > config.checkpoint_seconds and stop < num_steps:
                        save(None)
                        last_save = time.perf_counter()
                train_seconds = time.perf_counter() - epoch_start
                eval_totals, _ = evaluate(state.params, test_batches, batch_sharding, with_probabilities=False)
                record = _epoch_record(epoch, step, schedule, totals, eval_totals, train_seconds, time.perf_counter() - epoch_start)
                if not math.isfinite(record["train_loss"]):
                    raise TrainingStopped(f"The training loss became {record['train_loss']} in epoch {epoch}; stopped, the best checkpoint is kept.")
                metrics.write(record)
                records.append(record)
                log.info(epoch_line(record))
                totals = parallel.replicate(TrainTotals.zeros(), mesh)
                save(record)
                last_save = time.perf_counter()
                if record["test_accuracy"] > best_accuracy:
                    best_accuracy = record["test_accuracy"]
                    log.info("Best model saved with accuracy: %.2f%%", best_accuracy)
    finally:
        checkpoints.wait()  # asynchronous saves must reach the disk before the process ends
        checkpoints.close()
    return records


def _resume(checkpoints: Checkpoints, config: Config, state, totals: TrainTotals, num_steps: int):
    """Continue from the newest usable checkpoint: (state, totals, step); step 0 when there is none.

    A checkpoint that cannot be read is reported in one line and set aside, and the next older
    one is tried, so a kill that damaged the newest save costs only the work since the one before.
    """
    template = totals._asdict() | {"step": state.step}
    for step in reversed(checkpoints.steps()):
        try:
            check_resumable(checkpoints.meta(step)["config"], config)
            state, progress, _ = checkpoints.restore(step, state, template)
        except CheckpointError as error:
            log.warning("%s It was moved to %s.", error, checkpoints.set_aside(step))
            continue
        step = int(progress["step"])
        if step < config.epochs * num_steps:
            log.info("Resuming from epoch %d, step %d", step // num_steps + 1, step)
        return state, TrainTotals(progress["loss_sum"], progress["images"]), step
    return state, totals, 0


def _epoch_record(epoch, step, schedule, totals, eval_totals, train_seconds, epoch_seconds) -> dict[str, Any]:
    totals, eval_totals = jax.device_get((totals, eval_totals))
    count = int(eval_totals.count)
    return {
        "kind": "epoch", "epoch": epoch, "step": step,
        "lr": float(schedule(step - 1)),  # the rate this epoch's updates used
        "train_loss": float(totals.loss_sum / max(totals.images, 1)),
        "test_loss": float(eval_totals.loss_sum / count),
        "test_accuracy": 100.0 * int(eval_totals.correct) / count,
        "correct": int(eval_totals.correct), "test_images": count,
        "train_seconds": round(train_seconds, 3), "epoch_seconds": round(epoch_seconds, 3),
        "images_per_second": round(float(totals.images) / train_seconds, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, train, and turn every expected failure into one line and a non-zero exit."""
    config = parse_config(argv, prog="python -m jaxmnist.train", description=__doc__.splitlines()[0])
    parallel.initialize_distributed()
    if parallel.is_main_process():  # one console for the whole run
        setup_console()
    enable_compilation_cache(config.cache_dir)
    try:
        train_and_evaluate(config)
    except (data.DataError, CheckpointError, WorkdirError, parallel.MeshError, TrainingStopped) as error:
        log.error("%s", error)
        return getattr(error, "exit_code", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
