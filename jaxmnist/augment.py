"""Pure, jittable image transforms: the lab's random rotation and its normalization."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The lab's Normalize((0.1307,), (0.3081,)): the mean and std of MNIST's training pixels / 255.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def normalize(images: jax.Array) -> jax.Array:
    """uint8 [B, 28, 28] -> float32 [B, 28, 28, 1], as ToTensor() then Normalize(0.1307, 0.3081)."""
    pixels = images.astype(jnp.float32) / 255.0
    return ((pixels - MNIST_MEAN) / MNIST_STD)[..., None]


def rotate(images: jax.Array, degrees: jax.Array) -> jax.Array:
    """Rotate each image [B, H, W] by its own angle [B] about the centre, nearest pixel, black fill.

    Matches torchvision's rotate(img, angle, NEAREST, fill=0) pixel for pixel (measured.md):
    a positive angle turns the digit counter-clockwise as displayed.
    """
    batch, height, width = images.shape
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    theta = jnp.deg2rad(degrees.astype(jnp.float32))[:, None, None]  # [B, 1, 1]
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    x = jnp.arange(width, dtype=jnp.float32)[None, None, :] - centre_x  # output column offsets
    y = jnp.arange(height, dtype=jnp.float32)[None, :, None] - centre_y  # output row offsets
    source_x = jnp.round(cos * x - sin * y + centre_x).astype(jnp.int32)  # [B, H, W]
    source_y = jnp.round(sin * x + cos * y + centre_y).astype(jnp.int32)
    inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
    flat_index = jnp.clip(source_y, 0, height - 1) * width + jnp.clip(source_x, 0, width - 1)
    pixels = jnp.take_along_axis(images.reshape(batch, -1), flat_index.reshape(batch, -1), axis=1)
    return jnp.where(inside, pixels.reshape(batch, height, width), jnp.zeros((), images.dtype))


def random_rotation(key: jax.Array, images: jax.Array, max_degrees: float) -> jax.Array:
    """RandomRotation(max_degrees): a fresh angle uniform in [-max, +max] for every image."""
    if max_degrees == 0:  # a Python float: decided at trace time, so "off" costs nothing
        return images
    degrees = jax.random.uniform(key, (images.shape[0],), minval=-max_degrees, maxval=max_degrees)
    return rotate(images, degrees)
