"""The lab's recipe and the project's promises, each pinned by a test that a plausible bug fails.

Each test names the bug it guards against; scripts/mutation_check.py puts those bugs back one at
a time and checks that the suite notices. Knobs are set through the command line's parser, the
path a user takes, so a flag that never reaches the step it should change is caught here.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_results

from jaxmnist.apps import evaluate as evaluate_command
from jaxmnist.apps.prepare import NotADigit, prepare_digit
from jaxmnist.config import parse_config
from jaxmnist.core.augment import normalize
from jaxmnist.core.loops import evaluate, stack_batches
from jaxmnist.core.models import build_model
from jaxmnist.core.steps import create_train_state
from jaxmnist.runtime import run, workdir
from jaxmnist.runtime.checkpoint import Checkpoints


def _config(tmp_path, *flags: str, name: str = "run"):
    """A Config as `python -m jaxmnist.train` would parse it, for the tiny test data."""
    return parse_config(["--workdir", str(tmp_path / name), "--allow-small-data", "--log-every", "1",
                         "--eval-batch-size", "16", "--no-progress", "--cache-dir", "", *flags], prog="test", description="")


def _train_losses(tmp_path, dataset, *flags: str):
    """Every logged training loss (one per step) and the final parameters of a tiny run."""
    config = _config(tmp_path, *flags, name="-".join(flags) or "default")
    run.train_and_evaluate(config, dataset)
    records = [json.loads(line) for line in (tmp_path / config.workdir / "metrics.jsonl").read_text().splitlines()]
    losses = np.array([r["loss"] for r in records if r["kind"] == "train"])
    checkpoints = Checkpoints(f"{config.workdir}/checkpoints", read_only=True)
    params = checkpoints.restore_variables(checkpoints.latest_step())[0]["params"]
    return losses, params


# --- the lab's numbers, through the command line ----------------------------------------------------

def test_the_default_command_line_is_the_labs_recipe():
    config = parse_config([], prog="test", description="")
    # The lab: 5 epochs, batch 64, Adam lr 1e-3, StepLR(step_size=5, gamma=0.1), RandomRotation(10).
    assert (config.epochs, config.batch_size, config.lr) == (5, 64, 1e-3)
    assert (config.schedule, config.lr_decay_epochs, config.lr_decay) == ("step", 5, 0.1)
    assert (config.rotation, config.translate, config.dropout) == (10.0, 0, 0.0)
    assert (config.label_smoothing, config.weight_decay, config.model) == (0.0, 0.0, "lab")


def test_normalization_is_the_labs_mean_and_std():
    # Normalize((0.1307,), (0.3081,)) after ToTensor(): written out here, not read from the module.
    pixels = jnp.array([[[0, 128, 255]]], jnp.uint8)
    expected = (np.array([0, 128, 255]) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(np.asarray(normalize(pixels)).ravel(), expected, rtol=1e-6)


def test_adam_uses_the_labs_betas_and_eps():
    """Three updates against PyTorch's Adam written out in float64 (b1 0.9, b2 0.999, eps 1e-8).

    Gradients span 1e-10..1: where they are near eps, another eps changes the update by far more
    than the tolerance; other betas change the second and third updates."""
    state = create_train_state(parse_config([], prog="test", description=""), jax.random.key(0), steps_in_epoch=938)
    params0 = jax.tree.map(lambda p: np.asarray(p, np.float64), state.params)
    scales = jax.tree.map(lambda p: np.logspace(-10, 0, p.size).reshape(p.shape), params0)
    m = jax.tree.map(np.zeros_like, params0)
    v = jax.tree.map(np.zeros_like, params0)
    expected = params0
    for t, factor in enumerate((1.0, -0.5, 2.0), start=1):
        grads = jax.tree.map(lambda s: s * factor, scales)
        state = state.apply_gradients(grads=jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads))
        m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, grads)
        v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, grads)
        expected = jax.tree.map(
            lambda p, m, v: p - 1e-3 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8), expected, m, v)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=2e-7)


def test_each_recipe_flag_changes_what_training_computes(tmp_path, tiny_mnist):
    """A flag that never reaches the step leaves the losses and parameters unchanged. Two epochs of
    four steps: the decay and warmup flags act at epoch boundaries."""
    base, base_params = _train_losses(tmp_path, tiny_mnist, "--epochs", "2", "--lr-decay-epochs", "1")
    for flags in (["--rotation", "0"], ["--translate", "2"], ["--dropout", "0.5"], ["--label-smoothing", "0.2"],
                  ["--optimizer", "adamw", "--weight-decay", "0.5"], ["--optimizer", "sgd"], ["--flip"], ["--lr", "2e-3"], ["--lr-decay", "0.5"], ["--schedule", "cosine"],
                  ["--warmup-epochs", "1"], ["--seed", "1"], ["--batch-size", "50"]):
        losses, params = _train_losses(tmp_path, tiny_mnist, "--epochs", "2", "--lr-decay-epochs", "1", *flags)
        moved = losses.shape != base.shape or not np.allclose(losses, base, rtol=0, atol=1e-6)
        assert moved, f"{' '.join(flags)} did not change the training losses"
        assert not np.allclose(params["fc"]["kernel"], base_params["fc"]["kernel"], rtol=0, atol=1e-7), flags


def test_the_step_decay_reaches_the_optimizer(tmp_path, tiny_mnist):
    """The lab's StepLR: epoch 2's logged rate is lr * decay, and the run's steps use that rate."""
    decayed, _ = _train_losses(tmp_path, tiny_mnist, "--epochs", "2", "--lr-decay-epochs", "1")
    records = [json.loads(line) for line in (tmp_path / "--epochs-2---lr-decay-epochs-1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records if r["kind"] == "epoch"] == pytest.approx([1e-3, 1e-4])
    undecayed, _ = _train_losses(tmp_path, tiny_mnist, "--epochs", "2")  # decay after 5 epochs: none here
    np.testing.assert_array_equal(decayed[:4], undecayed[:4])  # epoch 1 is the same
    assert not np.allclose(decayed[4:], undecayed[4:], rtol=0, atol=1e-7)


def test_each_epoch_trains_on_a_fresh_order(tmp_path, tiny_mnist):
    """With a learning rate too small to move the model, each step's loss depends only on which
    images make up its batch: the same order in both epochs would repeat epoch 1's losses."""
    losses, _ = _train_losses(tmp_path, tiny_mnist, "--epochs", "2", "--rotation", "0", "--lr", "1e-12")
    first, second = losses[:4], losses[4:]
    assert not np.allclose(first, second, rtol=0, atol=1e-4), "epoch 2 repeated epoch 1's batch order"


def test_dropout_acts_in_training_only(tiny_mnist):
    config = parse_config(["--dropout", "0.5", "--rotation", "0"], prog="test", description="")
    model = build_model(config)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    images = normalize(jnp.asarray(tiny_mnist.train_images[:8]))
    train = [model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(k)}) for k in (1, 2)]
    assert not np.allclose(train[0], train[1])  # a fresh mask per key
    np.testing.assert_array_equal(model.apply(variables, images), model.apply(variables, images))


@pytest.mark.parametrize("model", ["lab", "resnet"])
@pytest.mark.parametrize("rate", [0.3, 0.6])
def test_dropout_zeroes_the_fraction_asked_and_scales_the_rest(tiny_mnist, model, rate):
    """What reaches nn.Dropout and what leaves it, in training: about `rate` of the values zeroed,
    the others divided by 1 - rate (inverted dropout: the same expected value as without it)."""
    import flax.linen as nn

    config = parse_config(["--model", model, "--dropout", str(rate)], prog="test", description="")
    built = build_model(config)
    variables = built.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    seen = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.Dropout):
            seen.append((np.asarray(args[0]), np.asarray(out)))
        return out

    images = normalize(jnp.asarray(np.repeat(tiny_mnist.train_images, 4, axis=0)[:256]))
    with nn.intercept_methods(record):
        built.apply(variables, images, train=True, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
    [(inputs, outputs)] = seen
    live = inputs != 0
    dropped = (outputs == 0) & live
    assert dropped.sum() / live.sum() == pytest.approx(rate, abs=0.03)
    kept = live & ~dropped
    np.testing.assert_allclose(outputs[kept], inputs[kept] / (1 - rate), rtol=1e-5)


# --- what a finished run reports ----------------------------------------------------------------------

def test_accuracy_is_the_percentage_of_test_images_read_right(tmp_path, tiny_mnist, caplog):
    caplog.set_level("INFO", logger="jaxmnist")
    config = _config(tmp_path, "--epochs", "1")
    (record,) = run.train_and_evaluate(config, tiny_mnist)
    params = Checkpoints(f"{config.workdir}/checkpoints", read_only=True).restore_variables(4)[0]["params"]
    logits = build_model(config).apply({"params": params}, normalize(jnp.asarray(tiny_mnist.test_images)))
    correct = int(np.sum(np.argmax(logits, axis=-1) == tiny_mnist.test_labels))  # counted here, independently
    assert (record["correct"], record["test_images"]) == (correct, 30)
    assert record["test_accuracy"] == pytest.approx(100.0 * correct / 30)
    assert f"Test Accuracy: {correct}/30 ({100.0 * correct / 30:.2f}%)" in caplog.text


def test_padded_test_images_are_never_counted(tiny_mnist):
    """A model that answers 0 for everything, on 30 images in batches of 16: the two padding images
    (black, label 0) would add two hits if the mask were ignored."""
    model = build_model(parse_config([], prog="test", description=""))
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    params = jax.tree.map(jnp.zeros_like, params)
    params["fc"]["bias"] = params["fc"]["bias"].at[0].set(10.0)  # always class 0
    batches = stack_batches(tiny_mnist.test_images, tiny_mnist.test_labels, 16)
    totals, probabilities = evaluate(model, {"params": params}, batches)
    assert int(totals.count) == 30 and probabilities.shape == (30, 10)
    assert int(totals.correct) == int(np.sum(tiny_mnist.test_labels == 0))


def _save(directory, state, step: int, accuracy: float | None) -> None:
    """A checkpoint whose parameters all equal its step, ranked by accuracy (None: mid-epoch)."""
    marked = state.replace(params=jax.tree.map(lambda p: jnp.full_like(p, step), state.params))
    rank = None if accuracy is None else {"test_accuracy": accuracy, "step": step}
    meta = {"step": step, "config": {}} | ({} if rank is None else {"test_accuracy": accuracy})
    with Checkpoints(directory) as checkpoints:
        checkpoints.save(step, marked, {"step": step}, meta, rank)


def test_best_is_the_most_accurate_epoch_not_the_first_or_the_latest(tmp_path):
    state = create_train_state(parse_config([], prog="test", description=""), jax.random.key(0), steps_in_epoch=4)
    directory = tmp_path / "run" / "checkpoints"
    for step, accuracy in ((4, 50.0), (8, 80.0), (12, 60.0)):  # epoch ends: better, then worse
        _save(directory, state, step, accuracy)
    checkpoints = Checkpoints(directory, read_only=True)
    assert checkpoints.steps() == [8, 12]  # the best and the latest epoch; nothing else is kept
    assert checkpoints.best_step() == 8 and evaluate_command.resolve_step(checkpoints, "best") == 8
    assert float(checkpoints.restore_variables(8)[0]["params"]["fc"]["bias"][0]) == 8.0
    _save(directory, state, 14, None)  # a mid-epoch save replaces the latest, never the best
    checkpoints = Checkpoints(directory, read_only=True)
    assert checkpoints.steps() == [8, 14] and checkpoints.best_step() == 8 and checkpoints.latest_step() == 14


def test_the_best_epoch_is_the_most_accurate_even_where_another_has_the_lower_test_loss():
    from jaxmnist.ranking import rank

    epochs = [{"kind": "epoch", "step": 4, "test_accuracy": 98.0, "test_loss": 0.04},
              {"kind": "epoch", "step": 8, "test_accuracy": 98.6, "test_loss": 0.06}]
    assert max(epochs, key=rank)["step"] == 8  # the lab keeps the more accurate model, not the lower loss
    held_out = [epoch | {"val_accuracy": accuracy} for epoch, accuracy in zip(epochs, (99.0, 98.0))]
    assert max(held_out, key=rank)["step"] == 4  # with a validation set, its accuracy chooses


def test_a_tie_keeps_the_earlier_epoch_as_the_lab_does(tmp_path):
    state = create_train_state(parse_config([], prog="test", description=""), jax.random.key(0), steps_in_epoch=4)
    directory = tmp_path / "checkpoints"
    for step in (4, 8):
        _save(directory, state, step, 70.0)  # the lab saves only when acc > best
    assert Checkpoints(directory, read_only=True).best_step() == 4


def test_restart_discards_what_runs_write_and_nothing_of_the_users(tmp_path, tiny_mnist):
    config = _config(tmp_path, "--epochs", "1")
    run.train_and_evaluate(config, tiny_mnist)
    path = tmp_path / "run"
    (path / "my-notes").mkdir()
    (path / "my-notes" / "ideas.txt").write_text("keep me")
    (path / "data").mkdir()  # a user's own folder with a plausible name
    (path / "notes.txt").write_text("mine")
    written = {p.name for p in path.iterdir()} - {"my-notes", "data", "notes.txt"}
    removed = workdir.discard_previous_run(path)
    assert set(removed) == written - {workdir.LOCK_FILE}  # the lock stays: the next run reuses it
    assert (path / "my-notes" / "ideas.txt").read_text() == "keep me"
    assert (path / "data").is_dir() and (path / "notes.txt").read_text() == "mine"
    assert not (path / "checkpoints").exists() and not (path / "metrics.jsonl").exists()


# --- pictures ---------------------------------------------------------------------------------------

def _drawn_seven(ink: int, paper: int) -> np.ndarray:
    picture = np.full((60, 40), paper, np.uint8)
    picture[10:14, 8:32] = ink  # the bar
    for row in range(14, 50):  # the stem, leaning left
        column = 30 - (row - 14) // 2
        picture[row, column - 2 : column + 2] = ink
    return picture


def test_pictures_of_either_polarity_give_the_same_digit():
    light_on_dark = prepare_digit(_drawn_seven(ink=255, paper=0))  # MNIST's own polarity
    dark_on_light = prepare_digit(_drawn_seven(ink=0, paper=255))  # a pen on paper
    np.testing.assert_array_equal(light_on_dark, dark_on_light)
    assert light_on_dark.max() == 255 and light_on_dark[0].max() == 0  # white ink, black border
    with pytest.raises(NotADigit, match="no ink"):
        prepare_digit(np.zeros((28, 28), np.uint8))


def test_a_resnet_run_resumes_exactly_with_its_batchnorm_statistics(tmp_path, tiny_mnist):
    """BatchNorm's running statistics are part of what a checkpoint holds: a run continued from
    epoch 1 computes what an uninterrupted one does, bit for bit, and evaluates with them."""
    def finish(name, *epochs):
        for count in epochs:
            run.train_and_evaluate(_config(tmp_path, "--model", "resnet", "--epochs", count, name=name), tiny_mnist)
        records, _ = run_results(tmp_path / name)
        checkpoints = Checkpoints(tmp_path / name / "checkpoints", read_only=True)
        return records, checkpoints.restore_variables(checkpoints.latest_step())[0]

    straight_records, straight = finish("straight", "2")
    resumed_records, resumed = finish("resumed", "1", "2")
    assert resumed_records == straight_records
    assert set(straight) == {"params", "batch_stats"}
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
        np.testing.assert_array_equal(a, b)
