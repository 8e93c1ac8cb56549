"""The pure parts of training and evaluation: state, loss, one train step, one eval step.

Nothing here touches files or the console; core/loops.py drives these functions over the data,
and evaluation (during training and in apps/evaluate.py) runs eval_step through loops.evaluate,
so training and evaluation measure the same thing.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxmnist.config import Config
from jaxmnist.core.augment import normalize, random_transform
from jaxmnist.core.models import build_model
from jaxmnist.core.optimizers import OPTIMIZERS


class Batch(NamedTuple):
    """A fixed-size batch; mask is 0 for the padding that keeps every batch the same shape."""

    images: jax.Array  # [B, 28, 28] uint8
    labels: jax.Array  # [B] int32
    mask: jax.Array  # [B] float32, 1 for a real image


class StepOptions(NamedTuple):
    """The train step's static knobs (hashable, so jit compiles one program per choice)."""

    rotation: float = 0.0
    translate: int = 0
    label_smoothing: float = 0.0
    flip: bool = False

    @classmethod
    def from_config(cls, config: Config) -> "StepOptions":
        return cls(config.rotation, config.translate, config.label_smoothing, config.flip)


class Keys(NamedTuple):
    """The independent random streams of a run, all derived from the one seed."""

    init: jax.Array
    shuffle: jax.Array  # folded with the epoch number
    augment: jax.Array  # folded with the global step


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the model's BatchNorm statistics ({} for models without BatchNorm)."""

    batch_stats: Any = None

    def variables(self) -> dict[str, Any]:
        """What model.apply takes: the parameters, and the statistics where the model has them."""
        return {"params": self.params} | ({"batch_stats": self.batch_stats} if self.batch_stats else {})


class StepMetrics(NamedTuple):
    """What one train step reports about its batch, read off the logits it trained on."""

    loss: jax.Array  # [] float32, the mean over the real images
    correct: jax.Array  # [] float32, real images whose augmented form the model read right


class EvalTotals(NamedTuple):
    """Sums over the real images of a batch (or a whole test set)."""

    loss_sum: jax.Array
    correct: jax.Array
    count: jax.Array


@functools.partial(jax.jit, static_argnums=0)  # one compiled program, not one per random operation
def derive_keys(seed: int) -> Keys:
    """Split the seed (0 to 2**64-1) into named streams, so adding a stream later never shifts the
    others. jax.random.key takes 32 bits here; the high 32 are folded in, so no two seeds collide."""
    root = jax.random.key(seed & 0xFFFFFFFF)
    if seed >> 32:
        root = jax.random.fold_in(root, seed >> 32)
    return Keys(*jax.random.split(root, len(Keys._fields)))


def learning_rate_schedule(config: Config, steps_in_epoch: int) -> optax.Schedule:
    """The lab's StepLR(step_size, gamma) stepped per epoch, expressed in optimizer steps; or a
    cosine decay from --lr to 0 over the whole run. Either after an optional linear warmup from 0."""
    warmup = round(config.warmup_epochs * steps_in_epoch)
    if config.schedule == "cosine":
        total = config.epochs * steps_in_epoch
        if warmup == 0:
            return optax.cosine_decay_schedule(config.lr, decay_steps=total)
        return optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup_steps=warmup, decay_steps=total)
    step_decay = optax.exponential_decay(
        config.lr, transition_steps=config.lr_decay_epochs * steps_in_epoch,
        decay_rate=config.lr_decay, staircase=True,
    )
    if warmup == 0:
        return step_decay
    # The ramp scales the decay rather than delaying it, so the decay epochs stay the lab's.
    return lambda step: step_decay(step) * jnp.minimum(1.0, step / warmup)


def create_train_state(config: Config, key: jax.Array, steps_in_epoch: int) -> TrainState:
    """A fresh model of --model with the --optimizer (the lab's: Adam) on the schedule."""
    model = build_model(config)
    schedule = learning_rate_schedule(config, steps_in_epoch)
    optimizer = OPTIMIZERS[config.optimizer].build(schedule, config.weight_decay)

    @jax.jit  # one compiled program for the whole state: op by op, every draw and zeros would be one
    def initial_state(key: jax.Array) -> TrainState:
        variables = model.init(key, jnp.zeros((1, 28, 28, 1), jnp.float32))
        return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=optimizer,
                                 batch_stats=variables.get("batch_stats", {}))

    return initial_state(key)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Each image's cross-entropy [B] against its one-hot label, smoothed by optax.smooth_labels.

    One-hot rather than optax's integer-label form: that one picks each label's log-probability
    with a gather, whose gradient is a scatter-add, which XLA:GPU cannot compile in
    deterministic mode without rewriting it."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)  # 0: plain one-hot
    return optax.softmax_cross_entropy(logits, targets)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean cross-entropy over the real images only (padding has mask 0)."""
    return jnp.sum(cross_entropy(logits, labels, label_smoothing) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def split_step_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A step's key -> (augmentation key, dropout key): each purpose its own split."""
    augment_key, dropout_key = jax.random.split(key)
    return augment_key, dropout_key


def train_step(state: TrainState, batch: Batch, key: jax.Array, options: StepOptions) -> tuple[TrainState, StepMetrics]:
    """One optimizer update on a batch, augmented on the device with key; returns its loss and hits."""
    augment_key, dropout_key = split_step_key(key)
    images = normalize(random_transform(augment_key, batch.images, options.rotation, options.translate,
                                        options.flip))  # [B, 28, 28, 1]

    def loss_fn(params):
        logits, updates = state.apply_fn(  # logits [B, 10]; updates: the batch's new BatchNorm statistics
            state.variables() | {"params": params}, images, train=True, rngs={"dropout": dropout_key},
            mutable=["batch_stats"])
        return masked_cross_entropy(logits, batch.labels, batch.mask, options.label_smoothing), (updates, logits)

    (loss, (updates, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # Training accuracy from the logits the loss already computed (no second forward pass): of
    # the augmented images, with dropout on, as the model saw them while it learned.
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == batch.labels) * batch.mask)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    return state, StepMetrics(loss, correct)


def eval_step(model: nn.Module, variables: dict[str, Any], batch: Batch) -> tuple[EvalTotals, jax.Array]:
    """Forward only on unrotated images: the batch's totals and class probabilities [B, 10]."""
    logits = model.apply(variables, normalize(batch.images))
    losses = cross_entropy(logits, batch.labels)
    hits = (jnp.argmax(logits, axis=-1) == batch.labels).astype(jnp.int32)
    totals = EvalTotals(
        loss_sum=jnp.sum(losses * batch.mask),
        correct=jnp.sum(hits * batch.mask.astype(jnp.int32)),
        count=jnp.sum(batch.mask.astype(jnp.int32)),
    )
    return totals, jax.nn.softmax(logits)
