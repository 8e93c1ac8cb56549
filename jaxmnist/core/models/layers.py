"""The building blocks the models share: PyTorch's default initialisation, max pooling, and a
convolution that XLA:CPU runs fast. Each computes exactly what the textbook layer computes.

- max_pool is reshape + max rather than nn.max_pool, on every backend. nn.max_pool's gradient is
  XLA's select-and-scatter, which XLA:GPU refuses to compile under --xla_gpu_deterministic_ops
  (the default of `jaxmnist train`) and which is XLA:CPU's slowest op (a 2.7x slower lab step).
- Conv is flax's nn.Conv; on the CPU its single-input-channel case (the lab's conv1) runs as 25
  shifted multiply-adds, because XLA:CPU's convolution with one input channel runs at a fifth of
  its usual speed. Every other case, and every other backend, is lax's own convolution.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# Whether Conv may use the CPU's fast form; exporters turn it off (textbook_forms) so that the
# traced program holds plain lax primitives only.
_FAST_CPU_FORMS = contextvars.ContextVar("fast_cpu_forms", default=True)
# While jaxmnist.apps.summary traces a model: a list that relu and max_pool add their rows to, since
# they are functions, not modules that flax's method interception would see.
_SUMMARY_ROWS: contextvars.ContextVar[list | None] = contextvars.ContextVar("summary_rows", default=None)


@contextlib.contextmanager
def recording_functions(rows: list) -> Iterator[None]:
    """Within this block, relu and max_pool append (name, output) to rows when traced."""
    token = _SUMMARY_ROWS.set(rows)
    try:
        yield
    finally:
        _SUMMARY_ROWS.reset(token)


def _note(name: str, output: jax.Array) -> jax.Array:
    rows = _SUMMARY_ROWS.get()
    if rows is not None:
        rows.append((name, output))
    return output


def torch_init(fan_in: int) -> dict[str, nn.initializers.Initializer]:
    """PyTorch's default Conv2d/Linear initialisation: kernel and bias uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)

    def uniform(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return {"kernel_init": uniform, "bias_init": uniform}


def relu(x: jax.Array) -> jax.Array:
    """nn.relu, shown as a layer by jaxmnist.apps.summary."""
    return _note("relu", nn.relu(x))


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """PyTorch's MaxPool2d(window) (stride = window, odd sizes floor), [B, H, W, C] ->
    [B, H // window, W // window, C]. Where a window holds tied maxima, its gradient is shared
    between them (nn.max_pool gives it all to one); the values are the same."""
    batch, height, width, channels = x.shape
    height, width = height // window * window, width // window * window
    x = x[:, :height, :width]  # the rows and columns that fit no whole window, as PyTorch drops them
    pooled = x.reshape(batch, height // window, window, width // window, window, channels).max(axis=(2, 4))
    return _note(f"max_pool {window}x{window}", pooled)


def global_average_pool(x: jax.Array) -> jax.Array:
    """The mean of each channel over the whole image, [B, H, W, C] -> [B, C] (PyTorch's
    AdaptiveAvgPool2d(1) and a flatten)."""
    return _note("global average pool", x.mean(axis=(1, 2)))


@contextlib.contextmanager
def textbook_forms() -> Iterator[None]:
    """Trace models with lax's own convolution everywhere (for exporters that know no custom rules)."""
    token = _FAST_CPU_FORMS.set(False)
    try:
        yield
    finally:
        _FAST_CPU_FORMS.reset(token)


def _lax_conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_jvp
def _shifted_conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    # x: [B, H, W, 1], kernel: [KH, KW, 1, O] -> [B, H, W, O]; 'SAME' zero padding, stride 1.
    kernel_h, kernel_w = kernel.shape[:2]
    height, width = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (kernel_h // 2, kernel_h // 2), (kernel_w // 2, kernel_w // 2), (0, 0)))
    # XLA fuses the terms into one loop over the output: no patches are materialized.
    return sum(
        padded[:, i : i + height, j : j + width, :] * kernel[i, j, 0]
        for i in range(kernel_h) for j in range(kernel_w)
    )


@_shifted_conv_same.defjvp
def _shifted_conv_jvp(primals, tangents):
    # A convolution is bilinear, so its tangent is linear in (dx, dkernel): JAX transposes it into
    # lax's own convolution gradients for the backward pass, which are efficient for this shape.
    (x, kernel), (dx, dkernel) = primals, tangents
    return _shifted_conv_same(x, kernel), _lax_conv_same(dx, kernel) + _lax_conv_same(x, dkernel)


def _conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                          dimension_numbers=None, feature_group_count=1, precision=None, **unused):
    """lax.conv_general_dilated, with the single-input-channel, stride-1, odd-kernel 'SAME' case
    as shifted multiply-adds on the CPU."""
    kernel_h, kernel_w = rhs.shape[:2]
    same_padding = [(kernel_h // 2, kernel_h // 2), (kernel_w // 2, kernel_w // 2)]
    shifted = (
        _FAST_CPU_FORMS.get() and jax.default_backend() == "cpu"
        and lhs.shape[-1] == 1 and feature_group_count == 1 and tuple(window_strides) == (1, 1)
        and kernel_h % 2 == 1 and kernel_w % 2 == 1
        and [tuple(p) for p in padding] == same_padding
        and not any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
    )
    if shifted:
        return _shifted_conv_same(lhs, rhs)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision)


Conv = functools.partial(nn.Conv, conv_general_dilated=_conv_general_dilated)
Conv.__doc__ = "flax's nn.Conv, with the CPU's fast form of single-input-channel convolutions."
