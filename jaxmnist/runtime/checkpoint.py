"""Orbax checkpoints of a run, the only module that reads or writes them: Orbax's policies save
every --checkpoint-seconds and at a stop, and keep the best (ranking.rank) and the latest. Items:
params and batch_stats (the model, restorable alone), opt_state, progress (the step and the epoch's
running sums: an exact resume mid-epoch) and meta (JSON: FORMAT, step, epoch, the epoch's record,
the run's identity, and a digest of every array). Orbax's files carry no checksum, so the digests
are verified at every restore: without them a flipped bit would be used without a word.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import hashlib
import re
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from jaxmnist.core.models import computation_digest
from jaxmnist.errors import UserError
from jaxmnist.ranking import rank
from jaxmnist.runtime.reporting import quiet_libraries
from jaxmnist.runtime.workdir import FORMAT, check_format

SUPERSEDED = "superseded"  # Orbax's rename target for checkpoints it no longer keeps


class CheckpointError(UserError):
    """A checkpoint is missing, damaged or does not fit; the message is one sentence."""


class DamagedCheckpoint(CheckpointError):
    """Its bytes are shown to be wrong (a digest differs, a folder is missing): it may be set aside."""


class UnreadableCheckpoint(CheckpointError):
    """Reading failed for a reason not shown to be its bytes: never moved."""


class OtherModel(CheckpointError):
    """Another model's (other parameter shapes, or other computations): not damage, never restored."""


class SaveFailed(CheckpointError):
    """A save failed (a full disk): Orbax's threads wait forever for its commit, so the process ends without them."""

    leaves_threads_behind = True


@dataclasses.dataclass(kw_only=True)
class IntervalSinceStart(policies.ContinuousCheckpointingPolicy):
    """Orbax's interval policy, counting the run's start as a save: alone it would save at once when
    the folder holds no save, or only one older than the interval (an earlier run's)."""

    started: datetime.datetime = dataclasses.field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc))

    def should_save(self, step, previous_steps, *, context) -> bool:
        ours = [info for info in previous_steps if info.time >= self.started]
        start = types.SimpleNamespace(step=-1, time=self.started, metrics=None)
        return super().should_save(step, ours or [start], context=context)


class _Manager(ocp.CheckpointManager):
    """Orbax's manager, whose preemption (PreemptionCheckpointingPolicy's question) is our stop request
    in any process, agreed once a step (jax.distributed's own sync point lost SIGTERMs near a run's end)."""

    stop = None  # a runtime.stopping.StopRequest
    asked = (None, 0)  # the last step asked about, and the signal agreed on there (0: none)

    def reached_preemption(self, step: int) -> bool:
        if step != self.asked[0]:  # one vote a step: Orbax asks, then the loop asks again
            signum = np.int32(self.stop.signal if self.stop else 0)
            if jax.process_count() > 1:
                signum = multihost_utils.process_allgather(signum).max()
            self.asked = (step, int(signum))
        return bool(self.asked[1])


def _name(path) -> str:  # a pytree path as the user reads it: conv1.kernel, not ['conv1']['kernel']
    return jax.tree_util.keystr(path, simple=True, separator=".")


def _named_arrays(tree) -> dict[str, np.ndarray]:
    def host(leaf):  # every array of the state is replicated: one device's copy is the whole
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
        return np.asarray(jax.device_get(leaf))
    return {_name(path): host(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _sha256(array: np.ndarray) -> str:
    digest = hashlib.sha256(str(array.shape).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _reason(error: Exception) -> str:
    """The first line of a library's error, without the internals some append (TensorStore's)."""
    text = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.split(r"\s*(?:See full TensorStore details|<bound method|<function )", text)[0].rstrip(" .:")
    return text[:200] or type(error).__name__


def model_difference(saved_shapes: dict[str, tuple], params) -> str | None:
    """How a checkpoint's parameters (name -> shape) differ from a model's, naming the first that
    differs and both shapes; None when they fit."""
    wanted = {_name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    for name in list(wanted) + [n for n in saved_shapes if n not in wanted]:
        saved, own = saved_shapes.get(name), wanted.get(name)
        if saved is None:
            return f"this model has {name} of shape {own}, the checkpoint has no {name}"
        if own is None:
            return f"the checkpoint has {name} of shape {saved}, this model has no {name}"
        if saved != own:
            return f"its {name} has shape {saved}, this model's has shape {own}"
    return None


def check_same_computation(meta: dict[str, Any], model, checkpoint: str, digest: str | None = None) -> None:
    """OtherModel when the run recorded another computation digest (core.models.computation_digest)
    under this JAX version: a model edited without changing a shape. Other versions' are not compared;
    a run started in a terminal before the digest ignored colour recorded the coloured one. digest:
    the model's own, where the caller has it already."""
    recorded, same_jax = meta["model_digest"], meta["arithmetic"]["jax"] == jax.__version__
    if same_jax and recorded != (digest or computation_digest(model)) and recorded != computation_digest(model, color=True):
        raise OtherModel(f"{checkpoint} belongs to another model (every parameter has the shape it had, but the "
                         "model computes something else: another activation, order of layers or operation)")


def _quiet_about_closed_loops(unraisable) -> None:
    """A writer's sys.unraisablehook, silent only about the "Event loop is closed" that TensorStore's
    callbacks meet, one per pending write, when a save fails: the failure is said once, as a sentence."""
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
        sys.__unraisablehook__(unraisable)


class Checkpoints:
    """The checkpoints directory of one workdir. A writer passes the stop request and the save interval."""

    def __init__(self, directory: str | Path, read_only: bool = False, stop=None, every_seconds: float | None = None):
        self.directory = Path(directory).absolute()  # Orbax refuses relative paths
        quiet_libraries()  # Orbax's routine absl warnings ("read only", "metadata file does not exist")
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"{self.directory} does not exist: this workdir has no checkpoints; train first with "
                                  "python -m jaxmnist.train.")
        keep = policies.AnyPreservationPolicy([  # mid-epoch checkpoints carry no metrics: only the latest is kept
            policies.LatestN(n=1),
            policies.BestN(get_metric_fn=rank, reverse=False, n=1, keep_checkpoints_without_metrics=False)])
        when = policies.AnySavePolicy([IntervalSinceStart(minimum_interval_secs=every_seconds),
                                       policies.PreemptionCheckpointingPolicy()]) if every_seconds else None
        options = ocp.CheckpointManagerOptions(
            preservation_policy=keep, save_decision_policy=when, best_fn=rank, best_mode="max", read_only=read_only,
            create=not read_only,
            enable_should_save_is_saving_in_progress_check=False,  # a save due waits for the one before it
            cleanup_tmp_directories=not read_only,  # what a kill mid-save left: N.orbax-checkpoint-tmp-*
            todelete_subdir=None if read_only else SUPERSEDED,  # deleting is one rename, never half a checkpoint
        )
        self.manager = _Manager(self.directory, options=options)  # best_step, metrics(step), should_save: Orbax's
        self.manager.stop = stop
        self._writer = not read_only
        if self._writer and sys.unraisablehook is sys.__unraisablehook__:
            sys.unraisablehook = _quiet_about_closed_loops
        self._drop_superseded()  # what a killed writer left

    def steps(self) -> list[int]:  # every step with a complete checkpoint, oldest first
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The best by ranking.rank; None before any epoch ended (Orbax ranks only checkpoints with metrics)."""
        return self.manager.best_step()

    def stop_signal(self, step: int) -> int:
        """The signal that asked for a stop in any process (0: none), the same in every process at this step."""
        self.manager.reached_preemption(step)
        return self.manager.asked[1]

    def meta(self, step: int) -> dict[str, Any]:
        """The JSON item alone (epoch, step, identity, the epoch's record): cheap, no arrays read."""
        meta = self._restore(step, meta=ocp.args.JsonRestore()).meta
        if not isinstance(meta, dict):
            raise DamagedCheckpoint(f"Checkpoint step {step} in {self.directory} is damaged (its meta item is not a record).")
        check_format(meta, f"The checkpoints in {self.directory}")
        return meta

    def set_aside(self, step: int) -> Path:
        """Move a damaged checkpoint into damaged-checkpoints/ (the user's, so never deleted); every
        process then calls manager.reload()."""
        folder = self.directory.parent / "damaged-checkpoints"
        folder.mkdir(exist_ok=True)
        target, suffix = folder / str(step), 1
        while target.exists():  # never overwrite one set aside before
            target, suffix = folder / f"{step}.{suffix}", suffix + 1
        shutil.move(self.directory / str(step), target)
        return target

    def save(self, step: int, state, progress, meta: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        """Start an asynchronous save; metrics (an epoch's accuracies, ranking.rank's) make it a candidate for best."""
        arrays = {**state.variables(), "opt_state": state.opt_state, "progress": progress}
        # Each array's dtype and the SHA-256 of its shape and bytes ("<f4:9b1c..."), by its name.
        digests = {item: {name: f"{array.dtype.str}:{_sha256(array)}" for name, array in _named_arrays(tree).items()}
                   for item, tree in arrays.items()}
        args = ocp.args.Composite(**{item: ocp.args.StandardSave(tree) for item, tree in arrays.items()},
                                  meta=ocp.args.JsonSave(meta | {"format": FORMAT, "digests": digests}))
        self._attempt(self.manager.check_for_errors, self._save_failed)  # a failed earlier save ends the run now
        self._attempt(lambda: self.manager.save(step, args=args, metrics=metrics, force=True), self._save_failed)

    def wait(self) -> None:
        """Block until the saves started so far are on disk; a failed one is SaveFailed."""
        self._attempt(self.manager.wait_until_finished, self._save_failed)

    def check_model(self, step: int, params) -> None:
        """OtherModel unless the checkpoint's parameters have params' names and shapes, compared from
        Orbax's metadata before any array is read."""
        self._check_complete(step, ["params"])
        tree = self._attempt(lambda: ocp.StandardCheckpointer().metadata(self.directory / str(step) / "params")
                             .item_metadata.tree, lambda error: self._unreadable(step, error))
        shapes = {_name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
        difference = model_difference(shapes, params)
        if difference:
            raise OtherModel(f"Checkpoint step {step} in {self.directory} belongs to another model ({difference})")

    def restore_variables(self, step: int, target=None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's variables ({"params", and "batch_stats" where it has them}) and the meta of one step;
        target (abstract arrays with shardings) says where they go, else Orbax needs the topology saved on."""
        target = target or {}
        names = ["params"] + (["batch_stats"] if (self.directory / str(step) / "batch_stats").is_dir() else [])
        items = self._restore_verified(step, {name: target.get(name) for name in names}, target.get("params"))
        return {name: items[name] for name in names}, items["meta"]

    def restore(self, step: int, state, progress) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """Everything needed to resume, shaped like the templates: (state, progress, meta)."""
        templates = {**state.variables(), "opt_state": state.opt_state, "progress": progress}
        items = self._restore_verified(step, jax.tree.map(ocp.utils.to_shape_dtype_struct, templates), state.params)
        state = state.replace(step=items["progress"]["step"], params=items["params"], opt_state=items["opt_state"],
                              batch_stats=items.get("batch_stats", state.batch_stats))
        return state, items["progress"], items["meta"]

    def _restore_verified(self, step: int, targets: dict[str, Any], params) -> dict[str, Any]:
        """The items asked for, each array checked against its digest, and the meta; the model is
        compared first, from the metadata (when params are given)."""
        if params is not None:
            self.check_model(step, params)
        items = self._restore(step, **{name: ocp.args.StandardRestore(t) for name, t in targets.items()},
                              meta=ocp.args.JsonRestore())
        recorded = items.meta.get("digests") if isinstance(items.meta, dict) else None
        for item in targets:
            listed = recorded.get(item) if isinstance(recorded, dict) else None
            for name, array in _named_arrays(items[item]).items():
                entry = listed.get(name) if isinstance(listed, dict) else None
                dtype, _, digest = entry.partition(":") if isinstance(entry, str) else ("", "", "")
                # A template may ask for another dtype (a Python int step): compare in the saved one.
                if not dtype or _sha256(array.astype(np.dtype(dtype), copy=False)) != digest:
                    raise DamagedCheckpoint(f"Checkpoint step {step} in {self.directory} is damaged: its {item} "
                                            f"{name} differs from the digest recorded when it was saved.")
        return {name: items[name] for name in targets} | {"meta": items.meta}

    def _restore(self, step: int, **items):
        if step not in self.steps():
            raise CheckpointError(f"{self.directory} has no checkpoint for step {step} (it has {self.steps()}).")
        self._check_complete(step, items)
        # Orbax leaves coroutines behind when a read fails; collected, each would print an "Exception
        # ignored" traceback, by the hundred: the failure reaches the user as one sentence instead.
        previous, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
        try:  # none of Orbax's exceptions proves damage
            return self._attempt(lambda: self.manager.restore(step, args=ocp.args.Composite(**items)),
                                 lambda error: self._unreadable(step, error))
        finally:
            gc.collect()
            sys.unraisablehook = previous

    def _check_complete(self, step: int, items) -> None:
        """Every item folder asked for is there: a missing one is damage, shown by the listing."""
        missing = [item for item in items if not (self.directory / str(step) / item).is_dir()]
        if missing:
            raise DamagedCheckpoint(f"Checkpoint step {step} in {self.directory} is damaged (its {missing[0]} folder "
                                    "is missing).")

    @staticmethod
    def _attempt(action, failure):
        """action(), a library's exception raised as failure(error), our sentence; raised out here,
        Orbax's error (and the coroutines it holds) is already gone."""
        try:
            return action()
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - Orbax and TensorStore raise many types
            sentence = failure(error)
        raise sentence

    def _unreadable(self, step: int, error: Exception) -> UnreadableCheckpoint:
        return UnreadableCheckpoint(f"Checkpoint step {step} in {self.directory} cannot be read ({_reason(error)}).")

    def _save_failed(self, error: Exception) -> SaveFailed:
        # Which save failed is in the reason (Orbax reports the previous one's failure in the next).
        try:  # the folder itself, not Orbax's list, which a failed save may have emptied
            saved = any(path.name.isdigit() for path in self.directory.iterdir())
        except OSError:
            saved = True
        kept = "the checkpoints saved before it are intact." if saved else "no checkpoint had been saved before it."
        return SaveFailed(f"Saving a checkpoint in {self.directory} failed ({_reason(error)}); {kept}")

    def _drop_superseded(self) -> None:
        """Remove the checkpoints Orbax renamed away: no longer the run's, never read again."""
        if self._writer and jax.process_index() == 0:
            shutil.rmtree(self.directory / SUPERSEDED, ignore_errors=True)

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc_info) -> None:
        """Every save on disk, then Orbax's threads let go, so the process can end. A failed save is raised
        and Orbax left as it is (closed, it prints a traceback per pending write): the command exits at once."""
        self.wait()
        self._drop_superseded()
        with contextlib.suppress(Exception):
            self.manager.close()
