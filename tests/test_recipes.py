"""The lab report's proposed improvements and the presets: translation, dropout, schedules, weight decay."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmnist.config import RECIPES, Config, parse_config
from jaxmnist.core.augment import draw_transforms, random_transform, transform
from jaxmnist.core.models.lab import CNN
from jaxmnist.core.steps import create_train_state, learning_rate_schedule
from jaxmnist.runtime.workdir import WorkdirError, check_resumable


def test_translation_moves_a_known_pixel_by_the_shift_and_fills_black():
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 10, 12] = 255
    out = np.asarray(transform(jnp.asarray(image), jnp.zeros(1), jnp.array([[3, -2]])))[0]  # 3 right, 2 up
    assert out[8, 15] == 255 and out.sum() == 255
    white = jnp.full((1, 28, 28), 255, jnp.uint8)
    shifted = np.asarray(transform(white, jnp.zeros(1), jnp.array([[2, 1]])))[0]
    assert (shifted[:, :2] == 0).all() and (shifted[:1, :] == 0).all() and (shifted[1:, 2:] == 255).all()


def test_random_translation_uses_the_drawn_offsets_per_image():
    key = jax.random.key(4)
    image = np.zeros((6, 28, 28), np.uint8)
    image[:, 14, 14] = 255
    out = np.asarray(random_transform(key, jnp.asarray(image), 0.0, 2))
    _, shifts = draw_transforms(key, 6, 0.0, 2)
    for picture, (dx, dy) in zip(out, np.asarray(shifts)):
        assert picture[14 + dy, 14 + dx] == 255 and abs(dx) <= 2 and abs(dy) <= 2
    assert len({tuple(s) for s in np.asarray(draw_transforms(key, 64, 0.0, 2)[1])}) > 10
    # Translation on does not change the angles the lab's rotation draws.
    np.testing.assert_array_equal(draw_transforms(key, 8, 10.0, 2)[0], draw_transforms(key, 8, 10.0, 0)[0])


def test_flip_mirrors_about_half_the_images_and_leaves_the_angles_as_drawn_without_it():
    key = jax.random.key(5)
    images = np.zeros((200, 28, 28), np.uint8)
    images[:, 14, 3] = 255  # a dot near the left edge
    mirrored = np.asarray(random_transform(key, jnp.asarray(images), 0.0, 0, flip=True))
    left, right = mirrored[:, 14, 3] == 255, mirrored[:, 14, 24] == 255
    assert (left ^ right).all() and 70 < right.sum() < 130  # each image once, about half of them mirrored
    rotated = np.asarray(random_transform(key, jnp.asarray(images), 10.0, 2))
    both = np.asarray(random_transform(key, jnp.asarray(images), 10.0, 2, flip=True))
    np.testing.assert_array_equal(np.where(right[:, None, None], both[:, :, ::-1], both), rotated)


def test_dropout_is_active_only_in_training_and_reproducible_for_a_key():
    model = CNN(dropout=0.3)
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    params = model.init(jax.random.key(1), x)["params"]
    assert sum(p.size for p in jax.tree.leaves(params)) == 28_938
    train = lambda key: model.apply({"params": params}, x, train=True, rngs={"dropout": key})  # noqa: E731
    np.testing.assert_array_equal(train(jax.random.key(2)), train(jax.random.key(2)))
    assert not np.allclose(train(jax.random.key(2)), train(jax.random.key(3)))
    np.testing.assert_array_equal(model.apply({"params": params}, x), CNN().apply({"params": params}, x))


def test_cosine_schedule_at_start_middle_and_end():
    config = Config(schedule="cosine", epochs=10)
    schedule = learning_rate_schedule(config, steps_in_epoch=100)
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(500)) == pytest.approx(5e-4, rel=1e-4)
    assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-9)
    warm = learning_rate_schedule(Config(schedule="cosine", epochs=10, warmup_epochs=1), steps_in_epoch=100)
    assert float(warm(0)) == 0.0 and float(warm(50)) == pytest.approx(5e-4) and float(warm(100)) == pytest.approx(1e-3)


def test_warmup_ramps_the_step_schedule_without_moving_its_decay():
    schedule = learning_rate_schedule(Config(warmup_epochs=2, lr_decay_epochs=3, epochs=6), steps_in_epoch=100)
    assert float(schedule(0)) == 0.0 and float(schedule(100)) == pytest.approx(5e-4)
    assert float(schedule(200)) == pytest.approx(1e-3) and float(schedule(299)) == pytest.approx(1e-3)
    assert float(schedule(300)) == pytest.approx(1e-4)  # the decay still comes at epoch 3


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_weight_decay_shrinks_the_kernels_and_spares_the_biases(optimizer):
    state = create_train_state(Config(optimizer=optimizer, weight_decay=0.1), jax.random.key(0), steps_in_epoch=10)
    no_gradient = jax.tree.map(jnp.zeros_like, state.params)  # the optimizer's own update is then exactly 0
    decayed = state.apply_gradients(grads=no_gradient).params
    for layer in ("conv1", "conv2", "fc"):
        np.testing.assert_allclose(decayed[layer]["kernel"], state.params[layer]["kernel"] * (1 - 1e-3 * 0.1), rtol=1e-6)
        np.testing.assert_array_equal(decayed[layer]["bias"], state.params[layer]["bias"])
    plain = create_train_state(Config(), jax.random.key(0), steps_in_epoch=10)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, plain.apply_gradients(grads=no_gradient).params, plain.params))


def test_sgd_is_momentum_0_9_on_the_schedule():
    """Three updates against PyTorch's SGD(momentum=0.9) written out: v = 0.9 v + g; p -= lr v."""
    state = create_train_state(Config(optimizer="sgd", lr=0.05), jax.random.key(0), steps_in_epoch=10)
    expected = jax.tree.map(lambda p: np.asarray(p, np.float64), state.params)
    velocity = jax.tree.map(np.zeros_like, expected)
    for factor in (1.0, -0.5, 2.0):
        grads = jax.tree.map(lambda p: np.full(p.shape, 0.01 * factor), expected)
        state = state.apply_gradients(grads=jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads))
        velocity = jax.tree.map(lambda v, g: 0.9 * v + g, velocity, grads)
        expected = jax.tree.map(lambda p, v: p - 0.05 * v, expected, velocity)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6)


def test_every_optimizer_is_a_flag_value_and_adam_refuses_weight_decay():
    from jaxmnist.core.optimizers import OPTIMIZERS

    for name in OPTIMIZERS:  # a new entry is a flag value at once, and builds a state
        config = parse_config(["--optimizer", name], "train", "")
        assert config.optimizer == name and create_train_state(config, jax.random.key(0), steps_in_epoch=10).opt_state
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        parse_config(["--weight-decay", "0.05"], "train", "")
    assert "--weight-decay needs --optimizer adamw or sgd: Adam takes no weight decay." in err.getvalue()


def test_presets_expand_to_their_flags_and_explicit_flags_override_them():
    improved = parse_config(["--recipe", "improved"], "train", "")
    for name, value in RECIPES["improved"].items():
        assert getattr(improved, name) == value
    assert improved.recipe == "improved" and improved.to_dict()["recipe"] == "improved"
    assert improved.rotation == Config().rotation  # what the preset does not name stays the lab's
    overridden = parse_config(["--recipe", "improved", "--epochs", "3", "--dropout", "0"], "train", "")
    assert (overridden.epochs, overridden.dropout, overridden.translate) == (3, 0.0, 2)
    assert parse_config([], "train", "") == Config()


def test_the_readme_states_the_improved_preset_as_it_is():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    documented = re.search(r"`--recipe improved` is `([^`]+)`", readme).group(1)
    as_flags = parse_config(shlex.split(documented), "train", "").to_dict()
    as_preset = parse_config(["--recipe", "improved"], "train", "").to_dict()
    assert as_flags | {"recipe": "improved"} == as_preset


def test_more_epochs_may_continue_a_step_schedule_but_not_a_cosine_one():
    check_resumable(Config(epochs=5).to_dict(), Config(epochs=8))
    with pytest.raises(WorkdirError, match="--epochs 5 -> 8"):
        check_resumable(Config(epochs=5, schedule="cosine").to_dict(), Config(epochs=8, schedule="cosine"))


def test_an_sgd_run_resumes_exactly_evaluates_and_its_curves_say_sgd(tmp_path, tiny_mnist):
    """--optimizer reaches every command: an SGD run stopped after epoch 1 and resumed ends with the
    uninterrupted run's parameters (its momentum restored), and the learning-rate axis names SGD."""
    from jaxmnist.apps import plot
    from jaxmnist.apps.evaluate import evaluate_checkpoint, restore_model
    from jaxmnist.runtime import run

    recipe = dict(optimizer="sgd", lr=0.05, weight_decay=1e-3, eval_batch_size=10, allow_small_data=True, log_every=2)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    records = run.train_and_evaluate(Config(workdir=str(whole), epochs=2, **recipe), tiny_mnist)
    run.train_and_evaluate(Config(workdir=str(resumed), epochs=1, **recipe), tiny_mnist)
    run.train_and_evaluate(Config(workdir=str(resumed), epochs=2, **recipe), tiny_mnist)  # a step schedule may go on
    expected, got = restore_model(whole, "latest").variables, restore_model(resumed, "latest").variables
    assert jax.tree.all(jax.tree.map(np.array_equal, expected, got))
    report = evaluate_checkpoint(resumed, "latest", tiny_mnist)
    assert report["test_accuracy"] == records[-1]["test_accuracy"]
    assert plot.curves([resumed]).axes[3].get_ylabel() == "SGD learning rate"
    assert plot.curves([tmp_path / "whole"]).axes[3].get_ylabel() == "SGD learning rate"
    adam = tmp_path / "adam"
    run.train_and_evaluate(Config(workdir=str(adam), epochs=1, eval_batch_size=10, allow_small_data=True), tiny_mnist)
    assert plot.curves([adam, resumed]).axes[3].get_ylabel() == "Adam / SGD learning rate"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_preset_as_help_spells_it_is_the_preset(name):
    """--help lists each preset as flags (preset_flags): typed out, they give the preset's run."""
    from jaxmnist.config import preset_flags

    typed = parse_config(shlex.split(preset_flags(name)), "train", "").to_dict()
    assert typed | {"recipe": name} == parse_config(["--recipe", name], "train", "").to_dict()
