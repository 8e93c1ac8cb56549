"""The lab's two-conv CNN as a flax.linen module (28,938 parameters); nothing about training."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmnist.ops import layer_ops


def torch_uniform(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default Conv2d/Linear init: uniform in +-1/sqrt(fan_in), for weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


class CNN(nn.Module):
    """conv 1->16 5x5 -> ReLU -> pool; conv 16->32 5x5 -> ReLU -> pool; dense 1568 -> 10 logits."""

    num_classes: int = 10
    dropout: float = 0.0  # after the second pooling layer, training only; adds no parameters
    platform: str | None = None  # whose fast formulation of the layers to use; None: JAX's default backend

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:  # x: [B, 28, 28, 1], normalized
        ops = layer_ops(self.platform or jax.default_backend())  # same values on every backend
        for name, features, pool in (("conv1", 16, ops.pool_after_conv1), ("conv2", 32, ops.pool_after_conv2)):
            fan_in = x.shape[-1] * 5 * 5
            x = nn.Conv(
                features, (5, 5), padding=2, name=name, conv_general_dilated=ops.conv_general_dilated,
                kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in),
            )(x)
            x = pool(nn.relu(x))  # [B, 14, 14, 16], then [B, 7, 7, 32]
        x = nn.Dropout(self.dropout, deterministic=not train)(x)  # needs rngs={"dropout": key} in training
        # Flattened channels-last (H, W, C), unlike PyTorch's (C, H, W): only matters when
        # moving weights between the two frameworks.
        x = x.reshape(x.shape[0], -1)  # [B, 1568]
        fan_in = x.shape[-1]
        return nn.Dense(self.num_classes, name="fc", kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in))(x)
