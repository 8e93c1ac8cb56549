"""The lab's PyTorch script in reference/: it answers without torch, and trains where torch is installed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_mnist, write_idx

SCRIPT = Path(__file__).resolve().parents[1] / "reference" / "lab_pytorch.py"


def test_the_lab_script_shows_its_flags_without_torch():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--root" in result.stdout and "--rotated-test" in result.stdout


def test_the_lab_script_trains_and_reports_one_json_line(tmp_path):
    pytest.importorskip("torchvision", reason="torch and torchvision are not installed")
    write_idx(tmp_path / "MNIST" / "raw", make_mnist(200, 30), compress=False)  # torchvision's layout
    result = subprocess.run([sys.executable, str(SCRIPT), "--root", str(tmp_path), "--epochs", "2", "--workers", "0",
                             "--save", str(tmp_path / "best.pt")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Train Epoch: 1 [0/200 (0%)]" in result.stdout and "Test Accuracy:" in result.stdout
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2]
    assert summary["best"] == max(e["acc"] for e in summary["epochs"])
    assert (tmp_path / "best.pt").is_file()
