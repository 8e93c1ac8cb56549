import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmnist.config import Config
from jaxmnist.core.loops import (
    DeviceDataset,
    TrainTotals,
    epoch_order,
    run_steps_device,
    run_steps_python,
)
from jaxmnist.core.models import build_model
from jaxmnist.core.steps import (
    Batch,
    StepOptions,
    create_train_state,
    derive_keys,
    eval_step,
    learning_rate_schedule,
    masked_cross_entropy,
    train_step,
)


def test_learning_rate_steps_down_after_lr_decay_epochs():
    schedule = learning_rate_schedule(Config(), steps_in_epoch=938)
    # Updates 0..4689 are epochs 1-5 (lr 1e-3); update 4690 is the first of epoch 6.
    assert float(schedule(0)) == np.float32(1e-3)
    assert float(schedule(4689)) == np.float32(1e-3)
    np.testing.assert_allclose(float(schedule(4690)), 1e-4, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(9380)), 1e-5, rtol=1e-6)


def test_masked_loss_averages_over_real_images_only():
    logits = jax.random.normal(jax.random.key(0), (8, 10))
    labels = jnp.arange(8) % 10
    mask = jnp.array([1, 1, 1, 0, 0, 0, 0, 0], jnp.float32)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits[:3], labels[:3]).mean()
    np.testing.assert_allclose(masked_cross_entropy(logits, labels, mask), expected, rtol=1e-6)


def test_epoch_order_covers_every_image_once_and_masks_the_padding():
    order = epoch_order(jax.random.key(0), 200, 64)
    assert order.indices.shape == (4, 64)
    real = np.asarray(order.indices)[np.asarray(order.mask) > 0]
    assert sorted(real.tolist()) == list(range(200))
    assert np.asarray(order.mask)[-1].sum() == 8
    assert not np.array_equal(order.indices, epoch_order(jax.random.key(1), 200, 64).indices)


def test_a_few_steps_fit_a_tiny_batch(tiny_mnist):
    state = create_train_state(Config(), jax.random.key(0), steps_in_epoch=938)
    batch = Batch(jnp.asarray(tiny_mnist.train_images[:16]), jnp.asarray(tiny_mnist.train_labels[:16]), jnp.ones(16))
    step = jax.jit(train_step, static_argnames="options")
    first_loss = None
    for i in range(50):
        state, metrics = step(state, batch, jax.random.key(i), options=StepOptions())
        first_loss = float(metrics.loss) if first_loss is None else first_loss
    assert first_loss > 1.5 and float(metrics.loss) < 0.05


def test_the_step_counts_the_real_images_its_logits_read_right(tiny_mnist):
    """Without augmentation or dropout the step sees what eval_step sees: the same hits, before
    the update; the padding (mask 0) is never counted."""
    model = build_model(Config())
    state = create_train_state(Config(), jax.random.key(0), steps_in_epoch=4)
    step = jax.jit(train_step, static_argnames="options")
    batch = Batch(jnp.asarray(tiny_mnist.train_images[:32]), jnp.asarray(tiny_mnist.train_labels[:32]),
                  jnp.asarray(np.arange(32) < 24, jnp.float32))
    for i in range(20):  # far enough from chance that the count means something
        expected, _ = eval_step(model, state.variables(), batch)
        state, metrics = step(state, batch, jax.random.key(i), options=StepOptions())
        assert float(metrics.correct) == int(expected.correct)
    assert 12 < float(metrics.correct) <= 24


def _train(tiny_mnist, runner, seed=0):
    keys = derive_keys(seed)
    state = create_train_state(Config(), keys.init, steps_in_epoch=4)
    data = DeviceDataset(jnp.asarray(tiny_mnist.train_images), jnp.asarray(tiny_mnist.train_labels))
    order = epoch_order(keys.shuffle, 200, 64)
    state, totals, loss = runner(state, TrainTotals.zeros(), data, order, 4, keys.augment, StepOptions(rotation=10.0))
    return state, totals


def test_the_same_seed_gives_bit_identical_parameters(tiny_mnist):
    first, _ = _train(tiny_mnist, run_steps_python)
    second, _ = _train(tiny_mnist, run_steps_python)
    other, _ = _train(tiny_mnist, run_steps_python, seed=1)
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.params["fc"]["kernel"], other.params["fc"]["kernel"])


def test_python_and_device_loops_compute_the_same_update(tiny_mnist):
    python_state, python_totals = _train(tiny_mnist, run_steps_python)
    device_state, device_totals = _train(tiny_mnist, run_steps_device)
    assert int(python_state.step) == int(device_state.step) == 4
    assert float(python_totals.images) == float(device_totals.images) == 200
    for a, b in zip(jax.tree.leaves(python_state.params), jax.tree.leaves(device_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _placed(tiny_mnist):
    keys = derive_keys(0)
    state = create_train_state(Config(), keys.init, steps_in_epoch=4)
    data = DeviceDataset(jnp.asarray(tiny_mnist.train_images), jnp.asarray(tiny_mnist.train_labels))
    return keys, state, jax.device_put(TrainTotals.zeros()), data, epoch_order(keys.shuffle, 200, 64)


def test_a_chunk_of_steps_sends_nothing_to_the_device_implicitly(tiny_mnist):
    """big_vision's guard: every host-to-device copy is explicit. The batch index comes from the
    state's step count, so the loops pass no Python integer per step."""
    for runner in (run_steps_python, run_steps_device):
        keys, state, totals, data, order = _placed(tiny_mnist)
        with jax.transfer_guard("disallow"):
            state, totals, loss = runner(state, totals, data, order, 3, keys.augment, StepOptions(rotation=10.0))
        assert int(state.step) == 3 and float(totals.images) == 192


def test_the_compiled_loop_has_a_known_trip_count(tiny_mnist):
    """A while loop whose length XLA does not know asks the host after every step on a GPU."""
    keys, state, totals, data, order = _placed(tiny_mnist)
    hlo = run_steps_device.lower(state, totals, data, order, 3, keys.augment, StepOptions(rotation=10.0)).compile().as_text()
    loops = [line for line in hlo.splitlines() if " while(" in line]
    assert loops and all("known_trip_count" in line for line in loops)


MAX_PROGRAMS = 8  # measured 2026-11-29: 8 for a one-epoch run (23 before state and keys became one program each)


def test_a_one_epoch_run_compiles_few_programs(tmp_path, tiny_mnist):
    """Every compiled program costs start-up time: the state is made in one program, not one per
    random draw and zeros, and the step and evaluation are one program each."""
    import os
    import subprocess
    import sys

    from conftest import write_idx

    idx = write_idx(tmp_path / "idx", tiny_mnist)
    result = subprocess.run(
        [sys.executable, "-m", "jaxmnist.train", "--idx-dir", str(idx), "--workdir", str(tmp_path / "run"), "--epochs", "1",
         "--allow-small-data", "--cache-dir", "", "--no-progress"],
        capture_output=True, text=True, env={**os.environ, "JAX_LOG_COMPILES": "1", "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    compiled = [line for line in result.stderr.splitlines() if "Compiling " in line]
    assert 3 <= len(compiled) <= MAX_PROGRAMS, "\n".join(compiled)


def test_seeds_trained_together_each_draw_their_own_angles(tiny_mnist):
    """run_steps_of_seeds (several seeds in one vmapped program) gives each seed what it gets
    trained alone: here two seeds share their start and batch order and differ only in their
    augmentation key, so seeds that shared one key would end equal."""
    from jaxmnist.core.loops import run_steps_of_seeds

    config = Config(rotation=45.0)
    state = create_train_state(config, jax.random.key(0), 4)
    data = DeviceDataset(jnp.asarray(tiny_mnist.train_images[:64]), jnp.asarray(tiny_mnist.train_labels[:64]))
    order = epoch_order(jax.random.key(3), 64, 16)
    keys = jax.random.split(jax.random.key(7), 2)
    options = StepOptions.from_config(config)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731 - the loops may donate their inputs
    alone = [run_steps_device(copy(state), TrainTotals.zeros(), data, order, 3, key, options)[0].params for key in keys]
    stack = lambda *trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)  # noqa: E731
    together, _, _ = run_steps_of_seeds(stack(state, state), stack(TrainTotals.zeros(), TrainTotals.zeros()), data,
                                        stack(order, order), 3, keys, options)
    # Batched and alone differ by float rounding only (1.5e-8 on a 2-core AMD EPYC with AVX-512,
    # 2026-12-03), the two seeds by 6e-3: a bound of 1e-4 holds on either CPU type and tells them apart.
    for seed in range(2):
        for got, expected in zip(jax.tree.leaves(together.params), jax.tree.leaves(alone[seed])):
            np.testing.assert_allclose(got[seed], expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(jax.tree.leaves(alone[0])[0], jax.tree.leaves(alone[1])[0], rtol=1e-4, atol=1e-4)  # keys matter
