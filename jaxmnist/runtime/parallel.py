"""Data parallelism with JAX's own sharding: a one-axis "data" mesh over the chosen devices.

Parameters, optimizer state, the dataset and each epoch's batch order are replicated; every
step's batch is sharded along its first axis, so each device gathers, rotates and
differentiates only its slice, and XLA inserts the gradient all-reduce from the annotations.
The lab's semantics do not change: the same global batches, the same angle per image (JAX's
random bits do not depend on how an array is sharded), the same update, up to the order in
which floats are summed.

Several hosts: launched with the standard jax.distributed environment (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID), every process runs the same program over the global mesh;
runtime/peers.py joins them and gives them one outcome.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmnist.config import Config, flag
from jaxmnist.errors import UserError
from jaxmnist.runtime import peers

T = TypeVar("T")

DATA_AXIS = "data"


class MeshError(UserError):
    """The requested devices cannot run this configuration; the message is one sentence."""


def start_backend(join_timeout: float, peer_timeout: float) -> None:
    """Join a multi-process run when the environment describes one (runtime/peers.py), then start
    JAX's backend, so that a backend that cannot start is one sentence (MeshError) before any
    other work."""
    peers.join(join_timeout, peer_timeout)
    all_devices()


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


def all_devices() -> list[jax.Device]:
    """jax.devices(), with a backend that cannot start (JAX_PLATFORMS=cuda without a GPU, say)
    turned into one sentence."""
    try:
        return jax.devices()
    except (RuntimeError, AssertionError) as error:
        platforms = os.environ.get("JAX_PLATFORMS")
        asked = f"JAX_PLATFORMS={platforms}" if platforms else "the default backend"
        reason = f" ({str(error).splitlines()[0][:160]})" if str(error).strip() else ""
        raise MeshError(f"JAX cannot start {asked} on this machine{reason}; unset JAX_PLATFORMS or install "
                        "jax for that device.") from None


def make_mesh(devices: str) -> Mesh:
    """A 'data' mesh over all devices of every process, or the first N of them."""
    available = all_devices()
    count = len(available) if devices == "all" else int(devices)
    if count > len(available):
        raise MeshError(f"--devices {devices} asks for more devices than the {len(available)} there are.")
    if jax.process_count() > 1 and count != len(available):
        raise MeshError("--devices must be 'all' in a multi-process run.")
    return Mesh(np.array(available[:count]), (DATA_AXIS,))


def check_divisible(mesh: Mesh, **batch_sizes: int) -> None:
    """Every device must get the same share of a global batch."""
    for name, size in batch_sizes.items():
        if size % mesh.devices.size:
            raise MeshError(
                f"{flag(name)} {size} does not split evenly across {mesh.devices.size} devices; "
                f"choose a multiple of {mesh.devices.size} or fewer --devices."
            )


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The first axis (the batch) split across the mesh's devices."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh: Mesh):
    """Place a pytree (host or device arrays, the same in every process) on every device."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def to_global(x):  # every process holds the same value: each contributes its own copy
        if jax.dtypes.issubdtype(getattr(x, "dtype", None) or np.asarray(x).dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(to_global(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(to_global, tree)


def is_main_process() -> bool:
    """Logging, metrics and config files are written by process 0 only."""
    return jax.process_index() == 0


def main_process_first(name: str, action: Callable[[], T]) -> T:
    """Run action on process 0 first and on the others after it, so that what it writes to a shared
    disk (a TFDS download, a removal) happens once, and the others find it done."""
    if jax.process_count() == 1:
        return action()
    if is_main_process():
        result = action()
        multihost_utils.sync_global_devices(name)
        return result
    multihost_utils.sync_global_devices(name)
    return action()


def on_main_process(name: str, action: Callable[[], T]) -> T | None:
    """Run action on process 0 alone; every process waits until it is done."""
    result = action() if is_main_process() else None
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
    return result


def agree(stop_signal: int, save_due: bool) -> tuple[int, bool]:
    """One decision for every process: stop if any process was asked to (the signal it got), and
    save when process 0's clock says so. An Orbax save is collective, so processes that decided
    alone would wait for each other forever."""
    if jax.process_count() == 1:
        return stop_signal, save_due
    votes = multihost_utils.process_allgather(np.array([stop_signal, int(save_due)], np.int32))  # [processes, 2]
    return int(votes[:, 0].max()), bool(votes[0, 1])


def describe(mesh: Mesh) -> str:
    """E.g. 'cpu (4 x cpu)' or 'gpu (8 x NVIDIA H100 80GB HBM3)'."""
    device = mesh.devices.flat[0]
    return f"{device.platform} ({mesh.devices.size} x {device.device_kind})"
