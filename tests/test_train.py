import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxmnist.apps import train
from jaxmnist.config import Config
from jaxmnist.runtime import run
from jaxmnist.runtime.checkpoint import Checkpoints
from jaxmnist.runtime.workdir import WorkdirError


def _run(tmp_path, dataset, **overrides):
    config = Config(workdir=str(tmp_path / "run"), batch_size=64, log_every=2, eval_batch_size=16, allow_small_data=True, **overrides)
    return config, run.train_and_evaluate(config, dataset)


def test_one_epoch_writes_config_metrics_and_a_restorable_checkpoint(tmp_path, tiny_mnist, caplog):
    caplog.set_level("INFO", logger="jaxmnist")
    config, records = _run(tmp_path, tiny_mnist, epochs=1)
    workdir = tmp_path / "run"

    saved = json.loads((workdir / "config.json").read_text())
    assert saved["config"] == config.to_dict()
    assert {"jax", "flax", "optax", "orbax-checkpoint"} <= set(saved["versions"]) and saved["device"]

    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [1, 3]  # batches 0 and 2 of 4
    (epoch,) = [r for r in lines if r["kind"] == "epoch"]
    for key in ("epoch", "step", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "correct",
                "epoch_seconds", "images_per_second"):
        assert key in epoch
    assert not any(key.startswith("val_") for key in epoch)  # no validation set unless asked for
    assert epoch["step"] == 4 and epoch["test_images"] == 30  # 30 test images in 2 batches of 16: none dropped
    assert epoch == records[0]

    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    assert checkpoints.steps() == [4] and checkpoints.best_step() == 4
    variables, meta = checkpoints.restore_variables(4)
    params = variables["params"]
    assert meta["correct"] == epoch["correct"] and meta["config"] == config.to_dict()
    assert sum(np.size(x) for x in jax.tree.leaves(params)) == 28_938

    out = caplog.text
    assert "Train Epoch: 1 [0/200 (0%)]\tLoss: " in out
    assert f"Test Accuracy: {epoch['correct']}/30 ({epoch['test_accuracy']:.2f}%)" in out
    assert f"train loss {epoch['train_loss']:.4f}, accuracy {epoch['train_accuracy']:.2f}%" in out
    assert f"Best model saved with accuracy: {epoch['test_accuracy']:.2f}%" in out  # the lab's line


def test_training_learns_and_keeps_the_best_and_the_latest_checkpoint(tmp_path, tiny_mnist):
    _, records = _run(tmp_path, tiny_mnist, epochs=4)
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    checkpoints = Checkpoints(tmp_path / "run" / "checkpoints", read_only=True)
    accuracies = {r["step"]: r["test_accuracy"] for r in records}
    best = max(accuracies, key=lambda s: (accuracies[s], -s))
    assert checkpoints.best_step() == best
    assert checkpoints.steps() == sorted({best, 16})


def test_a_second_run_continues_where_the_first_stopped(tmp_path, tiny_mnist, caplog):
    caplog.set_level("INFO", logger="jaxmnist")
    _, straight = _run(tmp_path / "a", tiny_mnist, epochs=2)
    _run(tmp_path / "b", tiny_mnist, epochs=1)
    _, resumed = _run(tmp_path / "b", tiny_mnist, epochs=2)
    assert "Resuming from epoch 2, step 4" in caplog.text
    assert [r["epoch"] for r in resumed] == [2]
    for key in ("train_loss", "test_loss", "correct"):
        assert resumed[0][key] == straight[1][key]


def test_a_different_configuration_is_refused(tmp_path, tiny_mnist):
    _run(tmp_path, tiny_mnist, epochs=1)
    with pytest.raises(WorkdirError, match="--lr 0.001 -> 0.002"):
        _run(tmp_path, tiny_mnist, epochs=1, lr=2e-3)


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--epochs", "-1"], "--epochs must be a positive integer"),
    (["--lr", "0"], "--lr must be a finite positive number"),
    (["--lr", "inf"], "--lr must be a finite positive number"),
    (["--lr", "1e-50"], "--lr must be a finite positive number that float32 holds (1.2e-38 to 3.4e38), got 1e-50."),
    (["--lr", "1e39"], "--lr must be a finite positive number that float32 holds (1.2e-38 to 3.4e38), got 1e+39."),
    (["--rotation", "200"], "--rotation must be between 0 and 180"),
    (["--translate", "20"], "--translate must be between 0 and 13 pixels"),
    (["--dropout", "1"], "--dropout must be in [0, 1)"),
    (["--warmup-epochs", "5"], "--warmup-epochs must be at least 0 and less than --epochs (5), got 5.0"),
    (["--recipe", "best"], "invalid choice: 'best'"),
    (["--validation", "-1"], "--validation must be 0 (none) or a number of training images to hold out, got -1."),
    (["--no-such-flag"], "unrecognized arguments"),
    (["--epoch", "2"], "unrecognized arguments: --epoch 2"),  # not taken for --epochs
])
def test_bad_flags_are_refused_before_any_work(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_is_one_line_and_a_non_zero_exit(tmp_path, capsys):
    assert train.main(["--idx-dir", str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "run")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines() == [
        f"--idx-dir {tmp_path / 'nowhere'} is not a directory; it should hold the four MNIST IDX files."]
    assert not (tmp_path / "run").exists()  # a failed command creates nothing


@pytest.mark.parametrize("case", ["workdir is a file", "data dir missing", "idx file truncated"])
def test_bad_paths_are_one_line_and_a_non_zero_exit(case, tmp_path, capsys):
    from conftest import make_mnist, write_idx

    idx_dir = write_idx(tmp_path / "idx", make_mnist(20, 10), compress=False)
    argv, expected = {
        "workdir is a file": (["--idx-dir", str(idx_dir), "--workdir", str(idx_dir / "train-images-idx3-ubyte")],
                              "is a file, not a directory."),
        "data dir missing": (["--data-dir", str(tmp_path / "none"), "--workdir", str(tmp_path / "run")],
                             "does not exist; give a TFDS data directory or use --idx-dir."),
        "idx file truncated": (["--idx-dir", str(idx_dir), "--workdir", str(tmp_path / "run")],
                               "is damaged: its header promises"),
    }[case]
    if case == "idx file truncated":
        path = idx_dir / "t10k-labels-idx1-ubyte"
        path.write_bytes(path.read_bytes()[:-3])
    assert train.main(argv) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and expected in lines[0]
    assert not (tmp_path / "run").exists()  # a failed command creates nothing


def test_precision_and_determinism_are_set_through_jax_before_the_backend_starts():
    script = """
import os, jax
from jaxmnist.config import Config
from jaxmnist.runtime.parallel import configure_jax
configure_jax(Config(cache_dir=""))
print(jax.config.jax_default_matmul_precision, os.environ["XLA_FLAGS"])
configure_jax(Config(cache_dir="", precision="tf32", deterministic=False))
print(jax.config.jax_default_matmul_precision, jax.numpy.ones(2).sum())  # the flag does not upset the CPU
"""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["highest --xla_gpu_deterministic_ops=true", "tensorfloat32 2.0"]


def test_a_backend_that_cannot_start_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jaxmnist.train", "--workdir", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "no_such_backend"})
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("JAX cannot start JAX_PLATFORMS=no_such_backend on this machine")
    assert not (tmp_path / "run").exists()


def test_help_answers_without_loading_jax():
    script = "import sys; from jaxmnist.apps import train\ntry: train.main(['--help'])\nexcept SystemExit: pass\nprint('jax' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().endswith("False")
    for example in ("jaxmnist train --data-dir", "jaxmnist evaluate --workdir", "jaxmnist plot --workdir"):  # as the README
        assert example in result.stdout


@pytest.mark.parametrize("flags, message", [
    (["--recipe", "improved", "--epochs", "1"],
     "--warmup-epochs must be at least 0 and less than --epochs (1), got 1.0. (--warmup-epochs 1.0 comes from "
     "--recipe improved; give --warmup-epochs yourself to change it.)"),
    (["--seed", str(2**64)], "--seed must be between 0 and 2**64-1"),
    (["--seed", "-1"], "--seed must be between 0 and 2**64-1"),
])
def test_preset_conflicts_and_seeds_out_of_range_are_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_seeds_use_all_64_bits():
    from jaxmnist.core.steps import derive_keys

    keys = {int(s): tuple(np.asarray(jax.random.key_data(derive_keys(s).init))) for s in (0, 2**32, 2**63, 2**64 - 1)}
    assert len(set(keys.values())) == 4  # 2**32 no longer trains as 0


def test_profile_traces_the_steps_into_the_workdir(tmp_path, tiny_mnist):
    _run(tmp_path, tiny_mnist, epochs=1, profile=True)
    traces = list((tmp_path / "run" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000


def test_validation_holds_out_the_last_images_never_trains_on_them_and_chooses_the_best(tmp_path, tiny_mnist, caplog):
    from jaxmnist.apps.evaluate import evaluate_checkpoint
    from jaxmnist.data import MNIST

    caplog.set_level("INFO", logger="jaxmnist")
    _, held_out = _run(tmp_path / "held-out", tiny_mnist, epochs=2, validation=40)
    # The same first 160 images without the last 40: training must not see a difference.
    first = MNIST(tiny_mnist.train_images[:160], tiny_mnist.train_labels[:160], tiny_mnist.test_images,
                  tiny_mnist.test_labels)
    _, without = _run(tmp_path / "without", first, epochs=2)
    for a, b in zip(held_out, without):
        for key in ("step", "train_loss", "train_accuracy", "test_loss", "correct"):
            assert a[key] == b[key], key
    assert "Train Epoch: 1 [0/160 (0%)]" in caplog.text

    assert all(r["val_images"] == 40 and r["val_accuracy"] == 100.0 * r["val_correct"] / 40 for r in held_out)
    best = max(held_out, key=lambda r: (r["val_accuracy"], -r["step"]))
    workdir = tmp_path / "held-out" / "run"
    assert Checkpoints(workdir / "checkpoints", read_only=True).best_step() == best["step"]
    assert f"Best model saved with validation accuracy: {held_out[0]['val_accuracy']:.2f}%" in caplog.text
    # The validation set is the training split's last 40 images: the best checkpoint reads them as logged.
    last = MNIST(tiny_mnist.train_images, tiny_mnist.train_labels, tiny_mnist.train_images[160:],
                 tiny_mnist.train_labels[160:])
    report = evaluate_checkpoint(workdir, "best", last)
    assert (report["step"], report["correct"], report["chosen_by"]) == (best["step"], best["val_correct"], "validation")


def test_the_validation_set_not_the_test_set_chooses_the_best_checkpoint(tmp_path):
    from jaxmnist.core.steps import create_train_state

    state = create_train_state(Config(), jax.random.key(0), steps_in_epoch=4)
    # Test accuracy peaks at step 8, validation accuracy at step 12: validation decides, for both
    # what Orbax keeps and what best_step answers.
    with Checkpoints(tmp_path / "checkpoints") as checkpoints:
        for step, test, val in ((4, 50.0, 50.0), (8, 90.0, 60.0), (12, 70.0, 80.0), (16, 60.0, 70.0)):
            checkpoints.save(step, state, {"step": step}, {"step": step}, {"test_accuracy": test, "val_accuracy": val,
                                                                           "step": step})
    checkpoints = Checkpoints(tmp_path / "checkpoints", read_only=True)
    assert checkpoints.best_step() == 12 and checkpoints.steps() == [12, 16]


def test_a_validation_set_that_leaves_less_than_a_batch_is_one_line(tmp_path, capsys):
    from conftest import make_mnist, write_idx

    idx_dir = write_idx(tmp_path / "idx", make_mnist(200, 10))
    argv = ["--idx-dir", str(idx_dir), "--workdir", str(tmp_path / "run"), "--allow-small-data", "--validation", "150"]
    assert train.main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines() == [
        "--validation 150 leaves 50 of the 200 training images to train on, fewer than one batch (--batch-size 64)."]
    assert not (tmp_path / "run").exists()


def test_a_slow_data_load_says_what_it_loads(tmp_path, tiny_mnist, monkeypatch, capsys):
    """A first TFDS read decodes 70,000 PNGs: the run says what it loads instead of 11 s of silence."""
    import time

    from jaxmnist import data

    def slow_load(data_dir, idx_dir, cache_dir, name):
        time.sleep(2.5)
        return tiny_mnist

    monkeypatch.setattr(data, "load", slow_load)
    assert train.main(["--idx-dir", str(tmp_path / "idx"), "--workdir", str(tmp_path / "run"), "--epochs", "1",
                       "--batch-size", "16", "--eval-batch-size", "10", "--allow-small-data", "--cache-dir", ""]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"Loading IDX files in {tmp_path / 'idx'} ..."
