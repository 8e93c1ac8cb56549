"""Golden numbers: a short run on a committed fixture of real MNIST digits reproduces the losses,
test counts and parameter checksums stored in tests/data/golden.json.

Any change of the maths (the model, its initialisation, the loss, the optimizer, the schedule,
the augmentation, the random streams, the batch order) moves them, and the failure says what moved.
A deliberate change is stored again with `python scripts/golden.py --write`.

Tolerances: float rounding differs between CPUs (AVX-512 or AVX2 kernels, fused multiply-adds), so
the numbers are compared to a relative 1e-4 rather than bit for bit; the python and device loops of
this code agree to about 1e-5 on the same machine (tests/test_steps.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from golden import GOLDEN, golden_run  # noqa: E402

RTOL = 1e-4


@pytest.mark.parametrize("model", ["lab", "resnet"])
def test_a_short_run_reproduces_the_golden_numbers(model):
    expected = json.loads(GOLDEN.read_text())[model]
    got = golden_run(model)
    for step, (a, b) in enumerate(zip(got["losses"], expected["losses"]), start=1):
        assert a == pytest.approx(b, rel=RTOL), f"the loss of step {step} moved from {b} to {a}"
    assert got["correct"] == expected["correct"], "the test images read right after each epoch changed"
    assert set(got["parameters"]) == set(expected["parameters"]), "the model's parameters changed names"
    for name, (total, squares) in expected["parameters"].items():
        moved = got["parameters"][name]
        assert np.allclose(moved, [total, squares], rtol=RTOL, atol=1e-6), f"parameter {name} moved: sum and sum of " \
            f"squares {moved}, golden {[total, squares]}"
