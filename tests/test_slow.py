"""Full training on real MNIST: minutes, not seconds. Run with `python -m pytest -m slow`; the
figures appear in pytest's summary at the end (conftest's `report`), no -s needed."""

import pytest
from conftest import SHARED_DATA, needs_real_mnist

from jaxmnist.config import Config
from jaxmnist.runtime import run


@pytest.mark.slow
@needs_real_mnist
def test_the_lab_recipe_reaches_99_percent_in_five_epochs(tmp_path, report):
    config = Config(workdir=str(tmp_path / "run"), idx_dir=str(SHARED_DATA / "mnist-idx"), cache_dir="")
    records = run.train_and_evaluate(config)
    accuracies = [round(r["test_accuracy"], 2) for r in records]
    report(f"lab recipe on the IDX files, seed 0: test accuracy by epoch {accuracies}; "
           f"{sum(r['epoch_seconds'] for r in records):.0f} s of epochs")
    assert max(accuracies) >= 99.0
