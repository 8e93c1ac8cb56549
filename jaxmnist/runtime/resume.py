"""Which checkpoint a run continues from, and whether it belongs to this run at all.

A checkpoint carries the run's identity (its recipe, data fingerprint, device count and
arithmetic); resume refuses one that differs in anything that changes the numbers, and sets
aside only one whose bytes are shown to be wrong.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np

from jaxmnist.config import Config
from jaxmnist.core.loops import TrainTotals
from jaxmnist.core.models import build_model, computation_digest
from jaxmnist.runtime import data, parallel
from jaxmnist.runtime.checkpoint import (
    CheckpointError,
    Checkpoints,
    DamagedCheckpoint,
    OtherModel,
    UnreadableCheckpoint,
    check_same_computation,
)
from jaxmnist.runtime.reporting import log
from jaxmnist.runtime.workdir import WorkdirError, check_resumable


def resume(checkpoints: Checkpoints, config: Config, source: data.Source, num_devices: int, model_digest: str, state,
           totals, num_steps: int):
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
            restored, progress, _ = checkpoints.restore(step, state, template)  # first: a shape names a parameter
            check_same_computation(meta, model_digest, f"Checkpoint step {step} in {checkpoints.directory}")
            state = restored
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
            epoch = math.ceil(step / num_steps)
            raise WorkdirError(f"{config.workdir} has trained into epoch {epoch} (step {step}), past --epochs "
                               f"{config.epochs}; give --epochs {epoch} or more to continue it, or --restart.")
        return state, _restored_totals(progress, totals, step), int(progress["step"]), meta
    if unreadable:
        raise CheckpointError(f"{unreadable[0][1]} Nothing was moved or retrained: fix the cause and run the same "
                              "command again, or --restart to discard the run.")
    return state, totals, 0, {}


def _restored_totals(progress: dict[str, Any], zeros: TrainTotals, step: int) -> TrainTotals:
    """The epoch's running sums as saved. A checkpoint from before training accuracy was counted
    lacks its counter: at an epoch's end it is 0, as every sum is; mid-epoch it is not known, and
    NaN carries that into the epoch's record (train_accuracy null) instead of a wrong figure."""
    if "correct" not in progress:
        unknown = float(jax.device_get(progress["images"])) > 0
        if unknown:
            log.warning("Checkpoint step %d was saved before training accuracy was counted: this epoch's is not "
                        "known (null in its record); the next epochs have it.", step)
        progress = progress | {"correct": zeros.correct + np.float32(np.nan) if unknown else zeros.correct}
    return TrainTotals(**{name: progress[name] for name in TrainTotals._fields})


def _set_aside(checkpoints: Checkpoints, step: int, why: str) -> None:
    moved = parallel.on_main_process("set-aside", lambda: checkpoints.set_aside(step))
    checkpoints.reload()
    log.warning("%s It was moved to %s.", why, moved or "damaged-checkpoints")


def run_identity(config: Config, source: data.Source, num_devices: int) -> dict[str, Any]:
    """What each checkpoint and config.json record about the run beyond its flags: the data, the
    device count, the folder its relative paths are relative to, the arithmetic (64-bit mode
    and the versions that compute the numbers), and what its model computes."""
    return {"config": config.to_dict(), "data": source._asdict(), "devices": num_devices, "cwd": os.getcwd(),
            "arithmetic": arithmetic(), "model_digest": computation_digest(build_model(config))}


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
