"""Pure, jittable image transforms: random rotation, translation and mirroring, and the lab's normalization."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The lab's Normalize((0.1307,), (0.3081,)): the mean and std of MNIST's training pixels / 255.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def normalize(images: jax.Array, white: float = 255.0) -> jax.Array:
    """Pixels [B, 28, 28] (uint8, or floats where white is 1.0) -> float32 [B, 28, 28, 1], as
    ToTensor() then Normalize(0.1307, 0.3081)."""
    unit = images.astype(jnp.float32) / white
    return ((unit - MNIST_MEAN) / MNIST_STD)[..., None]


def transform(images: jax.Array, degrees: jax.Array, shifts: jax.Array) -> jax.Array:
    """Rotate each image [B, H, W] about its centre by its angle [B], then move it by its shift
    [B, 2] (columns right, rows down), in one nearest-pixel resampling with black fill.

    With zero shifts this is torchvision's rotate(img, angle, NEAREST, fill=0), pixel for pixel
    (tests/test_augment.py holds torchvision's own output): a positive angle turns the digit
    counter-clockwise as displayed.
    """
    batch, height, width = images.shape
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    theta = jnp.deg2rad(degrees.astype(jnp.float32))[:, None, None]  # [B, 1, 1]
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    shift_x = shifts[:, 0, None, None].astype(jnp.int32)  # [B, 1, 1]
    shift_y = shifts[:, 1, None, None].astype(jnp.int32)
    x = jnp.arange(width, dtype=jnp.float32)[None, None, :] - centre_x  # output column offsets
    y = jnp.arange(height, dtype=jnp.float32)[None, :, None] - centre_y  # output row offsets
    # Integer shifts are applied after rounding, so a shift never changes which pixel rounds where.
    source_x = jnp.round(cos * x - sin * y + centre_x).astype(jnp.int32) - shift_x  # [B, H, W]
    source_y = jnp.round(sin * x + cos * y + centre_y).astype(jnp.int32) - shift_y
    inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
    flat_index = jnp.clip(source_y, 0, height - 1) * width + jnp.clip(source_x, 0, width - 1)
    pixels = jnp.take_along_axis(images.reshape(batch, -1), flat_index.reshape(batch, -1), axis=1)
    return jnp.where(inside, pixels.reshape(batch, height, width), jnp.zeros((), images.dtype))


def rotate(images: jax.Array, degrees: jax.Array) -> jax.Array:
    """transform() without a shift: the lab's rotation."""
    return transform(images, degrees, jnp.zeros((images.shape[0], 2), jnp.int32))


def draw_transforms(key: jax.Array, batch: int, max_degrees: float, max_shift: int) -> tuple[jax.Array, jax.Array]:
    """One angle uniform in [-max, +max] degrees and one integer shift uniform in [-max_shift,
    +max_shift] per axis, for every image; each from its own split of key, so the angles do not
    depend on whether translation is on."""
    angle_key, shift_key = jax.random.split(key)
    degrees = jax.random.uniform(angle_key, (batch,), minval=-max_degrees, maxval=max_degrees)
    shifts = jax.random.randint(shift_key, (batch, 2), -max_shift, max_shift + 1)
    return degrees, shifts


def random_transform(key: jax.Array, images: jax.Array, max_degrees: float, max_shift: int = 0,
                     flip: bool = False) -> jax.Array:
    """RandomRotation(max_degrees), a random shift of up to max_shift pixels and, with flip,
    RandomHorizontalFlip(0.5): each fresh per image."""
    if max_degrees == 0 and max_shift == 0 and not flip:  # Python values: decided at trace time, "off" is free
        return images
    if max_degrees or max_shift:
        images = transform(images, *draw_transforms(key, images.shape[0], max_degrees, max_shift))
    if flip:  # its own stream (key folded with 2), so the angles and shifts are those drawn without it
        mirrored = jax.random.bernoulli(jax.random.fold_in(key, 2), 0.5, (images.shape[0],))
        images = jnp.where(mirrored[:, None, None], images[:, :, ::-1], images)
    return images

