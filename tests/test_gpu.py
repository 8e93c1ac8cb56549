"""On a GPU (`python -m pytest -m gpu`; skipped elsewhere): the CPU's promises hold there too.

Real training processes with the compiled-loop driver (the GPU's default): one epoch learns,
one seed gives bit-identical numbers twice, a SIGKILL and resume is bit-identical, and
evaluate reproduces the logged count.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, make_mnist, write_idx
from conftest import run_results as _results

ROOT = Path(__file__).resolve().parents[1]
HAS_GPU = Path("/dev/nvidiactl").exists()  # no CUDA initialised in this process to find out
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU on this machine")]


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """Real MNIST when its IDX files are at hand (JAXMNIST_IDX_DIR or ../shared), else 6,000 made-up images."""
    for candidate in (os.environ.get("JAXMNIST_IDX_DIR"), SHARED_DATA / "mnist-idx"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return write_idx(tmp_path_factory.mktemp("idx"), make_mnist(6000, 1000))


def _train(idx_dir, workdir, *flags, **popen):
    command = [sys.executable, "-m", "jaxmnist.train", "--idx-dir", str(idx_dir), "--workdir", str(workdir),
               "--allow-small-data", "--checkpoint-seconds", "0.5", *flags]
    return subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **popen)


def _finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


def _assert_identical(a, b):
    (records_a, params_a), (records_b, params_b) = a, b
    assert records_a == records_b
    import jax

    for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def two_epochs(idx_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gpu-run")
    out = _finish(_train(idx_dir, workdir, "--epochs", "2"))
    return workdir, out


def test_one_epoch_on_the_gpu_learns(two_epochs):
    workdir, out = two_epochs
    assert "Using device: gpu" in out
    epochs = [r for r in _results(workdir)[0] if r["kind"] == "epoch"]
    assert epochs[0]["test_accuracy"] > 90


def test_one_seed_gives_bit_identical_runs(two_epochs, idx_dir, tmp_path):
    workdir, _ = two_epochs
    _finish(_train(idx_dir, tmp_path / "again", "--epochs", "2"))
    _assert_identical(_results(tmp_path / "again"), _results(workdir))


def test_sigkill_and_resume_with_the_compiled_loop_is_bit_identical(two_epochs, idx_dir, tmp_path):
    workdir, _ = two_epochs
    process = _train(idx_dir, tmp_path / "killed", "--epochs", "2", "--loop", "device")
    for line in process.stdout:
        if line.startswith("Train Epoch: 2"):
            break
    process.kill()
    process.wait(timeout=60)
    _finish(_train(idx_dir, tmp_path / "killed", "--epochs", "2", "--loop", "device"))
    _assert_identical(_results(tmp_path / "killed"), _results(workdir))


def test_evaluate_reproduces_the_logged_count(two_epochs):
    workdir, _ = two_epochs
    result = subprocess.run([sys.executable, "-m", "jaxmnist.evaluate", "--workdir", str(workdir), "--step", "latest"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    logged = [r for r in _results(workdir)[0] if r["kind"] == "epoch"][-1]
    assert f"Test Accuracy: {logged['correct']}/{logged['test_images']}" in result.stdout
