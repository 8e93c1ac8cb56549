"""How steps are driven over the device-resident dataset: batch order, train loops, evaluation.

The whole dataset lives on the device; a batch is a gather of 64 indices chosen by the step count
the state carries, so the host sends nothing per step and never touches pixels. make_runner picks
one of two drivers of the same step body (run_steps in runtime/run.py):
- python: a Python loop of one jitted step per batch. XLA:CPU runs while-loops about 25x slower
  than this (BENCHMARKS.md), so this is the CPU's driver.
- device: every step between two log points inside one compiled loop of fixed length, which
  removes the per-step host round trip that dominates on a GPU.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state

from jaxmnist.core.steps import Batch, EvalTotals, StepOptions, eval_step, train_step


class DeviceDataset(NamedTuple):
    """One split on the device: images uint8 [N, 28, 28], labels int32 [N]."""

    images: jax.Array
    labels: jax.Array


class EpochOrder(NamedTuple):
    """Which images make up each batch of one epoch, padded to a whole number of batches."""

    indices: jax.Array  # [S, B] int32
    mask: jax.Array  # [S, B] float32, 0 where the last batch is padding


class TrainTotals(NamedTuple):
    """Running sums over the real images trained on this epoch, kept on the device."""

    loss_sum: jax.Array
    images: jax.Array
    correct: jax.Array  # float32 like images (exact to 2**24); NaN where a resume cannot know it (resume.py)

    @classmethod
    def zeros(cls) -> "TrainTotals":
        return cls(*(np.zeros((), np.float32) for _ in cls._fields))  # NumPy: placed, not computed


RunSteps = Callable[..., tuple[train_state.TrainState, TrainTotals, jax.Array]]


def num_batches(num_images: int, batch_size: int) -> int:
    """Batches that hold num_images, the last partial one kept: 60,000 / 64 -> 938 a lab epoch."""
    return -(-num_images // batch_size)


def batched(array, batch_size: int):
    """[N, ...] -> [S, B, ...], the last batch padded with zeros: NumPy stays NumPy (placed on the
    device later, not computed there), a JAX array stays on the device."""
    xp = np if isinstance(array, np.ndarray) else jnp
    padding = num_batches(len(array), batch_size) * batch_size - len(array)
    padded = xp.concatenate([array, xp.zeros((padding, *array.shape[1:]), array.dtype)])
    return padded.reshape(-1, batch_size, *array.shape[1:])


def padding_mask(num_images: int, batch_size: int) -> np.ndarray:
    """[S, B] float32: 1 for the real images, 0 for the padding that fills the last batch."""
    return batched(np.ones(num_images, np.float32), batch_size)


@functools.partial(jax.jit, static_argnames=("num_images", "batch_size"))
def epoch_order(key: jax.Array, num_images: int, batch_size: int) -> EpochOrder:
    """A fresh shuffle of all images; the last batch is padded with masked copies of image 0."""
    order = jax.random.permutation(key, num_images).astype(jnp.int32)
    return EpochOrder(batched(order, batch_size), jnp.asarray(padding_mask(num_images, batch_size)))


def chunks(first_index: int, num_steps: int, log_every: int) -> list[tuple[int, int]]:
    """The (start, end) batch indices of an epoch's chunks from first_index on: each ends just after
    a log point (a batch whose index is a multiple of log_every, as the lab prints after batches 0,
    100, 200, ...) or at the epoch's end. A lab epoch: (0, 1), (1, 101), (101, 201), ..., (901, 938)."""
    bounds, index = [], first_index
    while index < num_steps:
        end = min(-(-index // log_every) * log_every + 1, num_steps)
        bounds.append((index, end))
        index = end
    return bounds


def _constrain(batch: Batch, sharding) -> Batch:
    """Split a batch across the mesh (None: leave placement to the compiler, one device)."""
    return batch if sharding is None else jax.lax.with_sharding_constraint(batch, sharding)


def select_batch(data: DeviceDataset, order: EpochOrder, index, batch_sharding=None) -> Batch:
    """Batch number index of the epoch, gathered on the device(s); split across the mesh when
    batch_sharding is given, so each device gathers (and later rotates) only its share."""
    ids = order.indices[index]  # [B]
    return _constrain(Batch(data.images[ids], data.labels[ids], order.mask[index]), batch_sharding)


def _step_body(state, totals: TrainTotals, data: DeviceDataset, order: EpochOrder, augment_key,
               options: StepOptions, batch_sharding):
    # Which batch of the epoch comes next follows from the step count the state carries: nothing
    # goes from the host to the device per step.
    batch = select_batch(data, order, state.step % order.indices.shape[0], batch_sharding)
    # Keyed by the global step, so a resumed run draws exactly the angles it would have drawn.
    state, metrics = train_step(state, batch, jax.random.fold_in(augment_key, state.step), options)
    real = jnp.sum(batch.mask)
    return state, TrainTotals(totals.loss_sum + metrics.loss * real, totals.images + real,
                              totals.correct + metrics.correct), metrics.loss


_STATIC = ("options", "batch_sharding")
_jitted_step = jax.jit(_step_body, static_argnames=_STATIC, donate_argnames=("state", "totals"))


def one_program_at_a_time(batch_sharding) -> bool:
    """Whether programs must run one at a time: on XLA:CPU with several (simulated) devices.

    XLA:CPU runs every device's share of a program on a thread pool sized by the cores. With
    several programs in flight, devices waiting in one step's all-reduce can hold the threads that
    another device needs to reach it, and XLA aborts after 40 s (seen with 4 devices on 1 core, and
    on a 2-core AMD EPYC with AVX2 only). Waiting for each program before dispatching the next
    avoids it, at no cost on one device, where it is never done.
    """
    devices = () if batch_sharding is None else batch_sharding.device_set
    return len(devices) > 1 and next(iter(devices)).platform == "cpu"


def run_steps_python(state, totals, data, order, num_steps: int, augment_key, options: StepOptions, batch_sharding=None):
    """The epoch's next num_steps steps, one jitted call each; returns the last step's loss."""
    loss, lockstep = None, one_program_at_a_time(batch_sharding)
    for _ in range(num_steps):
        state, totals, loss = _jitted_step(state, totals, data, order, augment_key,
                                           options=options, batch_sharding=batch_sharding)
        if lockstep:
            jax.block_until_ready(loss)
    return state, totals, loss


@functools.partial(jax.jit, static_argnames=("num_steps", *_STATIC), donate_argnames=("state", "totals"))
def run_steps_device(state, totals, data, order, num_steps: int, augment_key, options: StepOptions, batch_sharding=None):
    """The epoch's next num_steps steps in one compiled loop; returns the last step's loss.

    num_steps is static, so XLA knows the loop's trip count: a GPU then runs the whole loop
    without asking the host whether to go on after each step. Each chunk length compiles once
    (a lab epoch has three: 1, log_every and the epoch's tail)."""

    def body(_, carry):
        state, totals, _ = carry
        return _step_body(state, totals, data, order, augment_key, options, batch_sharding)

    carry = (state, totals, jnp.zeros((), jnp.float32))
    return jax.lax.fori_loop(0, num_steps, body, carry)


@functools.partial(jax.jit, static_argnames=("num_steps", "options"), donate_argnames=("states", "totals"))
def run_steps_of_seeds(states, totals, data: DeviceDataset, orders: EpochOrder, num_steps: int, augment_keys,
                       options: StepOptions):
    """run_steps_device for K seeds of one recipe at once, under jax.vmap: every argument but the
    shared data has a leading axis of K (stack the seeds' states, orders and keys). On a GPU a
    batch-64 step leaves most of the chip idle, so K models train in about one's time for small K;
    on the CPU it is slower than K processes (BENCHMARKS.md), so sweeps there run processes."""
    return jax.vmap(lambda state, total, order, key: run_steps_device(state, total, data, order, num_steps, key, options))(
        states, totals, orders, augment_keys)


def make_runner(loop: str, platform: str, options: StepOptions, batch_sharding=None) -> RunSteps:
    """run_steps(state, totals, data, order, num_steps, augment_key) for --loop: auto picks the
    Python loop on CPU and the compiled loop elsewhere."""
    if loop == "auto":
        loop = "python" if platform == "cpu" else "device"
    if loop == "python":
        return functools.partial(run_steps_python, options=options, batch_sharding=batch_sharding)
    if not one_program_at_a_time(batch_sharding):
        return functools.partial(run_steps_device, options=options, batch_sharding=batch_sharding)

    def run_steps_device_in_lockstep(*args):
        return jax.block_until_ready(run_steps_device(*args, options=options, batch_sharding=batch_sharding))

    return run_steps_device_in_lockstep


def stack_batches(images: np.ndarray, labels: np.ndarray, batch_size: int) -> Batch:
    """A whole split as [S, B, ...] arrays, the last batch padded and masked."""
    return Batch(batched(images, batch_size), batched(labels, batch_size), padding_mask(len(images), batch_size))


@functools.partial(jax.jit, static_argnames=("model", "batch_sharding"))
def _eval_batch(model, variables, batches: Batch, index, batch_sharding=None) -> tuple[EvalTotals, jax.Array]:
    return eval_step(model, variables, _constrain(jax.tree.map(lambda x: x[index], batches), batch_sharding))


def evaluate(model, variables, batches: Batch, batch_sharding=None, with_probabilities: bool = True):
    """Forward pass of model with variables over every batch: summed totals, and (unless not
    wanted) the probabilities [N, 10] of the real images."""
    totals, probabilities, lockstep = None, [], one_program_at_a_time(batch_sharding)
    # Each batch number goes to the device explicitly (an implicit transfer per batch otherwise).
    for index in jax.device_put([np.int32(i) for i in range(batches.images.shape[0])]):
        batch_totals, batch_probabilities = _eval_batch(model, variables, batches, index, batch_sharding=batch_sharding)
        if lockstep:
            jax.block_until_ready(batch_totals)
        totals = batch_totals if totals is None else jax.tree.map(jnp.add, totals, batch_totals)
        probabilities.append(batch_probabilities)
    if not with_probabilities:
        return totals, None
    num_real = int(totals.count)  # the padding sits at the end of the last batch
    return totals, jnp.concatenate(probabilities)[:num_real]
