"""Orbax checkpoints of a run: the best by test accuracy and the latest, side by side.

The only module that imports orbax. Each checkpoint holds four or five items, so that
evaluation can restore the model alone:
    params       the model's parameters
    batch_stats  BatchNorm's running statistics, for models that have them
    opt_state    Adam's moments and step count
    progress   the global step and this epoch's running train-loss sums (exact resume mid-epoch)
    meta       JSON: epoch, step, test metrics (at epoch ends), and the run's config
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxmnist.errors import UserError
from jaxmnist.reporting import quiet_libraries


class CheckpointError(UserError):
    """A checkpoint is missing, damaged or does not fit; the message is one sentence."""


class SaveFailed(CheckpointError):
    """A save could not be written (unwritable folder, full disk). Orbax's background threads then
    wait forever for the commit that never comes, so the process must end without joining them."""

    leaves_threads_behind = True


def _rank(metrics: dict[str, Any]) -> tuple[float, int]:
    # Higher accuracy wins; on a tie the earlier epoch stays best, as the lab's "acc > best".
    return metrics["test_accuracy"], -metrics["step"]


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


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
            policies.BestN(get_metric_fn=_rank, reverse=False, n=1, keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=keep, best_fn=_rank, best_mode="max", read_only=read_only, create=not read_only,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Every step with a complete checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the highest test accuracy (earliest on a tie), or None."""
        with_metrics = [s for s in self.steps() if self.metrics(s) is not None]
        return max(with_metrics, key=lambda s: _rank(self.metrics(s))) if with_metrics else None

    def metrics(self, step: int) -> dict[str, float] | None:
        """The test metrics saved with an end-of-epoch checkpoint (None mid-epoch)."""
        return self._manager.metrics(step)

    def meta(self, step: int) -> dict[str, Any]:
        """The JSON item alone (epoch, step, config, test metrics): cheap, no arrays read."""
        return self._restore(step, meta=ocp.args.JsonRestore()).meta

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
        """Start an asynchronous save; metrics (test accuracy) make it a candidate for best."""
        model_state = {"batch_stats": ocp.args.StandardSave(state.batch_stats)} if state.batch_stats else {}
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            **model_state,
            opt_state=ocp.args.StandardSave(state.opt_state),
            progress=ocp.args.StandardSave(progress),
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

    def param_shapes(self, step: int) -> Any:
        """The saved parameters' shapes, from the checkpoint's metadata, without reading them."""
        try:
            metadata = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "params")
            return jax.tree.map(lambda x: tuple(x.shape), metadata.item_metadata.tree)
        except Exception as error:  # noqa: BLE001 - any failure here means an unreadable checkpoint
            raise CheckpointError(f"Checkpoint step {step} in {self.directory} is damaged ({_reason(error)}).") from None

    def restore_variables(self, step: int, target=None) -> tuple[Any, dict[str, Any]]:
        """The model's variables ({"params": ..., and "batch_stats" where it has them}) and the meta
        of one step. target (variables as abstract arrays with shardings) says where they go;
        without one Orbax needs the topology the checkpoint was written on."""
        target = target or {}
        model_state = {"batch_stats": ocp.args.StandardRestore(target.get("batch_stats"))} if self._has_batch_stats(step) else {}
        items = self._restore(step, params=ocp.args.StandardRestore(target.get("params")), **model_state,
                              meta=ocp.args.JsonRestore())
        return {"params": items.params} | ({"batch_stats": items.batch_stats} if model_state else {}), items.meta

    def _has_batch_stats(self, step: int) -> bool:
        return (self.directory / str(step) / "batch_stats").is_dir()

    def restore(self, step: int, state, progress) -> tuple[Any, Any, dict[str, Any]]:
        """Everything needed to resume: state and progress shaped like the given templates."""
        abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
        model_state = {"batch_stats": ocp.args.StandardRestore(abstract(state.batch_stats))} if state.batch_stats else {}
        items = self._restore(
            step,
            params=ocp.args.StandardRestore(abstract(state.params)),
            **model_state,
            opt_state=ocp.args.StandardRestore(abstract(state.opt_state)),
            progress=ocp.args.StandardRestore(abstract(progress)),
            meta=ocp.args.JsonRestore(),
        )
        state = state.replace(step=items.progress["step"], params=items.params, opt_state=items.opt_state,
                              batch_stats=items.batch_stats if model_state else state.batch_stats)
        return state, items.progress, items.meta

    def _restore(self, step: int, **items):
        if step not in self.steps():
            raise CheckpointError(f"{self.directory} has no checkpoint for step {step} (it has {self.steps()}).")
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:  # noqa: BLE001 - Orbax raises many types for damaged files; all mean the same here
            raise CheckpointError(f"Checkpoint step {step} in {self.directory} is damaged or does not fit ({_reason(error)}).") from None

    def _save_failed(self, error: Exception) -> SaveFailed:
        # Which save failed is in the reason (Orbax reports the previous one's failure in the next).
        return SaveFailed(f"Saving a checkpoint in {self.directory} failed ({_reason(error)}); the checkpoints "
                          "saved before it are intact.")

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc_info) -> None:
        """Wait until every asynchronous save is on disk (or has failed, in one sentence), then let
        Orbax's threads go, so the process can end."""
        try:
            self._manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001
            if exc_info[1] is None:
                raise self._save_failed(error) from None
        finally:
            with contextlib.suppress(Exception):
                self._manager.close()
