import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from jaxmnist.model import CNN
from jaxmnist.ops import max_pool_2x2


def _params():
    return CNN().init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]


def test_parameter_count_and_layer_shapes_match_the_lab():
    params = _params()
    assert sum(x.size for x in jax.tree.leaves(params)) == 28_938
    shapes = jax.tree.map(lambda x: x.shape, params)
    assert shapes == {
        "conv1": {"kernel": (5, 5, 1, 16), "bias": (16,)},
        "conv2": {"kernel": (5, 5, 16, 32), "bias": (32,)},
        "fc": {"kernel": (1568, 10), "bias": (10,)},
    }
    assert CNN().apply({"params": params}, jnp.zeros((3, 28, 28, 1))).shape == (3, 10)


def test_initialisation_is_pytorch_uniform_within_one_over_sqrt_fan_in():
    params = _params()
    for layer, fan_in in (("conv1", 25), ("conv2", 400), ("fc", 1568)):
        bound = 1 / np.sqrt(fan_in)
        for name in ("kernel", "bias"):
            values = np.asarray(params[layer][name])
            assert np.abs(values).max() <= bound
            if values.size >= 400:  # a uniform fills its range: not a normal, not a narrower one
                assert np.abs(values).max() > 0.9 * bound
                assert abs(values.std() - bound / np.sqrt(3)) < 0.1 * bound


def test_reshape_pooling_equals_flax_max_pool():
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 16))
    np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


def test_shifted_conv_equals_lax_convolution_in_value_and_gradient():
    from jax import lax
    from jaxmnist.ops import shifted_conv

    x = jax.random.normal(jax.random.key(2), (4, 28, 28, 1))
    kernel = jax.random.normal(jax.random.key(3), (5, 5, 1, 16))
    args = dict(window_strides=(1, 1), padding=[(2, 2), (2, 2)], dimension_numbers=("NHWC", "HWIO", "NHWC"))
    reference = lambda x, k: lax.conv_general_dilated(x, k, **args)  # noqa: E731
    shifted = lambda x, k: shifted_conv(x, k, **args)  # noqa: E731
    np.testing.assert_allclose(shifted(x, kernel), reference(x, kernel), rtol=1e-5, atol=1e-5)
    loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k)))  # noqa: E731
    for got, expected in zip(jax.grad(loss(shifted), (0, 1))(x, kernel), jax.grad(loss(reference), (0, 1))(x, kernel)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # Shapes it does not specialise fall through to lax unchanged.
    x16 = jax.random.normal(jax.random.key(4), (2, 14, 14, 16))
    k16 = jax.random.normal(jax.random.key(5), (5, 5, 16, 32))
    np.testing.assert_array_equal(shifted(x16, k16), reference(x16, k16))


def test_both_pooling_forms_agree_in_value_and_gradient():
    from jaxmnist.ops import fusible_max_pool_2x2

    x = jax.random.normal(jax.random.key(6), (2, 28, 28, 16))
    np.testing.assert_array_equal(fusible_max_pool_2x2(x), max_pool_2x2(x))
    weights = jax.random.normal(jax.random.key(7), (2, 14, 14, 16))
    grad = lambda pool: jax.grad(lambda x: jnp.sum(pool(x) * weights))(x)  # noqa: E731
    np.testing.assert_array_equal(grad(fusible_max_pool_2x2), grad(max_pool_2x2))


def test_the_cpu_and_the_textbook_formulations_agree_and_both_support_forward_mode():
    # CNN(platform=...) picks the layers' formulation; "cuda" gets the textbook ops, which run here too.
    params = _params()
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    tangent = jax.tree.map(jnp.ones_like, params)
    results = {}
    for platform in ("cpu", "cuda"):
        apply = lambda p, platform=platform: CNN(platform=platform).apply({"params": p}, x)  # noqa: E731
        results[platform] = jax.jvp(apply, (params,), (tangent,))  # would raise under a custom_vjp
    (cpu_out, cpu_tangent), (textbook_out, textbook_tangent) = results["cpu"], results["cuda"]
    np.testing.assert_allclose(cpu_out, textbook_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cpu_tangent, textbook_tangent, rtol=1e-4, atol=1e-4)
    grads = [jax.grad(lambda p, pl=pl: CNN(platform=pl).apply({"params": p}, x).sum())(params) for pl in ("cpu", "cuda")]
    for a, b in zip(*map(jax.tree.leaves, grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
