"""Shared fixtures: small injected datasets, so most tests need neither files nor TensorFlow."""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

# On a GPU machine: this process must not take most of the GPU's memory before the training
# processes that the tests start (JAX preallocates 75% by default).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxmnist.data import _IDX_FILES, MNIST  # noqa: E402

# The arithmetic of the default --precision float32, which training sets in parallel.configure_jax:
# in-process tests compare with float32 references, and GPUs would otherwise use TF32.
jax.config.update("jax_default_matmul_precision", "highest")

# Compiled programs are shared between tests (and test runs) through JAX's persistent cache, as the
# training command shares them between runs: many tests build the same tiny model and step. The
# training processes that tests start get the same folder (--cache-dir COMPILE_CACHE).
COMPILE_CACHE = Path(tempfile.gettempdir()) / "jaxmnist-test-cache"
jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE / "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

# Real MNIST, for the few tests that need real digits (a model that reads handwriting, TFDS against
# IDX): a prepared copy beside the checkout, as ../shared/data/mnist-idx (the four IDX files) and
# ../shared/data/tensorflow_datasets. Without it those tests are skipped, and the run's last lines say so.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_NO_REAL_MNIST = f"needs real MNIST: {SHARED_DATA / 'mnist-idx'} does not exist"
needs_real_mnist = pytest.mark.skipif(not (SHARED_DATA / "mnist-idx").is_dir(), reason=_NO_REAL_MNIST)


def make_mnist(num_train: int, num_test: int, seed: int = 0, classes: int = 10) -> MNIST:
    """Learnable stand-in for MNIST: each class is a fixed sparse stroke pattern plus pixel noise.

    Images are uint8 [N, 28, 28], mostly black as digits are; labels are 0..classes-1.
    """
    template_key, train_key, test_key = jax.random.split(jax.random.key(seed), 3)
    templates = (jax.random.uniform(template_key, (classes, 28, 28)) < 0.15) * 255.0  # [classes, 28, 28]

    def split(key, n):
        label_key, noise_key = jax.random.split(key)
        labels = jax.random.randint(label_key, (n,), 0, classes)
        noise = jax.random.uniform(noise_key, (n, 28, 28), maxval=80.0)
        images = jnp.clip(templates[labels] * 0.8 + noise, 0, 255)
        return np.asarray(images, np.uint8), np.asarray(labels, np.int32)

    return MNIST(*split(train_key, num_train), *split(test_key, num_test))


def write_idx(folder, dataset, compress=True):
    """Write a dataset as the four IDX files, the way the MNIST distribution lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": dataset.train_images, "train_labels": dataset.train_labels,
              "test_images": dataset.test_images, "test_labels": dataset.test_labels}
    for name, (stem, magic) in _IDX_FILES.items():
        array = arrays[name].astype(np.uint8)
        header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
        raw = header + array.tobytes()
        path = folder / (stem + ".gz" if compress else stem)
        path.write_bytes(gzip.compress(raw) if compress else raw)
    return folder


def run_results(workdir: Path):
    """What a resumed run must reproduce exactly: every metrics.jsonl record without its wall-clock
    fields, and the latest checkpoint's parameters."""
    import json

    from jaxmnist.runtime.checkpoint import Checkpoints

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        for timing in ("train_seconds", "epoch_seconds", "images_per_second"):
            record.pop(timing, None)
    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    return records, checkpoints.restore_variables(checkpoints.latest_step())[0]["params"]


@pytest.fixture
def tiny_mnist() -> MNIST:
    """200 training images (4 batches of 64, the last of 8) and 30 test images."""
    return make_mnist(200, 30)


# `python -m pytest -m quick`: the files that test the maths, the data, the flags and the docs in this
# process, with tiny data and no training process, notebook kernel or browser; the README gives its time.
QUICK_FILES = {"test_api", "test_architecture", "test_augment", "test_data", "test_docs", "test_golden",
               "test_lab_promises", "test_model", "test_recipes", "test_reference", "test_reporting", "test_scripts",
               "test_skips", "test_steps"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the markers
def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.stem in QUICK_FILES and not any(item.get_closest_marker(name) for name in ("slow", "gpu")):
            item.add_marker(pytest.mark.quick)


@pytest.fixture
def report(request):
    """report(line): a figure a test measured, shown in pytest's summary (output is captured). Kept
    in the test's report, which pytest-xdist's workers send to the process that prints the summary."""
    return lambda line: request.node.user_properties.append(("figure", line))


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if _NO_REAL_MNIST in str(r.longrepr)]
    if skipped:  # a green run must not hide what it did not test
        tests = "1 test was" if len(skipped) == 1 else f"{len(skipped)} tests were"
        terminalreporter.write_line(f"{tests} skipped: real MNIST is needed, and {SHARED_DATA / 'mnist-idx'} "
                                    "does not exist.", yellow=True)
    figures = [value for reports in terminalreporter.stats.values() for report in reports
               if getattr(report, "when", None) == "call" for name, value in getattr(report, "user_properties", ())
               if name == "figure"]
    if figures:
        terminalreporter.section("figures measured by the tests")
        for line in figures:
            terminalreporter.line(line)
