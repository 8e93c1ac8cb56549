"""Orbax checkpoints of a run: the best (by ranking.rank) and the latest, side by side.

The only module that imports orbax. Each checkpoint holds four or five items, so that
evaluation can restore the model alone:
    params       the model's parameters
    batch_stats  BatchNorm's running statistics, for models that have them
    opt_state    Adam's moments and step count
    progress   the global step and this epoch's running training sums (exact resume mid-epoch)
    meta       JSON: epoch, step, its epoch's record (at epoch ends), the run's config, and a digest of
               every array of the three items above, verified at every restore

Orbax's data files carry no checksum: without the digests a flipped bit would be restored, used
and exported without a word. Two failures are told apart, because only one of them may move a
checkpoint away: DamagedCheckpoint (its bytes are shown to be wrong: a digest differs, a folder it
must hold is missing) and UnreadableCheckpoint (anything else: the locale, a library, permissions).
Superseded checkpoints are renamed into checkpoints/superseded/ (one atomic step, so a kill never
leaves half of one among the real ones) and removed from there by the next writer.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxmnist.errors import UserError
from jaxmnist.runtime.ranking import rank
from jaxmnist.runtime.reporting import quiet_libraries

SUPERSEDED = "superseded"  # Orbax's rename target for checkpoints it no longer keeps
ARRAY_ITEMS = ("params", "opt_state", "progress")


class CheckpointError(UserError):
    """A checkpoint is missing, damaged or does not fit; the message is one sentence."""


class DamagedCheckpoint(CheckpointError):
    """Its bytes are shown to be wrong: a digest differs from the one recorded at save, or a
    folder every checkpoint holds is missing. Only such a checkpoint may be set aside."""


class UnreadableCheckpoint(CheckpointError):
    """Reading it failed for a reason not shown to be its bytes (locale, library, permissions)."""


class OtherModel(CheckpointError):
    """The checkpoint's parameters have other names or shapes than the model's: not damage, and
    never restored (Orbax would silently keep the saved shapes). The caller adds how to go on."""


class SaveFailed(CheckpointError):
    """A save could not be written (unwritable folder, full disk). Orbax's background threads then
    wait forever for the commit that never comes, so the process must end without joining them."""

    leaves_threads_behind = True


@contextlib.contextmanager
def _abandoned_coroutines_unreported() -> Iterator[None]:
    """Orbax leaves coroutines behind when a read fails; collected, each reports itself as an
    "Exception ignored" traceback, by the hundred. Within the block (and its collection at the
    end) those reports are dropped; the failure itself reaches the user as one sentence."""
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = previous


def _reason(error: Exception) -> str:
    """The first line of a library's error, without the internals some append (TensorStore's
    "See full TensorStore details: <bound method ...>")."""
    text = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.split(r"\s*(?:See full TensorStore details|<bound method|<function )", text)[0].rstrip(" .:")
    return text[:200] or type(error).__name__


def _name(path) -> str:
    """A pytree path as the user reads it: conv1.kernel, not ['conv1']['kernel']."""
    return jax.tree_util.keystr(path, simple=True, separator=".")


def _host_array(leaf) -> np.ndarray:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = leaf.addressable_data(0)  # every array of the state is replicated: one copy is the whole
    return np.asarray(jax.device_get(leaf))


def digests(tree) -> dict[str, str]:
    """Each array's dtype and the SHA-256 of its shape and bytes ("<f4:9b1c..."), by its name."""
    return {name: f"{array.dtype.str}:{_sha256(array)}" for name, array in _named_arrays(tree).items()}


def _named_arrays(tree) -> dict[str, np.ndarray]:
    return {_name(path): _host_array(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _sha256(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(str(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def model_difference(saved_shapes: dict[str, tuple], params) -> str | None:
    """How a checkpoint's parameters (name -> shape) differ from a model's, naming the first
    parameter that differs and both shapes; None when they fit."""
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


def check_same_computation(meta: dict[str, Any], digest: str, checkpoint: str) -> None:
    """Raise OtherModel when the checkpoint's run recorded another computation digest for its
    model (core.models.computation_digest) under this JAX version: a model edited without changing
    any parameter's shape. Digests of other JAX versions, or none (older runs), are not compared."""
    saved = meta.get("model_digest")
    if saved and saved != digest and meta.get("arithmetic", {}).get("jax") == jax.__version__:
        raise OtherModel(f"{checkpoint} belongs to another model (every parameter has the shape it had, but the "
                         "model computes something else: another activation, order of layers or operation)")


class Checkpoints:
    """The checkpoints directory of one workdir."""

    def __init__(self, directory: str | Path, read_only: bool = False):
        self.directory = Path(directory).absolute()  # Orbax refuses relative paths
        quiet_libraries()  # Orbax's routine absl warnings ("read only", "metadata file does not exist")
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"{self.directory} does not exist: this workdir has no checkpoints; train first with "
                                  "python -m jaxmnist.train.")
        keep = policies.AnyPreservationPolicy([
            policies.LatestN(n=1),
            # Mid-epoch checkpoints carry no metrics: they must not pile up, LatestN covers them.
            policies.BestN(get_metric_fn=rank, reverse=False, n=1, keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=keep, best_fn=rank, best_mode="max", read_only=read_only, create=not read_only,
            # A kill mid-save leaves N.orbax-checkpoint-tmp-*: removed when a writer opens the folder.
            cleanup_tmp_directories=not read_only,
            # Deleting is one rename (a kill mid-rmtree would leave half a checkpoint among the real ones).
            todelete_subdir=None if read_only else SUPERSEDED,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._writer = not read_only
        self._drop_superseded()  # what a killed writer left

    def steps(self) -> list[int]:
        """Every step with a complete checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step the ranking rule puts first (rank), or None before any epoch has ended."""
        with_metrics = [s for s in self.steps() if self.metrics(s) is not None]
        return max(with_metrics, key=lambda s: rank(self.metrics(s))) if with_metrics else None

    def metrics(self, step: int) -> dict[str, float] | None:
        """The metrics saved to rank an end-of-epoch checkpoint (None mid-epoch): step, test_accuracy,
        and val_accuracy where the run has a validation set."""
        return self._manager.metrics(step)

    def meta(self, step: int) -> dict[str, Any]:
        """The JSON item alone (epoch, step, config, the epoch's record): cheap, no arrays read."""
        meta = self._restore(step, meta=ocp.args.JsonRestore()).meta
        if not isinstance(meta, dict):
            raise DamagedCheckpoint(f"Checkpoint step {step} in {self.directory} is damaged (its meta item is not a record).")
        return meta

    def set_aside(self, step: int) -> Path:
        """Move a damaged checkpoint out of the way (not deleted: it is the user's); call reload()
        in every process afterwards."""
        folder = self.directory.parent / "damaged-checkpoints"
        folder.mkdir(exist_ok=True)
        target = folder / str(step)
        suffix = 1
        while target.exists():  # never overwrite one set aside before
            target, suffix = folder / f"{step}.{suffix}", suffix + 1
        shutil.move(self.directory / str(step), target)
        return target

    def reload(self) -> None:
        """Read the directory again (after set_aside, or while another process writes it)."""
        self._manager.reload()

    def save(self, step: int, state, progress, meta: dict[str, Any], metrics: dict[str, float] | None) -> None:
        """Start an asynchronous save; metrics (an epoch's accuracies, ranking.rank's) make it a candidate for best."""
        # The model's collections (params, and batch_stats where it has them), as TrainState.variables says.
        arrays = {**state.variables(), "opt_state": state.opt_state, "progress": progress}
        meta = meta | {"digests": {item: digests(tree) for item, tree in arrays.items()}}
        args = ocp.args.Composite(
            **{item: ocp.args.StandardSave(tree) for item, tree in arrays.items()},
            meta=ocp.args.JsonSave(meta),
        )
        self.check()
        try:
            self._manager.save(step, args=args, metrics=metrics, force=True)
        except Exception as error:  # noqa: BLE001 - unwritable, disk full, ...: all mean the same here
            raise self._save_failed(error) from None

    def check(self) -> None:
        """Raise SaveFailed if the last asynchronous save has failed; cheap, so the loop asks often."""
        try:
            self._manager.check_for_errors()
        except Exception as error:  # noqa: BLE001
            raise self._save_failed(error) from None

    def param_shapes(self, step: int) -> dict[str, tuple]:
        """The saved parameters' shapes by name (conv1.kernel), without reading the arrays."""
        return self._shapes(step, "params")

    def _shapes(self, step: int, item: str) -> dict[str, tuple]:
        """The shapes of an item's arrays by name, from Orbax's metadata, without reading them."""
        self._check_complete(step, [item])
        try:
            metadata = ocp.StandardCheckpointer().metadata(self.directory / str(step) / item).item_metadata
        except Exception as error:  # noqa: BLE001 - a library failure is not yet proof of damage
            raise self._unreadable(step, error) from None
        if metadata is None:
            raise self._unreadable(step, RuntimeError(f"Orbax finds no metadata of its {item}"))
        leaves = jax.tree_util.tree_leaves_with_path(metadata.tree)
        return {_name(path): tuple(leaf.shape) for path, leaf in leaves}

    def check_model(self, step: int, params) -> None:
        """Raise OtherModel unless the checkpoint's parameters have params' names and shapes
        (arrays or abstract arrays): compared from the metadata, before any array is read."""
        difference = model_difference(self.param_shapes(step), params)
        if difference:
            raise OtherModel(f"Checkpoint step {step} in {self.directory} belongs to another model ({difference})")

    def restore_variables(self, step: int, target=None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's variables ({"params": ..., and "batch_stats" where it has them}) and the meta
        of one step. target (variables as abstract arrays with shardings) says where they go;
        without one Orbax needs the topology the checkpoint was written on."""
        target = target or {}
        if "params" in target:
            self.check_model(step, target["params"])
        names = ["params"] + (["batch_stats"] if (self.directory / str(step) / "batch_stats").is_dir() else [])
        items = self._restore(step, **{name: ocp.args.StandardRestore(target.get(name)) for name in names},
                              meta=ocp.args.JsonRestore())
        variables = {name: items[name] for name in names}
        self._verify(step, items.meta, **variables)
        return variables, items.meta

    def restore(self, step: int, state, progress: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """Everything needed to resume: state and progress shaped like the given templates. A
        counter of progress that the checkpoint does not hold (one saved before the counter
        existed) is left out of the progress returned: the caller decides what it was."""
        abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
        self.check_model(step, state.params)
        saved = self._shapes(step, "progress")
        progress = {name: value for name, value in progress.items() if name in saved}
        templates = {**state.variables(), "opt_state": state.opt_state, "progress": progress}
        items = self._restore(step, **{name: ocp.args.StandardRestore(abstract(tree)) for name, tree in templates.items()},
                              meta=ocp.args.JsonRestore())
        restored = {name: items[name] for name in templates}
        self._verify(step, items.meta, **restored)
        state = state.replace(step=items.progress["step"], params=items.params, opt_state=items.opt_state,
                              batch_stats=restored.get("batch_stats", state.batch_stats))
        return state, items.progress, items.meta

    def _restore(self, step: int, **items):
        if step not in self.steps():
            raise CheckpointError(f"{self.directory} has no checkpoint for step {step} (it has {self.steps()}).")
        self._check_complete(step, items)
        with _abandoned_coroutines_unreported():
            try:
                return self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as error:  # noqa: BLE001 - Orbax raises many types; none of them proves damage
                failure = self._unreadable(step, error)
        raise failure  # raised out here, Orbax's error and its coroutines are already gone

    def _check_complete(self, step: int, items) -> None:
        """Every item folder asked for is there: a missing one is damage, shown by the listing."""
        missing = [item for item in items if not (self.directory / str(step) / item).is_dir()]
        if missing:
            raise DamagedCheckpoint(f"Checkpoint step {step} in {self.directory} is damaged (its {missing[0]} folder "
                                    "is missing).")

    def _verify(self, step: int, meta: dict[str, Any], **restored) -> None:
        """Each restored array against the digest recorded when it was saved (checkpoints from
        before the digests have none: nothing to compare)."""
        recorded = meta.get("digests") if isinstance(meta, dict) else None
        if recorded is None:
            return
        for item, tree in restored.items():
            listed = recorded.get(item) if isinstance(recorded, dict) else None
            for name, array in _named_arrays(tree).items():
                entry = listed.get(name) if isinstance(listed, dict) else None
                dtype, _, digest = entry.partition(":") if isinstance(entry, str) else ("", "", "")
                # A template may ask for another dtype (a Python int step): compare in the saved one.
                if not dtype or _sha256(array.astype(np.dtype(dtype), copy=False)) != digest:
                    raise DamagedCheckpoint(f"Checkpoint step {step} in {self.directory} is damaged: its {item} "
                                            f"{name} differs from the digest recorded when it was saved.")

    def _unreadable(self, step: int, error: Exception) -> UnreadableCheckpoint:
        return UnreadableCheckpoint(f"Checkpoint step {step} in {self.directory} cannot be read ({_reason(error)}).")

    def _drop_superseded(self) -> None:
        """Remove the checkpoints Orbax renamed away: no longer the run's, never read again."""
        if self._writer and jax.process_index() == 0:
            shutil.rmtree(self.directory / SUPERSEDED, ignore_errors=True)

    def _save_failed(self, error: Exception) -> SaveFailed:
        # Which save failed is in the reason (Orbax reports the previous one's failure in the next).
        try:  # the folder itself, not Orbax's list, which a failed save may have emptied
            saved = any(path.name.isdigit() for path in self.directory.iterdir())
        except OSError:
            saved = True
        kept = "the checkpoints saved before it are intact." if saved else "no checkpoint had been saved before it."
        return SaveFailed(f"Saving a checkpoint in {self.directory} failed ({_reason(error)}); {kept}")

    def __enter__(self) -> "Checkpoints":
        return self

    def wait(self) -> None:
        """Block until the saves started so far are on disk; a failed one is SaveFailed."""
        try:
            self._manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001
            raise self._save_failed(error) from None

    def __exit__(self, *exc_info) -> None:
        """Wait until every asynchronous save is on disk (or has failed, in one sentence), then let
        Orbax's threads go, so the process can end."""
        try:
            self._manager.wait_until_finished()
            self._drop_superseded()
        except Exception as error:  # noqa: BLE001
            if exc_info[1] is None:
                raise self._save_failed(error) from None
        finally:
            with contextlib.suppress(Exception):
                self._manager.close()
