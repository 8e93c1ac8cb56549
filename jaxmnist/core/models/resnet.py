"""A small residual network, the lab report's "more complex structures (such as ResBlock)".

    stem     conv 3x3 -> BatchNorm -> ReLU                   [B, 28, 28, 16]
    block1   ResBlock(16), then max-pool 2                   [B, 14, 14, 16]
    block2   ResBlock(32), then max-pool 2                   [B, 7, 7, 32]
    block3   ResBlock(64)                                    [B, 7, 7, 64]
    head     global average pool -> dropout -> dense 10      [B, 10]

BatchNorm keeps running statistics in the "batch_stats" collection: training updates them
(model.apply(..., train=True, mutable=["batch_stats"])), evaluation uses them.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax

from jaxmnist.core.models.layers import Conv, global_average_pool, max_pool, relu


class ResBlock(nn.Module):
    """conv 3x3 -> BN -> ReLU -> conv 3x3 -> BN, added to the input (projected by a 1x1 conv and
    BN when the width changes), then ReLU: He et al.'s basic block."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        y = relu(norm()(Conv(self.features, (3, 3), use_bias=False)(x)))
        # The last BN starts at zero, so each block starts as the identity (Goyal et al., 2017).
        y = norm(scale_init=nn.initializers.zeros)(Conv(self.features, (3, 3), use_bias=False)(y))
        if x.shape[-1] != self.features:
            x = norm()(Conv(self.features, (1, 1), use_bias=False, name="projection")(x))
        return relu(x + y)


class ResNet(nn.Module):
    """Stem, one ResBlock per stage with max pooling between stages, global average pool, dense."""

    widths: Sequence[int] = (16, 32, 64)
    num_classes: int = 10
    dropout: float = 0.0  # before the dense layer, training only

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:  # x: [B, 28, 28, 1], normalized
        x = Conv(self.widths[0], (3, 3), use_bias=False, name="stem")(x)
        x = relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))  # [B, 28, 28, 16]
        for stage, features in enumerate(self.widths):
            if stage:
                x = max_pool(x)  # [B, 14, 14, 16], then [B, 7, 7, 32]
            x = ResBlock(features, name=f"block{stage + 1}")(x, train)
        x = global_average_pool(x)  # [B, 64]
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="fc")(x)  # [B, 10]
