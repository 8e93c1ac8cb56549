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
