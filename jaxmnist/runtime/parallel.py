"""Devices and processes: JAX's settings, joining, a one-axis "data" mesh, the start-up agreement.

The state, the dataset and each epoch's batch order are replicated; each step's batch is sharded
along its first axis, and XLA inserts the gradient all-reduce: the lab's numbers up to the order of
float sums. Several hosts join with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID;
jax.distributed bounds every wait (--join-timeout, and --peer-timeout, its heartbeat).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmnist.config import Config, flag
from jaxmnist.errors import UserError

T = TypeVar("T")

DATA_AXIS = "data"


class MeshError(UserError):
    """The requested devices cannot run this configuration."""


def start_backend(join_timeout: float, peer_timeout: float) -> None:
    """jax.distributed.initialize, with both its time limits, for a multi-process run the environment
    describes (JAX_NUM_PROCESSES above 1); then JAX's backend, so that one that cannot start is one
    sentence (MeshError) before any other work. jax.distributed's own aborts (the others never came,
    a peer went silent) are its own log lines: docs/devices.md reads them."""
    count = _whole_number("JAX_NUM_PROCESSES", "1")
    if count > 1:
        index = os.environ.get("JAX_PROCESS_ID")
        if index is not None and not 0 <= _whole_number("JAX_PROCESS_ID") < count:
            raise UserError(f"JAX_PROCESS_ID must be between 0 and {count - 1} (JAX_NUM_PROCESSES is {count}), got {index}.")
        address = os.environ.get("JAX_COORDINATOR_ADDRESS")
        waiting = threading.Timer(5, logging.getLogger("jaxmnist").warning, (
            f"{f'Process {index} of {count}' if index else 'This process'} is waiting for the others at "
            f"{address or 'the coordinator'} (up to --join-timeout {join_timeout:g} s) ...",))
        waiting.start()
        try:
            jax.distributed.initialize(address, count, None if index is None else int(index),
                                       initialization_timeout=int(join_timeout), heartbeat_timeout_seconds=int(peer_timeout))
        finally:
            waiting.cancel()
    all_devices()


def _whole_number(variable: str, default: str | None = None) -> int:
    value = os.environ.get(variable, default)
    if not (value and value.strip().isdigit()):
        raise UserError(f"{variable} must be a whole number, got {value!r}.")
    return int(value)


def agree_on_start(failure: UserError | None, settings: dict[str, Any], timeout: float) -> None:
    """One exchange at the end of start-up, before anything is written: each process gives its
    outcome (its failure, or its settings: each flag's value by name, and "data", the data's
    fingerprint). A failure, or settings that differ from process 0's, is raised on every process
    as the same sentence; a one-process run raises its own."""
    if jax.process_count() == 1:
        if failure:
            raise failure
        return
    from orbax.checkpoint import multihost  # noqa: PLC0415 - its client is jax.distributed's own

    client, me, count = multihost.get_jax_distributed_client(), jax.process_index(), jax.process_count()
    mine = {"failure": str(failure), "code": failure.exit_code} if failure else {"settings": settings}
    client.key_value_set(f"jaxmnist/start/{me}", json.dumps(mine, sort_keys=True))
    try:
        client.wait_at_barrier("jaxmnist/start", int(timeout * 1000))
        outcomes = [json.loads(client.blocking_key_value_get(f"jaxmnist/start/{p}", 1000)) for p in range(count)]
    except Exception:  # noqa: BLE001 - DEADLINE_EXCEEDED: a process still loading its data, or stuck
        raise UserError(f"Process {me} of {count} waited --join-timeout {timeout:g} s for the other processes to finish "
                        "starting (loading their data); start them all together, or give a longer --join-timeout.") from None
    failed = next((p for p, outcome in enumerate(outcomes) if "failure" in outcome), None)
    if failed is not None:
        error = UserError(f"Process {failed} of {count}: {outcomes[failed]['failure']}")
        error.exit_code = outcomes[failed]["code"]
        raise error
    first = outcomes[0]["settings"]
    for p, outcome in enumerate(outcomes[1:], 1):
        name = next((name for name in first if outcome["settings"].get(name) != first[name]), None)
        if name is not None:
            raise UserError(f"Process {p} of {count} has {_as_given(name, outcome['settings'][name])}, process 0 "
                            f"{_as_given(name, first[name])}; start every process with the same flags and data.")


def _as_given(name: str, value: Any) -> str:
    return f"data with fingerprint {value}" if name == "data" else f"{flag(name)} {value}"


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
            raise MeshError(f"{flag(name)} {size} does not split evenly across {mesh.devices.size} devices; choose a "
                            f"multiple of {mesh.devices.size} or fewer --devices.")


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The first axis (the batch) split across the mesh's devices."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh: Mesh):
    """Place a pytree (host or device arrays, the same in every process) whole on every device."""
    sharding = NamedSharding(mesh, PartitionSpec())
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


def on_main_process(name: str, action: Callable[[], T]) -> T | None:
    """Run action on process 0 alone; every process waits until it is done."""
    result = action() if is_main_process() else None
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
    return result


def describe(mesh: Mesh) -> str:
    """E.g. 'cpu (4 x cpu)' or 'gpu (8 x NVIDIA H100 80GB HBM3)'."""
    device = mesh.devices.flat[0]
    return f"{device.platform} ({mesh.devices.size} x {device.device_kind})"
