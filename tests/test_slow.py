"""Full training on real MNIST: minutes, not seconds. Run with `python -m pytest -m slow -s`."""

import pytest

from jaxmnist import run
from jaxmnist.config import Config
from conftest import SHARED_DATA


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "mnist-idx").is_dir(), reason="../shared/data (real MNIST) is not beside the checkout")
def test_the_lab_recipe_reaches_99_percent_in_five_epochs(tmp_path):
    records = run.train_and_evaluate(Config(workdir=str(tmp_path), idx_dir=str(SHARED_DATA / "mnist-idx")))
    accuracies = [r["test_accuracy"] for r in records]
    print(f"\ntest accuracy by epoch: {accuracies}; {sum(r['epoch_seconds'] for r in records):.0f} s of epochs")
    assert max(accuracies) >= 99.0
