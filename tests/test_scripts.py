"""The scripts that compare whole runs: which runs they reuse, and how they report a failed one."""

import json
import os
import subprocess
import sys
from pathlib import Path

from jaxmnist.config import RECIPES, Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # as when a script runs: its siblings are importable

from ablation import final_accuracy  # noqa: E402


def _finished_run(path: Path, epochs_done: int, **knobs) -> Path:
    path.mkdir()
    config = Config(**knobs).to_dict()
    (path / "config.json").write_text(json.dumps({"config": config}))
    records = [{"kind": "epoch", "epoch": e, "test_accuracy": 80.0 + e} for e in range(1, epochs_done + 1)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_ablation_reuses_only_a_finished_run_with_the_same_knobs(tmp_path):
    flags = ["--recipe", "improved", "--seed", "1"]
    knobs = RECIPES["improved"]
    done = _finished_run(tmp_path / "done", 15, seed=1, workdir="elsewhere", **knobs)
    assert final_accuracy(done, flags) == 95.0  # where it ran and the preset's name do not matter
    assert final_accuracy(_finished_run(tmp_path / "cut", 9, seed=1, **knobs), flags) is None
    assert final_accuracy(_finished_run(tmp_path / "seed", 15, seed=2, **knobs), flags) is None
    older_preset = {**knobs, "weight_decay": 0.0, "label_smoothing": 0.1}
    assert final_accuracy(_finished_run(tmp_path / "old", 15, seed=1, **older_preset), flags) is None
    assert final_accuracy(tmp_path / "missing", flags) is None


def test_a_failed_run_is_one_line_naming_the_trainers_reason(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ablation.py"), "--idx-dir", str(tmp_path / "nope"), "--seeds", "0",
         "--only", "lab recipe (5 epochs)", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    log = tmp_path / "out" / "lab-seed0.log"
    assert result.stderr == (f"lab recipe (5 epochs), seed 0 failed: --idx-dir {tmp_path / 'nope'} is not a directory; "
                             f"it should hold the four MNIST IDX files. (all it printed: {log})\n")
    assert "is not a directory" in log.read_text()


def test_the_gpu_check_runs_end_to_end_as_a_cpu_dry_run(tmp_path):
    from conftest import make_mnist, write_idx

    idx_dir = write_idx(tmp_path / "idx", make_mnist(600, 100))
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu", "--idx-dir", str(idx_dir),
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {"lab", "lab-warm-cache", "lab-tf32", "lab-nondeterministic", "improved"} <= set(summary["runs"])
    assert summary["runs"]["improved"]["recipe"] == "improved" and summary["runs"]["lab-tf32"]["precision"] == "tf32"
    assert "4 skipped" in summary["pytest"] or "4 passed" in summary["pytest"]  # collected; skipped without a GPU
    assert "targets:" in result.stdout
