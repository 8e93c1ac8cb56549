"""Standard layers' maths in formulations that XLA:CPU runs fast; values equal the textbook ops.

Both exist because of measurements on the 2-core build machine (batch 64, jax 0.10.2):
- max_pool_2x2: nn.max_pool's gradient (select-and-scatter) is XLA:CPU's slowest op here;
  reshape + max gives the same values with a cheap gradient (a 2.7x faster step; BENCHMARKS.md).
  fusible_max_pool_2x2 computes the same values in a form that fuses with conv1.
- shifted_conv: XLA:CPU's convolution with one input channel runs at a fifth of its usual
  speed (2.1 ms forward for conv1); 25 shifted multiply-adds take 0.45 ms. The backward pass
  is lax's own convolution gradient, which is efficient for this shape.
Both keep forward-mode differentiation (jax.jvp) working: their custom rules are custom_jvp.

Other backends compile the textbook ops well (cuDNN's convolutions, reduce_window pooling), so
layer_ops picks the formulation by backend, in this one place.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, as reshape + max: [B, H, W, C] -> [B, H/2, W/2, C]."""
    batch, height, width, channels = x.shape
    return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


@jax.custom_jvp
def fusible_max_pool_2x2(x: jax.Array) -> jax.Array:
    """max_pool_2x2's values as the maximum of each window's four strided corners.

    After an elementwise producer (shifted_conv + ReLU) XLA fuses this into one loop: the
    forward pass of conv1 + ReLU + pool drops from 4.7 to 2.4 ms. Its own gradient would
    make XLA recompute that producer per corner (2x slower step), so differentiation goes
    through max_pool_2x2's rule instead.
    """
    top = jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2])
    bottom = jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2])
    return jnp.maximum(top, bottom)


@fusible_max_pool_2x2.defjvp
def _fusible_max_pool_jvp(primals, tangents):
    return jax.jvp(max_pool_2x2, primals, tangents)


def _lax_conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_jvp
def _shifted_conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    # x: [B, H, W, 1], kernel: [KH, KW, 1, O] -> [B, H, W, O]; 'SAME' zero padding, stride 1.
    kernel_h, kernel_w = kernel.shape[:2]
    height, width = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (kernel_h // 2, kernel_h // 2), (kernel_w // 2, kernel_w // 2), (0, 0)))
    # XLA fuses the 25 terms into one loop over the output: no patches are materialized.
    return sum(
        padded[:, i : i + height, j : j + width, :] * kernel[i, j, 0]
        for i in range(kernel_h) for j in range(kernel_w)
    )


@_shifted_conv_same.defjvp
def _shifted_conv_jvp(primals, tangents):
    # A convolution is bilinear, so its tangent is linear in (dx, dkernel): jax.jvp works through
    # it, and JAX transposes it into lax's own convolution gradients for the backward pass.
    (x, kernel), (dx, dkernel) = primals, tangents
    return _shifted_conv_same(x, kernel), _lax_conv_same(dx, kernel) + _lax_conv_same(x, dkernel)


def shifted_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1, precision=None, **unused):
    """lax.conv_general_dilated for flax's nn.Conv(conv_general_dilated=...), specialised to the
    single-input-channel, stride-1, odd-kernel 'SAME' case; anything else goes to lax unchanged."""
    kernel_h, kernel_w = rhs.shape[:2]
    same_padding = [(kernel_h // 2, kernel_h // 2), (kernel_w // 2, kernel_w // 2)]
    specialised = (
        lhs.shape[-1] == 1 and feature_group_count == 1 and tuple(window_strides) == (1, 1)
        and kernel_h % 2 == 1 and kernel_w % 2 == 1
        and [tuple(p) for p in padding] == same_padding
        and not any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
    )
    if not specialised:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision)
    return _shifted_conv_same(lhs, rhs)


class LayerOps(NamedTuple):
    """The formulation of the CNN's layers: values equal, speed differs by backend."""

    conv_general_dilated: Callable  # for flax's nn.Conv(conv_general_dilated=...)
    pool_after_conv1: Callable  # 2x2 max pooling, stride 2, [B, H, W, C] -> [B, H/2, W/2, C]
    pool_after_conv2: Callable


def textbook_max_pool_2x2(x: jax.Array) -> jax.Array:
    """flax's nn.max_pool with a 2x2 window and stride 2."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def layer_ops(platform: str) -> LayerOps:
    """The CPU's fast forms on the CPU; the textbook ops on any other platform, and for artifacts
    exported to run on several ("portable")."""
    if platform == "cpu":
        return LayerOps(shifted_conv, fusible_max_pool_2x2, max_pool_2x2)
    if platform == "portable":  # plain lax primitives only: what converters such as jax2onnx know
        return LayerOps(lax.conv_general_dilated, max_pool_2x2, max_pool_2x2)
    return LayerOps(lax.conv_general_dilated, textbook_max_pool_2x2, textbook_max_pool_2x2)
