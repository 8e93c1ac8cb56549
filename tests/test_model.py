import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from jaxmnist.model import CNN, max_pool_2x2


def _params():
    return CNN().init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]


def test_parameter_count_and_layer_shapes_match_the_lab():
    params = _params()
    assert sum(x.size for x in jax.tree.leaves(params)) == 28_938
    shapes = jax.tree.map(lambda x: x.shape, params)
    assert shapes == {
        "Conv_0": {"kernel": (5, 5, 1, 16), "bias": (16,)},
        "Conv_1": {"kernel": (5, 5, 16, 32), "bias": (32,)},
        "Dense_0": {"kernel": (1568, 10), "bias": (10,)},
    }
    assert CNN().apply({"params": params}, jnp.zeros((3, 28, 28, 1))).shape == (3, 10)


def test_initialisation_is_pytorch_uniform_within_one_over_sqrt_fan_in():
    params = _params()
    for layer, fan_in in (("Conv_0", 25), ("Conv_1", 400), ("Dense_0", 1568)):
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
