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
    # One of 100 test images may fall the other way where a CPU type rounds differently.
    for epoch, (a, b) in enumerate(zip(got["correct"], expected["correct"]), start=1):
        assert abs(a - b) <= 1, f"the test images read right after epoch {epoch} moved from {b} to {a}"
    assert set(got["parameters"]) == set(expected["parameters"]), "the model's parameters changed names"
    for name, (total, squares) in expected["parameters"].items():
        moved_total, moved_squares = got["parameters"][name]
        # A sum of values of both signs can nearly cancel: its tolerance is relative to their size.
        scale = np.sqrt(squares)
        assert abs(moved_total - total) <= RTOL * scale and abs(moved_squares - squares) <= RTOL * squares, \
            f"parameter {name} moved: sum {moved_total}, sum of squares {moved_squares}; golden {total}, {squares}"
