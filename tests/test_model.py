import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmnist.config import Config
from jaxmnist.core.models import MODELS, build_model, computation_digest
from jaxmnist.core.models.lab import CNN
from jaxmnist.core.models.layers import Conv, max_pool, relu, textbook_forms, torch_init
from jaxmnist.core.models.resnet import ResNet
from jaxmnist.core.steps import Batch, StepOptions, create_train_state, train_step


def _params(model=None):
    return (model or CNN()).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]


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


@pytest.mark.parametrize("shape", [(2, 28, 28, 16), (2, 7, 7, 64), (1, 5, 9, 3), (3, 2, 2, 1)])
def test_max_pool_equals_flax_max_pool_for_any_shape_and_floors_odd_sizes(shape):
    x = jax.random.normal(jax.random.key(1), shape)
    pooled = max_pool(x)
    np.testing.assert_array_equal(pooled, nn.max_pool(x, (2, 2), strides=(2, 2)))
    assert pooled.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])  # PyTorch's MaxPool2d(2): 7 -> 3
    np.testing.assert_array_equal(max_pool(x, 3), nn.max_pool(x, (3, 3), strides=(3, 3)))


def test_max_pool_gradient_goes_to_each_windows_maximum():
    x = jax.random.normal(jax.random.key(2), (2, 7, 7, 4))  # no ties: one maximum per window
    weights = jax.random.normal(jax.random.key(3), (2, 3, 3, 4))
    grad = lambda pool: jax.grad(lambda x: jnp.sum(pool(x) * weights))(x)  # noqa: E731
    np.testing.assert_allclose(grad(max_pool), grad(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))), rtol=1e-6)


def test_cpu_conv_equals_lax_convolution_in_value_and_gradient():
    def lab_conv(features, x):
        layer = Conv(features, (5, 5), padding=2, **torch_init(fan_in=x.shape[-1] * 25))
        variables = layer.init(jax.random.key(4), x)
        with textbook_forms():
            reference = lambda v, x: layer.apply(v, x)  # noqa: E731
            expected = (reference(variables, x), jax.grad(lambda v, x: jnp.sum(jnp.sin(reference(v, x))), (0, 1))(variables, x))
        fast = lambda v, x: layer.apply(v, x)  # noqa: E731
        got = (fast(variables, x), jax.grad(lambda v, x: jnp.sum(jnp.sin(fast(v, x))), (0, 1))(variables, x))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

    lab_conv(16, jax.random.normal(jax.random.key(5), (4, 28, 28, 1)))  # the shifted form
    lab_conv(32, jax.random.normal(jax.random.key(6), (2, 14, 14, 16)))  # lax's own


def test_both_forms_support_forward_mode():
    params = _params()
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    tangent = jax.tree.map(jnp.ones_like, params)
    apply = lambda p: CNN().apply({"params": p}, x)  # noqa: E731
    fast = jax.jvp(apply, (params,), (tangent,))  # would raise under a custom_vjp
    with textbook_forms():
        textbook = jax.jvp(apply, (params,), (tangent,))
    for a, b in zip(fast, textbook):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_trains_and_its_gradient_holds_no_scatter(model, tiny_mnist):
    """XLA:GPU has no deterministic select-and-scatter (nn.max_pool's gradient) and rewrites
    scatter-adds: under --deterministic (the default) it refuses the first. Checked in the HLO of
    a training step, compiled with the CPU's forms and lowered with the textbook ones that GPUs
    and exports use; then the compiled step must learn a small batch."""
    config = Config(model=model, lr={"resnet": 1e-2}.get(model, 3e-3), rotation=10.0, translate=2, dropout=0.1)
    state = create_train_state(config, jax.random.key(0), steps_in_epoch=4)
    batch = Batch(jnp.asarray(tiny_mnist.train_images[:32]), jnp.asarray(tiny_mnist.train_labels[:32]), jnp.ones(32))
    lower = lambda: jax.jit(train_step, static_argnames="options").lower(  # noqa: E731
        state, batch, jax.random.key(1), options=StepOptions.from_config(config))
    step = lower().compile()
    with textbook_forms():
        textbook = lower().as_text()
    for hlo in (step.as_text(), textbook):  # XLA's HLO ops, StableHLO's ops
        assert not re.search(r"(select-and-)?scatter\(|stablehlo\.(select_and_)?scatter", hlo)
    initial_stats, losses = state.batch_stats, []
    for i in range(25):
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics.loss))
    assert losses[-1] < 0.5 * losses[0]
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), state.batch_stats, initial_stats)
    assert all(jax.tree.leaves(moved))  # BatchNorm's running statistics follow the batches


def test_a_third_conv_layer_on_7x7_maps_trains_as_a_student_would_write_it():
    """The edit docs/changing-the-model.md describes: conv3 + pool after conv2, 7x7 -> 3x3."""

    class ThreeConvCNN(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = max_pool(relu(Conv(16, (5, 5), padding=2, **torch_init(fan_in=1 * 5 * 5))(x)))  # [B, 14, 14, 16]
            x = max_pool(relu(Conv(32, (5, 5), padding=2, **torch_init(fan_in=16 * 5 * 5))(x)))  # [B, 7, 7, 32]
            x = max_pool(relu(Conv(64, (5, 5), padding=2, **torch_init(fan_in=32 * 5 * 5))(x)))  # [B, 3, 3, 64]
            x = x.reshape(x.shape[0], -1)  # [B, 576]
            return nn.Dense(10, **torch_init(fan_in=x.shape[-1]))(x)

    MODELS["three-conv"] = lambda recipe: ThreeConvCNN()  # registered as jaxmnist/models/__init__.py does
    try:
        state = create_train_state(Config(model="three-conv"), jax.random.key(0), steps_in_epoch=4)
        batch = Batch(jnp.zeros((8, 28, 28), jnp.uint8), jnp.arange(8) % 10, jnp.ones(8))
        state, metrics = jax.jit(train_step, static_argnames="options")(state, batch, jax.random.key(1), options=StepOptions())
        assert np.isfinite(float(metrics.loss)) and int(state.step) == 1
        assert state.params["Conv_2"]["kernel"].shape == (5, 5, 32, 64)
    finally:
        del MODELS["three-conv"]


def test_the_config_names_every_registered_model():
    import dataclasses

    (field,) = [f for f in dataclasses.fields(Config) if f.name == "model"]
    assert set(field.metadata["choices"]) == set(MODELS)


def test_the_resnet_evaluates_with_its_running_statistics():
    model = build_model(Config(model="resnet"))
    assert isinstance(model, ResNet)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert set(variables) == {"params", "batch_stats"}
    x = jax.random.normal(jax.random.key(1), (16, 28, 28, 1)) * 2 + 1
    # Evaluation uses the running statistics: one image's logits do not depend on its batch.
    alone = model.apply(variables, x[:1])
    np.testing.assert_allclose(model.apply(variables, x)[:1], alone, rtol=1e-5, atol=1e-5)


def test_the_summary_shows_the_labs_layers_and_its_28938_parameters(capsys):
    from jaxmnist.apps import summary

    assert summary.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines]
    assert [r[0] for r in rows[2:10]] == ["conv1", "relu", "max_pool", "conv2", "relu", "max_pool", "Dropout_0", "fc"]
    assert rows[2][2:] == ["28x28x16", "416", "313,600"]  # 16 * (5*5*1 + 1); 28*28*16 outputs of 25 each
    assert rows[7][2:] == ["7x7x32"]
    assert rows[-1] == ["total", "28,938", "2,838,080"]


def test_the_summary_counts_every_parameter_of_every_model():
    from jaxmnist.apps.summary import layers

    for name, build in MODELS.items():
        model = build({"dropout": 0.0, "num_classes": 10})
        rows = layers(model)
        params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
        assert sum(r.parameters for r in rows) == sum(x.size for x in jax.tree.leaves(params)), name
        assert rows[-1].output == (10,)


def test_the_computation_digest_names_the_model_not_the_process_settings(monkeypatch):
    """Training sets --precision process-wide and evaluate does not: both must name one model alike;
    an edit that keeps every shape must not."""
    model = build_model(Config())
    digest = computation_digest(model)
    with jax.default_matmul_precision("highest"):
        assert computation_digest(model) == digest
    assert computation_digest(build_model(Config(dropout=0.3))) == digest  # the recipe's, not the model's
    monkeypatch.setattr("jaxmnist.core.models.lab.relu", jax.nn.sigmoid)
    assert computation_digest(build_model(Config())) != digest


def test_the_computation_digest_is_the_same_whether_stdout_is_a_terminal_or_not(monkeypatch):
    """JAX colours a printed program when stdout is a terminal: a run trained in one was refused
    as "another model" when resumed or evaluated from a pipe, with --restart offered."""
    import jax._src.pretty_printer as pretty_printer

    from jaxmnist.runtime.checkpoint import OtherModel, check_same_computation

    model = build_model(Config())
    piped = computation_digest(model)
    monkeypatch.setattr(pretty_printer, "CAN_USE_COLOR", True)  # what a terminal sets
    assert computation_digest(model) == piped
    coloured = computation_digest(model, color=True)  # what such a run recorded before
    assert coloured != piped
    for recorded in (piped, coloured):
        check_same_computation({"model_digest": recorded, "arithmetic": {"jax": jax.__version__}}, model, "run")
    with pytest.raises(OtherModel, match="run belongs to another model"):
        check_same_computation({"model_digest": "0" * 16, "arithmetic": {"jax": jax.__version__}}, model, "run")
