from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist.core.augment import (
    MNIST_MEAN,
    MNIST_STD,
    normalize,
    random_transform,
    rotate,
)


def _one_pixel(row, col):
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, row, col] = 255
    return jnp.asarray(image)


def test_angle_zero_is_the_identity():
    images = jax.random.randint(jax.random.key(0), (3, 28, 28), 0, 256).astype(jnp.uint8)
    np.testing.assert_array_equal(rotate(images, jnp.zeros(3)), images)


def test_a_known_pixel_lands_where_the_formula_says():
    # 90 degrees counter-clockwise: output (r, c) reads source x' = -(r - 13.5) + 13.5, y' = (c - 13.5) + 13.5,
    # so the source pixel at row 5, column 20 appears at row 27 - 20 = 7, column 5.
    out = np.asarray(rotate(_one_pixel(5, 20), jnp.array([90.0])))[0]
    assert out[7, 5] == 255 and out.sum() == 255
    # A small angle, checked against the formula evaluated by hand in numpy.
    t = np.deg2rad(10.0)
    rows, cols = np.nonzero(np.asarray(rotate(_one_pixel(3, 14), jnp.array([10.0])))[0])
    for r, c in zip(rows, cols):
        x, y = c - 13.5, r - 13.5
        assert (round(np.sin(t) * x + np.cos(t) * y + 13.5), round(np.cos(t) * x - np.sin(t) * y + 13.5)) == (3, 14)


def test_corners_are_filled_with_black():
    white = jnp.full((1, 28, 28), 255, jnp.uint8)
    out = np.asarray(rotate(white, jnp.array([45.0])))[0]
    assert out[0, 0] == out[0, 27] == out[27, 0] == out[27, 27] == 0
    assert out[14, 14] == 255


def test_every_image_gets_its_own_angle():
    image = jax.random.randint(jax.random.key(0), (28, 28), 0, 256).astype(jnp.uint8)
    batch = jnp.broadcast_to(image, (8, 28, 28))
    out = np.asarray(random_transform(jax.random.key(3), batch, 10.0))
    assert len({o.tobytes() for o in out}) == 8
    np.testing.assert_array_equal(random_transform(jax.random.key(3), batch, 0.0), batch)


def test_normalize_maps_black_and_white_to_the_lab_values():
    out = normalize(jnp.array([[[0, 255]]], jnp.uint8))
    assert out.shape == (1, 1, 2, 1) and out.dtype == jnp.float32
    np.testing.assert_allclose(out.ravel(), [-MNIST_MEAN / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD], rtol=1e-6)


def test_rotation_equals_torchvision_pixel_for_pixel():
    # Real MNIST images rotated by torchvision (scripts/torchvision_rotation_reference.py).
    reference = np.load(Path(__file__).parent / "data" / "torchvision_rotation.npz")
    out = rotate(jnp.asarray(reference["images"]), jnp.asarray(reference["angles"]))
    np.testing.assert_array_equal(out, reference["rotated"])


def test_angles_span_the_whole_range_asked_and_shifts_every_whole_pixel():
    """RandomRotation(10) draws from [-10, 10]: half the range (or a fixed sign) would still make
    distinct images, so the draws themselves are checked, and random_transform must use them."""
    from jaxmnist.core.augment import draw_transforms, random_transform, transform

    key = jax.random.key(0)
    degrees, shifts = draw_transforms(key, 20_000, 10.0, 2)
    degrees, shifts = np.asarray(degrees), np.asarray(shifts)
    assert -10.0 <= degrees.min() < -9.9 and 9.9 < degrees.max() <= 10.0
    assert abs(degrees.mean()) < 0.2
    assert set(np.unique(shifts)) == {-2, -1, 0, 1, 2}
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 28, 28)), jnp.uint8)
    np.testing.assert_array_equal(random_transform(key, images, 10.0, 2), transform(images, *draw_transforms(key, 8, 10.0, 2)))
