"""The lab's two-conv CNN as a flax.linen module (28,938 parameters); nothing about training."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def torch_uniform(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default Conv2d/Linear init: uniform in +-1/sqrt(fan_in), for weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, as reshape + max: [B, H, W, C] -> [B, H/2, W/2, C].

    Same values as nn.max_pool, but its gradient is a cheap mask instead of XLA:CPU's slow
    select-and-scatter (2.7x faster train step on the CPU, measured.md).
    """
    batch, height, width, channels = x.shape
    return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


class CNN(nn.Module):
    """conv 1->16 5x5 -> ReLU -> pool; conv 16->32 5x5 -> ReLU -> pool; dense 1568 -> 10 logits."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # x: [B, 28, 28, 1], normalized
        for features in (16, 32):
            fan_in = x.shape[-1] * 5 * 5
            x = nn.Conv(
                features, (5, 5), padding=2,
                kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in),
            )(x)
            x = max_pool_2x2(nn.relu(x))  # [B, 14, 14, 16], then [B, 7, 7, 32]
        # Flattened channels-last (H, W, C), unlike PyTorch's (C, H, W): only matters when
        # moving weights between the two frameworks.
        x = x.reshape(x.shape[0], -1)  # [B, 1568]
        fan_in = x.shape[-1]
        return nn.Dense(self.num_classes, kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in))(x)
