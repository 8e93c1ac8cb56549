"""The lab's two-conv CNN (28,938 parameters), written as the lab's PyTorch code builds it."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxmnist.core.models.layers import Conv, max_pool, relu, torch_init


class CNN(nn.Module):
    """conv 1->16 5x5, ReLU, max-pool 2; conv 16->32 5x5, ReLU, max-pool 2; dense 1568 -> 10 logits."""

    num_classes: int = 10
    dropout: float = 0.0  # after the second pooling layer, training only; adds no parameters

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:  # x: [B, 28, 28, 1], normalized
        x = Conv(16, (5, 5), padding=2, name="conv1", **torch_init(fan_in=1 * 5 * 5))(x)  # [B, 28, 28, 16]
        x = max_pool(relu(x))  # [B, 14, 14, 16]
        x = Conv(32, (5, 5), padding=2, name="conv2", **torch_init(fan_in=16 * 5 * 5))(x)  # [B, 14, 14, 32]
        x = max_pool(relu(x))  # [B, 7, 7, 32]
        x = nn.Dropout(self.dropout, deterministic=not train)(x)  # needs rngs={"dropout": key} in training
        # Flattened channels-last (H, W, C), unlike PyTorch's (C, H, W): only matters when moving
        # weights between the two frameworks.
        x = x.reshape(x.shape[0], -1)  # [B, 1568]
        return nn.Dense(self.num_classes, name="fc", **torch_init(fan_in=x.shape[-1]))(x)  # [B, 10]
