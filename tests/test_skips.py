"""A test run without real MNIST says which tests it skipped and which folder they need."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_tests_that_need_real_mnist_name_the_missing_folder(tmp_path):
    checkout = tmp_path / "checkout"  # beside it, tmp_path/shared/data does not exist
    (checkout / "tests").mkdir(parents=True)
    shutil.copy(TESTS / "conftest.py", checkout / "tests")
    (checkout / "tests" / "test_real.py").write_text(
        "from conftest import needs_real_mnist\n\n"
        "@needs_real_mnist\ndef test_one():\n    pass\n\n"
        "@needs_real_mnist\ndef test_two():\n    pass\n\n"
        "def test_without_data():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "tests"], cwd=checkout,
                            capture_output=True, text=True, env=env, timeout=120)
    missing = tmp_path / "shared" / "data" / "mnist-idx"
    assert result.returncode == 0, result.stdout
    assert f"needs real MNIST: {missing} does not exist" in result.stdout  # each skip's reason
    assert f"2 tests were skipped: real MNIST is needed, and {missing} does not exist." in result.stdout
