import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxmnist.apps import evaluate
from jaxmnist.config import Config
from jaxmnist.runtime import run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 3-epoch run on small data, shared by the tests below (they only read it)."""
    from conftest import make_mnist

    dataset = make_mnist(200, 30)
    workdir = tmp_path_factory.mktemp("run")
    records = run.train_and_evaluate(Config(workdir=str(workdir), epochs=3, eval_batch_size=16, allow_small_data=True), dataset)
    return workdir, dataset, records


def test_best_checkpoint_reproduces_the_logged_correct_count(trained_run):
    workdir, dataset, records = trained_run
    report = evaluate.evaluate_checkpoint(workdir, "best", dataset=dataset)
    best = max(records, key=lambda r: (r["test_accuracy"], -r["step"]))
    assert report["step"] == best["step"] and report["correct"] == best["correct"] == report["logged_correct"]
    assert report["test_loss"] == pytest.approx(best["test_loss"], rel=1e-6)


def test_report_fields_add_up(trained_run):
    workdir, dataset, _ = trained_run
    report = evaluate.evaluate_checkpoint(workdir, "latest", dataset=dataset)
    saved = json.loads(evaluate.write_report(workdir, report).read_text())
    assert saved == json.loads(json.dumps(report))
    assert sum(row["total"] for row in saved["per_class"].values()) == 30
    assert sum(row["correct"] for row in saved["per_class"].values()) == saved["correct"]
    assert np.trace(saved["confusion_matrix"]) == saved["correct"] and np.sum(saved["confusion_matrix"]) == 30
    assert len(saved["misclassified"]) == 30 - saved["correct"]
    confidences = [m["confidence"] for m in saved["misclassified"]]
    assert confidences == sorted(confidences, reverse=True)
    for m in saved["misclassified"]:
        assert dataset.test_labels[m["index"]] == m["true"] != m["predicted"]


def test_load_model_maps_uint8_and_normalized_images_to_probabilities(trained_run):
    from jaxmnist.core.augment import normalize

    workdir, dataset, _ = trained_run
    predict = evaluate.load_model(workdir)
    probabilities = predict(dataset.test_images[:5])
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    images = dataset.test_images[:5]
    np.testing.assert_allclose(predict(np.asarray(normalize(images)), scale="normalized"), probabilities, rtol=1e-5)
    np.testing.assert_allclose(predict(images / 255.0, scale="unit"), probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict(images.astype(np.float32), scale="pixels"), probabilities, rtol=1e-6)
    with pytest.raises(ValueError, match="Float images need scale="):
        predict(images / 255.0)  # never guessed


def test_load_model_prints_nothing(trained_run):
    import subprocess
    import sys

    workdir, _, _ = trained_run
    script = f"from jaxmnist.apps.evaluate import load_model; import numpy as np; load_model({str(workdir)!r})(np.zeros((1, 28, 28), np.uint8))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr


def _one_line_failure(argv, capsys):
    assert evaluate.main(argv) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and out == ""  # errors go to stderr, nothing to stdout
    return lines[0]


def test_bad_workdirs_and_steps_are_one_line_errors(trained_run, tmp_path, capsys):
    workdir, _, _ = trained_run
    assert "does not exist" in _one_line_failure(["--workdir", str(tmp_path / "nowhere")], capsys)
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    assert "holds no checkpoints" in _one_line_failure(["--workdir", str(tmp_path / "empty")], capsys)
    assert "no checkpoint for --step 7" in _one_line_failure(["--workdir", str(workdir), "--step", "7"], capsys)


def flip_a_parameter_bit(step_folder: Path) -> None:
    """One bit flipped in the middle of the largest parameter data file: inside the stored floats,
    which Orbax would restore without a word."""
    data_file = max((p for p in (step_folder / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    content = bytearray(data_file.read_bytes())
    content[len(content) // 2] ^= 1
    data_file.write_bytes(bytes(content))


@pytest.mark.parametrize("damage, message", [
    ("a flipped bit", "is damaged: its params fc.kernel differs from the digest recorded when it was saved."),
    ("zeroed files", "cannot be read ("),
])
def test_a_damaged_checkpoint_is_a_one_line_error(trained_run, tmp_path, capsys, damage, message):
    source, _, _ = trained_run
    workdir = tmp_path / "copy"
    shutil.copytree(source, workdir)
    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    if damage == "a flipped bit":
        flip_a_parameter_bit(workdir / "checkpoints" / str(step))
    else:
        for path in (workdir / "checkpoints" / str(step) / "params").rglob("*"):
            if path.is_file() and path.stat().st_size > 0:
                path.write_bytes(b"\0" * 10)
    line = _one_line_failure(["--workdir", str(workdir), "--step", str(step)], capsys)
    assert f"Checkpoint step {step} in {workdir / 'checkpoints'} " in line and message in line
    assert "<bound method" not in line and "TensorStore" not in line


def test_a_checkpoint_of_another_model_is_refused(tmp_path, capsys):
    import jax.numpy as jnp

    from jaxmnist.runtime.checkpoint import Checkpoints

    params = {"fc": {"kernel": jnp.zeros((3, 3))}}
    state = type("State", (), {"params": params, "opt_state": {"count": jnp.int32(0)}, "batch_stats": {},
                               "variables": lambda self: {"params": params}})()
    with Checkpoints(tmp_path / "checkpoints") as checkpoints:
        checkpoints.save(1, state, {"step": jnp.int32(1)}, {"epoch": 1, "step": 1, "config": {}}, None)
    assert "belongs to another model (this model has conv1.bias of shape (16,), the checkpoint has no conv1.bias" in _one_line_failure(["--workdir", str(tmp_path), "--step", "latest"], capsys)


# Committees: the mean of several runs' probabilities.

@pytest.fixture(scope="module")
def committee_runs(trained_run, tmp_path_factory):
    """trained_run and a second member (another seed, the same data), and a run on other data."""
    from conftest import make_mnist

    workdir, dataset, _ = trained_run
    second, other = tmp_path_factory.mktemp("seed1"), tmp_path_factory.mktemp("other")
    run.train_and_evaluate(Config(workdir=str(second), epochs=1, seed=1, eval_batch_size=16, allow_small_data=True), dataset)
    run.train_and_evaluate(Config(workdir=str(other), epochs=1, eval_batch_size=16, allow_small_data=True), make_mnist(200, 30, seed=1))
    return [workdir, second], other, dataset


def test_a_committee_answers_with_the_mean_of_its_members_probabilities(committee_runs):
    workdirs, _, dataset = committee_runs
    # Independently of the committee's code: each member as load_model gives it, on the raw images.
    members = np.stack([evaluate.load_model(workdir)(dataset.test_images) for workdir in workdirs])
    assert not np.allclose(members[0], members[1], atol=1e-3)  # two different members, so the mean is not either
    _, _, probabilities = evaluate.committee_probabilities(evaluate.restore_committee(workdirs), dataset)
    np.testing.assert_allclose(probabilities, members.mean(axis=0), rtol=1e-5, atol=1e-6)

    report = evaluate.evaluate_committee(workdirs, dataset=dataset)
    answers, labels = probabilities.argmax(axis=1), dataset.test_labels
    assert report["correct"] == int((answers == labels).sum()) and report["test_images"] == 30
    assert report["test_accuracy"] == pytest.approx(100.0 * report["correct"] / 30)
    assert [m["index"] for m in report["misclassified"]] == sorted(np.flatnonzero(answers != labels).tolist(),
                                                                   key=lambda i: -probabilities[i, answers[i]])
    for miss in report["misclassified"]:
        assert miss["confidence"] == pytest.approx(probabilities[miss["index"], miss["predicted"]], rel=1e-6)
        assert miss["members"] == members[:, miss["index"]].argmax(axis=1).tolist()
    assert sum(row["correct"] for row in report["per_class"].values()) == report["correct"]
    for member, workdir, alone in zip(report["members"], workdirs, members):
        assert (member["workdir"], member["correct"]) == (str(workdir), int((alone.argmax(axis=1) == labels).sum()))


def test_the_committee_command_prints_and_writes_its_report(committee_runs, tmp_path, capsys):
    from conftest import write_idx

    workdirs, _, dataset = committee_runs
    idx = write_idx(tmp_path / "idx", dataset)
    out = tmp_path / "committee.json"
    argv = ["--idx-dir", str(idx), "--out", str(out)]
    assert evaluate.main([arg for w in workdirs for arg in ("--workdir", str(w))] + argv) == 0
    printed, errors = capsys.readouterr()
    report = json.loads(out.read_text())
    assert errors == "" and [m["workdir"] for m in report["members"]] == [str(w) for w in workdirs]
    for member in report["members"]:
        assert f"{member['correct']:5d}/   30  {member['test_accuracy']:7.2f}%" in printed
    committee_line = next(line for line in printed.splitlines() if line.startswith("committee "))
    assert committee_line.endswith(f"{report['correct']:5d}/   30  {report['test_accuracy']:7.2f}%")
    assert f"The committee misses {30 - report['correct']} test images" in printed
    assert not (workdirs[1] / "eval").exists()  # a committee's report belongs to no member


def test_a_bad_member_is_one_sentence_and_nothing_is_written(committee_runs, tmp_path, capsys):
    (first, _), other, _ = committee_runs
    out = tmp_path / "committee.json"
    line = _one_line_failure(["--workdir", str(first), "--workdir", str(other), "--out", str(out)], capsys)
    assert f"--workdir {first} was evaluated on" in line and f"--workdir {other} on" in line
    assert "must answer about the same images" in line
    line = _one_line_failure(["--workdir", str(first), "--workdir", str(tmp_path / "nowhere"), "--out", str(out)], capsys)
    assert line == f"--workdir {tmp_path / 'nowhere'} does not exist."
    assert "is the same run as" in _one_line_failure(["--workdir", str(first), "--workdir", f"{first}/."], capsys)
    damaged = tmp_path / "damaged"
    shutil.copytree(first, damaged)
    step = max(int(p.name) for p in (damaged / "checkpoints").iterdir() if p.name.isdigit())
    flip_a_parameter_bit(damaged / "checkpoints" / str(step))
    line = _one_line_failure(["--workdir", str(first), "--workdir", str(damaged), "--step", "latest", "--out", str(out)], capsys)
    assert f"Checkpoint step {step} in {damaged / 'checkpoints'} is damaged" in line
    assert not out.exists()


def test_one_workdir_prints_and_writes_as_before(trained_run, tmp_path, capsys):
    from conftest import write_idx

    workdir, dataset, _ = trained_run
    idx = write_idx(tmp_path / "idx", dataset)
    assert evaluate.main(["--workdir", str(workdir), "--idx-dir", str(idx)]) == 0
    printed, errors = capsys.readouterr()
    report = evaluate.evaluate_checkpoint(workdir, dataset=dataset, idx_dir=str(idx))
    evaluate.print_report(report)
    expected = capsys.readouterr().out + f"\nWritten to {workdir / 'eval' / str(report['step'])}.json\n"
    assert errors == "" and printed == expected and "ommittee" not in printed
    assert printed.startswith(f"Checkpoint step {report['step']} (epoch {report['epoch']})\n") and "\nTest Accuracy: " in printed
    assert "--out is for a committee" in _one_line_failure(["--workdir", str(workdir), "--out", str(tmp_path / "x")], capsys)


def test_the_confusion_matrix_has_a_row_per_true_label(trained_run):
    """Row t counts the images labelled t, column p those predicted p: transposed, the rows would count predictions."""
    workdir, dataset, _ = trained_run
    report = evaluate.evaluate_checkpoint(workdir, "latest", dataset=dataset)
    matrix = np.asarray(report["confusion_matrix"])
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(dataset.test_labels, minlength=10))
    predictions = evaluate.load_model(workdir, step="latest")(dataset.test_images).argmax(axis=1)
    np.testing.assert_array_equal(matrix.sum(axis=0), np.bincount(predictions, minlength=10))
    assert (matrix.sum(axis=0) != matrix.sum(axis=1)).any(), "a matrix whose rows and columns sum alike proves nothing"


def test_the_test_loss_is_plain_cross_entropy_even_when_training_smooths_labels(tmp_path):
    """--label-smoothing changes the training loss only: the recorded test loss is the mean
    cross-entropy against the true labels, computed here from the saved model by hand."""
    import jax
    import optax
    from conftest import make_mnist

    from jaxmnist.core.augment import normalize

    dataset = make_mnist(200, 30)
    [record] = run.train_and_evaluate(Config(workdir=str(tmp_path / "run"), epochs=1, eval_batch_size=16,
                                             label_smoothing=0.3, allow_small_data=True), dataset)
    restored = evaluate.restore_model(tmp_path / "run", "latest")
    logits = restored.model.apply(restored.variables, normalize(dataset.test_images))
    by_hand = float(optax.softmax_cross_entropy_with_integer_labels(logits, dataset.test_labels).mean())
    smoothed = float(optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(dataset.test_labels, 10), 0.3)).mean())
    assert record["test_loss"] == pytest.approx(by_hand, rel=1e-4)
    assert abs(smoothed - by_hand) > 1e-2  # the two differ enough for the test to tell them apart
