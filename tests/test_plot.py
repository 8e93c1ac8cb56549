import os
import subprocess
import sys
from pathlib import Path

from jaxmnist import run
from jaxmnist.config import Config
from conftest import make_mnist, write_idx

ROOT = Path(__file__).resolve().parents[1]
PLOT = ROOT / "scripts" / "plot.py"


def _plot(*args):
    # PYTHONPATH: the checkout's jaxmnist, whether or not it is pip-installed.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(PLOT), *args], capture_output=True, text=True, env=env)


def test_plot_writes_every_figure_from_a_tiny_run(tmp_path):
    idx_dir = write_idx(tmp_path / "idx", make_mnist(200, 30))
    workdir = tmp_path / "run"
    run.train_and_evaluate(Config(workdir=str(workdir), idx_dir=str(idx_dir), epochs=2, eval_batch_size=16, allow_small_data=True))
    result = _plot("--workdir", str(workdir))
    assert result.returncode == 0, result.stderr
    for name in ("curves", "samples", "confusion", "errors"):
        png = workdir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000  # a drawn figure, not an empty canvas
    assert (workdir / "eval").is_dir()  # the missing eval JSON was computed


def test_plot_refuses_a_directory_that_is_not_a_run(tmp_path):
    result = _plot("--workdir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip() == f"{tmp_path} has no metrics.jsonl: is it a jaxmnist workdir?"
