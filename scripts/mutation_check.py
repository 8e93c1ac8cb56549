"""Put plausible bugs back, one at a time, and check that the test suite notices each of them.

    python scripts/mutation_check.py                 # every mutation against its closest tests
    python scripts/mutation_check.py --only eps best # some of them, by name
    python scripts/mutation_check.py --full          # each against the whole default suite (hours)

Each mutation is one textual change of the code (a bug a person could plausibly write), applied to
a copy of the checkout in a temporary folder; the test files most likely to notice it run there. A
mutation is "killed" when they fail, "survived" when they pass. The table goes to stdout as
Markdown; the latest one is in docs/testing.md. Exit status 1 when any mutation survived or no
longer applies (its original text is gone: update the list with the code).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Mutation(NamedTuple):
    name: str
    bug: str  # what a user would suffer
    file: str
    original: str  # must occur exactly once in file
    mutated: str
    tests: tuple[str, ...]  # the tests (files or node ids) that should notice


MUTATIONS = [
    Mutation("restart-everything", "--restart removes the user's own folders too", "jaxmnist/runtime/workdir.py",
             "removed = [name for name in RUN_OUTPUTS if",
             "removed = [name for name in [*RUN_OUTPUTS, *(p.name for p in path.iterdir() if p.is_dir())] if",
             ("tests/test_lab_promises.py::test_restart_discards_what_runs_write_and_nothing_of_the_users", "tests/test_workdir.py::test_restart_removes_what_the_run_wrote_and_nothing_else")),
    Mutation("best-is-latest", "'best' is the latest epoch", "jaxmnist/runtime/checkpoint.py",
             "        return self.manager.best_step()\n", "        return self.manager.latest_step()\n", ("tests/test_lab_promises.py::test_best_is_the_most_accurate_epoch_not_the_first_or_the_latest",)),
    Mutation("best-by-step", "the best checkpoint is ranked by step", "jaxmnist/ranking.py",
             'return chosen_by(metrics)[1], -metrics["step"]', 'return metrics["step"], 0',
             ("tests/test_lab_promises.py::test_best_is_the_most_accurate_epoch_not_the_first_or_the_latest", "tests/test_lab_promises.py::test_a_tie_keeps_the_earlier_epoch_as_the_lab_does")),
    Mutation("accuracy-fraction", "test accuracy stored as a fraction, not a percentage", "jaxmnist/runtime/run.py",
             "100.0 * correct / count, correct, count", "correct / count, correct, count",
             ("tests/test_lab_promises.py::test_accuracy_is_the_percentage_of_test_images_read_right",)),
    Mutation("no-dropout", "dropout never applied in training", "jaxmnist/core/steps.py",
             "images, train=True, rngs=", "images, train=False, rngs=", ("tests/test_lab_promises.py::test_each_recipe_flag_changes_what_training_computes",)),
    Mutation("normalize-swapped", "the normalization's mean and std swapped", "jaxmnist/core/augment.py",
             "MNIST_MEAN = 0.1307\nMNIST_STD = 0.3081", "MNIST_MEAN = 0.3081\nMNIST_STD = 0.1307",
             ("tests/test_lab_promises.py::test_normalization_is_the_labs_mean_and_std",)),
    Mutation("no-rotation", "--rotation never reaches the train step", "jaxmnist/core/steps.py",
             "return cls(config.rotation, config.translate, config.label_smoothing)",
             "return cls(0.0, config.translate, config.label_smoothing)", ("tests/test_lab_promises.py::test_each_recipe_flag_changes_what_training_computes",)),
    Mutation("no-label-smoothing", "--label-smoothing never reaches the train step", "jaxmnist/core/steps.py",
             "return cls(config.rotation, config.translate, config.label_smoothing)",
             "return cls(config.rotation, config.translate, 0.0)", ("tests/test_lab_promises.py::test_each_recipe_flag_changes_what_training_computes",)),
    Mutation("same-order", "the same batch order every epoch", "jaxmnist/runtime/run.py",
             "epoch_order(jax.random.fold_in(keys.shuffle, epoch)", "epoch_order(jax.random.fold_in(keys.shuffle, 1)",
             ("tests/test_lab_promises.py::test_each_epoch_trains_on_a_fresh_order",)),
    Mutation("same-angles", "the same rotation angles at every step", "jaxmnist/core/loops.py",
             "train_step(state, batch, jax.random.fold_in(augment_key, state.step), options)",
             "train_step(state, batch, augment_key, options)", ("tests/test_golden.py",)),
    Mutation("padding-counted", "padded test images counted as correct", "jaxmnist/core/steps.py",
             "correct=jnp.sum(hits * batch.mask.astype(jnp.int32))", "correct=jnp.sum(hits)",
             ("tests/test_lab_promises.py::test_padded_test_images_are_never_counted",)),
    Mutation("loss-mask-ignored", "the training loss averages the padding too", "jaxmnist/core/steps.py",
             "return jnp.sum(cross_entropy(logits, labels, label_smoothing) * mask) / jnp.maximum(jnp.sum(mask), 1.0)",
             "return jnp.mean(cross_entropy(logits, labels, label_smoothing))", ("tests/test_steps.py::test_masked_loss_averages_over_real_images_only", "tests/test_golden.py")),
    Mutation("always-invert", "predict always inverts the picture", "jaxmnist/apps/prepare.py",
             "ink = grey - paper if np.median(paper) < 0.5 else paper - grey", "ink = paper - grey",
             ("tests/test_lab_promises.py::test_pictures_of_either_polarity_give_the_same_digit",)),
    Mutation("adam-eps", "Adam's eps 1e-6 instead of the lab's 1e-8", "jaxmnist/core/optimizers.py",
             "optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)",
             "optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-6)", ("tests/test_lab_promises.py::test_adam_uses_the_labs_betas_and_eps",)),
    Mutation("adam-b2", "Adam's b2 0.99 instead of 0.999", "jaxmnist/core/optimizers.py",
             "optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)",
             "optax.adam(schedule, b1=0.9, b2=0.99, eps=1e-8)", ("tests/test_lab_promises.py::test_adam_uses_the_labs_betas_and_eps",)),
    Mutation("decay-late", "the step decay one epoch late", "jaxmnist/core/steps.py",
             "transition_steps=config.lr_decay_epochs * steps_in_epoch",
             "transition_steps=(config.lr_decay_epochs + 1) * steps_in_epoch", ("tests/test_lab_promises.py::test_the_step_decay_reaches_the_optimizer", "tests/test_steps.py::test_learning_rate_steps_down_after_lr_decay_epochs")),
    Mutation("decay-factor", "the step decay's factor ignored", "jaxmnist/core/steps.py",
             "decay_rate=config.lr_decay, staircase=True", "decay_rate=0.1, staircase=True", ("tests/test_lab_promises.py::test_each_recipe_flag_changes_what_training_computes",)),
    Mutation("rotation-sign", "images rotated the other way", "jaxmnist/core/augment.py",
             "theta = jnp.deg2rad(degrees.astype(jnp.float32))[:, None, None]",
             "theta = -jnp.deg2rad(degrees.astype(jnp.float32))[:, None, None]", ("tests/test_augment.py",)),
    Mutation("pool-ceil", "pooling pads odd sizes instead of flooring them", "jaxmnist/core/models/layers.py",
             "height, width = height // window * window, width // window * window",
             "height, width = -(-height // window) * window, -(-width // window) * window", ("tests/test_model.py::test_max_pool_equals_flax_max_pool_for_any_shape_and_floors_odd_sizes",)),
    Mutation("batchnorm-frozen", "BatchNorm's running statistics never updated", "jaxmnist/core/steps.py",
             'batch_stats=updates.get("batch_stats", state.batch_stats)', "batch_stats=state.batch_stats",
             ("tests/test_model.py::test_every_model_trains_and_its_gradient_holds_no_scatter",)),
    Mutation("batchnorm-not-saved", "BatchNorm statistics left out of checkpoints", "jaxmnist/runtime/checkpoint.py",
             'arrays = {**state.variables(), "opt_state": state.opt_state, "progress": progress}',
             'arrays = {"params": state.params, "opt_state": state.opt_state, "progress": progress}', ("tests/test_lab_promises.py::test_a_resnet_run_resumes_exactly_with_its_batchnorm_statistics",)),
    Mutation("digest-unchecked", "a flipped bit in a checkpoint goes unnoticed", "jaxmnist/runtime/checkpoint.py",
             "if not dtype or _sha256(array.astype(np.dtype(dtype), copy=False)) != digest:", "if not dtype:",
             ("tests/test_integrity.py::test_a_flipped_bit_is_refused_by_every_command_naming_the_step",)),
    Mutation("last-test-batch-dropped", "the last test batch is never evaluated", "jaxmnist/core/loops.py",
             "jax.device_put([np.int32(i) for i in range(batches.images.shape[0])])",
             "jax.device_put([np.int32(i) for i in range(batches.images.shape[0] - 1)])",
             ("tests/test_lab_promises.py::test_padded_test_images_are_never_counted", "tests/test_lab_promises.py::test_accuracy_is_the_percentage_of_test_images_read_right")),
    Mutation("weight-decay-biases", "weight decay applied to the biases too", "jaxmnist/core/optimizers.py",
             'lambda path, _: path[-1].key == "kernel"', "lambda path, _: True", ("tests/test_recipes.py::test_weight_decay_shrinks_the_kernels_and_spares_the_biases",)),
    # Six bugs that once left the whole default suite green (each now has its own test):
    Mutation("fingerprint-not-compared", "a resumed run accepts other images in the same folder", "jaxmnist/runtime/resume.py",
             'if saved["fingerprint"] != current["fingerprint"]:', 'if saved["name"] != current["name"]:',
             ("tests/test_workdir.py::test_other_images_put_in_the_run_s_own_data_folder_are_refused_too",)),
    Mutation("test-loss-smoothed", "the test loss computed against smoothed labels", "jaxmnist/core/steps.py",
             "    losses = cross_entropy(logits, batch.labels)\n", "    losses = cross_entropy(logits, batch.labels, 0.1)\n",
             ("tests/test_evaluate.py::test_the_test_loss_is_plain_cross_entropy_even_when_training_smooths_labels",)),
    Mutation("confusion-transposed", "the confusion matrix's rows are the predictions", "jaxmnist/apps/evaluate.py",
             "np.add.at(confusion, (labels, predictions), 1)", "np.add.at(confusion, (predictions, labels), 1)",
             ("tests/test_evaluate.py::test_the_confusion_matrix_has_a_row_per_true_label",)),
    Mutation("16-bit-as-8-bit", "16-bit pictures scaled as if 8-bit", "jaxmnist/apps/picture.py",
             'promised = 1.0 if picture.mode == "F" else 65535.0', 'promised = 1.0 if picture.mode == "F" else 255.0',
             ("tests/test_predict.py::test_wide_pixels_are_scaled_from_their_own_range_not_clipped",)),
    Mutation("dropout-halved", "the dropout rate applied is half the one asked", "jaxmnist/core/models/lab.py",
             "nn.Dropout(self.dropout, deterministic=not train)", "nn.Dropout(self.dropout / 2, deterministic=not train)",
             ("tests/test_lab_promises.py::test_dropout_zeroes_the_fraction_asked_and_scales_the_rest",)),
    Mutation("seeds-share-a-key", "seeds trained together share the first seed's augmentation", "jaxmnist/core/loops.py",
             "run_steps_device(state, total, data, order, num_steps, key, options))(",
             "run_steps_device(state, total, data, order, num_steps, augment_keys[0], options))(",
             ("tests/test_steps.py::test_seeds_trained_together_each_draw_their_own_angles",)),
    Mutation("angles-halved", "random rotation draws from half the range asked", "jaxmnist/core/augment.py",
             "minval=-max_degrees, maxval=max_degrees", "minval=-max_degrees / 2, maxval=max_degrees / 2",
             ("tests/test_augment.py::test_angles_span_the_whole_range_asked_and_shifts_every_whole_pixel",)),
    Mutation("best-by-loss", "the best epoch is the one with the lowest test loss", "jaxmnist/ranking.py",
             'return chosen_by(metrics)[1], -metrics["step"]', 'return -metrics.get("test_loss", 0.0), -metrics["step"]',
             ("tests/test_lab_promises.py::test_the_best_epoch_is_the_most_accurate_even_where_another_has_the_lower_test_loss",)),
    Mutation("export-interrupted", "Ctrl-C after an export is written turns its success into 130", "jaxmnist/apps/export.py",
             "    with _sigint_held():\n        _report(args, record)", "    _report(args, record)",
             ("tests/test_integrity.py::test_a_ctrl_c_after_the_export_is_written_still_ends_in_success",)),
    Mutation("sweep-children-orphaned", "a killed sweep's runs train on alone", "jaxmnist/apps/sweep/pool.py",
             "        _end_with_parent()\n", "        pass\n",
             ("tests/test_sweep.py::test_the_runs_of_a_killed_sweep_save_and_stop_with_it",)),
    Mutation("lr-underflow", "a learning rate float32 rounds to 0 is accepted", "jaxmnist/config.py",
             "FLOAT32_TINY <= self.lr <= FLOAT32_MAX", "0 < self.lr < math.inf",
             ("tests/test_train.py::test_bad_flags_are_refused_before_any_work",)),
    Mutation("any-host", "the drawing page answers any Host header", "jaxmnist/apps/serve.py",
             "middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))]",
             'middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=["*"])]', ("tests/test_serve.py::test_only_this_machine_s_pages_and_bounded_pictures_are_answered",)),
    # The optimizers, the datasets and the flip:
    Mutation("sgd-momentum", "SGD's momentum 0.8 instead of 0.9", "jaxmnist/core/optimizers.py",
             "optax.sgd(schedule, momentum=0.9)", "optax.sgd(schedule, momentum=0.8)",
             ("tests/test_recipes.py::test_sgd_is_momentum_0_9_on_the_schedule",)),
    Mutation("ten-outputs-always", "every model has 10 outputs, whatever the dataset", "jaxmnist/core/models/__init__.py",
             'recipe | {"num_classes": num_classes(recipe["dataset"])}', 'recipe | {"num_classes": 10}',
             ("tests/test_datasets.py::test_a_26_class_set_trains_and_evaluates_with_26_outputs_named_a_to_z",)),
    Mutation("emnist-sideways", "EMNIST's images left transposed", "jaxmnist/data.py",
             "if info.transposed else (lambda x: x)", "if False else (lambda x: x)",
             ("tests/test_datasets.py::test_a_26_class_set_trains_and_evaluates_with_26_outputs_named_a_to_z",)),
    Mutation("flip-everything", "--flip mirrors every image, not half", "jaxmnist/core/augment.py",
             "images = jnp.where(mirrored[:, None, None], images[:, :, ::-1], images)",
             "images = jnp.where(True, images[:, :, ::-1], images)",
             ("tests/test_recipes.py::test_flip_mirrors_about_half_the_images_and_leaves_the_angles_as_drawn_without_it",)),
    Mutation("article-by-mass", "a clothing photo is prepared as a digit (20 px, centre of mass)", "jaxmnist/apps/prepare.py",
             'PREPARE = {"ink": prepare_digit, "article": prepare_article}', 'PREPARE = {"ink": prepare_digit, "article": prepare_digit}',
             ("tests/test_datasets.py::test_real_fashion_mnist_files_train_and_predict_by_name",)),
]


def _copy_checkout(target: Path) -> None:
    """The checkout's files that git tracks or would track (the working tree as it is), not .venv."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def try_mutation(mutation: Mutation, scratch: Path, full: bool) -> tuple[str, float]:
    """(outcome, seconds): killed, survived, or 'does not apply'."""
    path = scratch / mutation.file
    text = path.read_text()
    if text.count(mutation.original) != 1:
        return "does not apply", 0.0
    path.write_text(text.replace(mutation.original, mutation.mutated))
    try:
        tests = [] if full else list(mutation.tests)
        env = {**os.environ, "PYTHONPATH": str(scratch)}
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                cwd=scratch, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode == 0:  # all passed: survived; or none ran (all skipped): not tried
            ran = any(" passed" in line for line in result.stdout.splitlines()[-3:])
            return ("survived" if ran else "not run (its tests were skipped)"), seconds
        if result.returncode == 1:
            return "killed", seconds
        return f"error (pytest exit {result.returncode})", seconds
    finally:
        path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--full", action="store_true", help="run the whole default suite against each mutation")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"no mutation named {', '.join(sorted(unknown))}; known: {', '.join(m.name for m in MUTATIONS)}")
    with tempfile.TemporaryDirectory(prefix="jaxmnist-mutations-") as folder:
        scratch = Path(folder) / "checkout"
        _copy_checkout(scratch)
        if (ROOT.parent / "shared").is_dir():  # the real MNIST some tests read, beside the copy as beside the checkout
            (Path(folder) / "shared").symlink_to(ROOT.parent / "shared")
        print("| mutation | the bug | tests run | outcome | seconds |\n|---|---|---|---|---:|", flush=True)
        outcomes = []
        for mutation in chosen:
            outcome, seconds = try_mutation(mutation, scratch, args.full)
            outcomes.append(outcome)
            tests = "all" if args.full else ", ".join(t.split("/")[-1].replace(".py", "") for t in mutation.tests)
            print(f"| {mutation.name} | {mutation.bug} | {tests} | {outcome} | {seconds:.0f} |", flush=True)
    killed = outcomes.count("killed")
    print(f"\n{killed} of {len(outcomes)} mutations killed.")
    return 0 if killed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
