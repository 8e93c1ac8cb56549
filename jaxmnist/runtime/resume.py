"""Which checkpoint a run continues from, and whether it belongs to this run at all.

A checkpoint carries the run's identity (run_identity); resume refuses one that differs in anything
that changes the numbers, and sets aside only one whose bytes are shown to be wrong.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax

from jaxmnist.config import Config
from jaxmnist.core.loops import TrainTotals
from jaxmnist.core.models import build_model, computation_digest
from jaxmnist import data
from jaxmnist.runtime import parallel
from jaxmnist.runtime.checkpoint import (CheckpointError, Checkpoints, DamagedCheckpoint, OtherModel, UnreadableCheckpoint,
                                       check_same_computation)
from jaxmnist.runtime.reporting import log
from jaxmnist.runtime.workdir import WorkdirError, check_resumable


def resume(checkpoints: Checkpoints, run, state, totals: TrainTotals):
    """Continue from the newest usable checkpoint: (state, totals, step, its meta); step 0 and an
    empty meta if there is none. One shown damaged is set aside (by process 0) and the one before
    tried: a kill or a flipped bit costs only the work since then. One unreadable for another reason
    (the locale, a library, permissions) is set aside only once an older one reads, which shows the
    reader works; if none reads, the run stops and nothing moves. Another recipe, other data, another
    device count or another model are refused: not damage."""
    unreadable: list[tuple[int, CheckpointError]] = []
    damaged = False
    for step in reversed(checkpoints.steps()):
        try:
            meta = checkpoints.meta(step)
            _check_same_run(meta, run.config, run.identity)
            restored, progress, _ = checkpoints.restore(step, state, {"step": state.step, **totals._asdict()})
            check_same_computation(meta, run.model, f"Checkpoint step {step} in {checkpoints.directory}",
                                   run.identity["model_digest"])  # computed once, at the start
        except OtherModel as error:
            raise OtherModel(f"{error}: the code's model has changed since this run; use --restart to train the new "
                             "one there (discarding the old run), or another --workdir.") from None
        except DamagedCheckpoint as error:
            _set_aside(checkpoints, step, str(error))
            damaged = True
            continue
        except UnreadableCheckpoint as error:
            unreadable.append((step, error))
            continue
        for newer, error in unreadable:  # this one reads, so theirs are bad bytes, not a bad reader
            _set_aside(checkpoints, newer, f"{error} Step {step} reads, so its bytes are damaged.")
        if step > run.config.epochs * run.steps_per_epoch:  # training cannot be undone: refused, not silently kept
            epoch = math.ceil(step / run.steps_per_epoch)
            raise WorkdirError(f"{run.config.workdir} has trained into epoch {epoch} (step {step}), past --epochs "
                               f"{run.config.epochs}; give --epochs {epoch} or more to continue it, or --restart.")
        totals = TrainTotals(**{name: progress[name] for name in TrainTotals._fields})
        return restored, totals, int(progress["step"]), meta
    if unreadable:
        raise CheckpointError(f"{unreadable[0][1]} Nothing was moved or retrained: fix the cause and run the same "
                              "command again, or --restart to discard the run.")
    if damaged:
        log.warning("No usable checkpoint is left, so training starts again from epoch 1.")
    return state, totals, 0, {}


def _set_aside(checkpoints: Checkpoints, step: int, why: str) -> None:
    moved = parallel.on_main_process("set-aside", lambda: checkpoints.set_aside(step))
    checkpoints.manager.reload()
    log.warning("%s It was moved to %s.", why, moved or "damaged-checkpoints")


def run_identity(config: Config, source: data.Source, num_devices: int) -> dict[str, Any]:
    """What each checkpoint and config.json record beyond the flags: the data, the device count, the
    folder relative paths start from, the arithmetic (64-bit mode and the versions that compute the
    numbers), and what the model computes."""
    import jaxlib

    arithmetic = {"x64": bool(jax.config.jax_enable_x64), "jax": jax.__version__, "jaxlib": jaxlib.__version__}
    return {"config": config.to_dict(), "data": source._asdict(), "devices": num_devices, "cwd": os.getcwd(),
            "arithmetic": arithmetic, "model_digest": computation_digest(build_model(config))}


def _check_same_run(meta: dict[str, Any], config: Config, identity: dict[str, Any]) -> None:
    """Only what cannot change the numbers may change on resume: the recipe, the data (by its
    fingerprint, not its path), the device count (the order of float sums) and 64-bit mode must
    match (Checkpoints.meta has checked the format); new JAX versions are allowed, and named."""
    check_resumable(meta["config"], config)
    saved, current, run = meta["data"], identity["data"], config.workdir
    if saved["fingerprint"] != current["fingerprint"]:
        raise WorkdirError(f"{run} was trained on {saved['name']} (fingerprint {saved['fingerprint']}), not on "
                           f"{current['name']} ({current['fingerprint']}): other images or another order; resume with "
                           "its own data, or --restart.")
    if meta["devices"] != identity["devices"]:
        raise WorkdirError(f"{run} was trained on {meta['devices']} device(s), and this run has {identity['devices']}: "
                           f"the sums would change; resume with --devices {meta['devices']}, or --restart.")
    saved, current = meta["arithmetic"], identity["arithmetic"]
    if saved["x64"] != current["x64"]:
        setting = {True: "JAX_ENABLE_X64=1", False: "without JAX_ENABLE_X64"}
        raise WorkdirError(f"{run} was trained {setting[saved['x64']]}, and this run is {setting[current['x64']]}: "
                           "the numbers would change; resume as it was trained, or --restart.")
    changed = [f"{name} {saved[name]} -> {current[name]}" for name in ("jax", "jaxlib") if saved[name] != current[name]]
    if changed:
        log.warning("%s was trained with other library versions (%s): the resumed epochs may not match an "
                    "uninterrupted run's digits exactly.", run, ", ".join(changed))
