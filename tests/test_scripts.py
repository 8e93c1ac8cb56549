"""The scripts that compare whole runs: the ablation (a sweep) and the GPU check."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_ablation_is_a_sweep_definition(tmp_path):
    """Its combinations go through jaxmnist.apps.sweep: the same workdirs, flags and job-array script."""
    script = tmp_path / "ablation.sbatch"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "ablation.py"), "--seeds", "0", "1", "--root",
                             str(tmp_path / "ablation"), "--slurm", str(script), "--", "--idx-dir", "mnist-idx"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    assert "#SBATCH --array=0-17\n" in text  # 9 combinations x 2 seeds
    for task, name in ((0, "seed=0"), (5, "dropout=0.3_seed=1"), (10, "lr=3e-3_warmup-epochs=1_seed=0"),
                       (17, "recipe=improved_seed=1")):
        assert f"#   task {task}: {name}\n" in text
    assert f"exec {sys.executable} {ROOT / 'scripts' / 'ablation.py'} --seeds 0 1 --root {tmp_path / 'ablation'} " \
           '--array-task "$SLURM_ARRAY_TASK_ID" -- --idx-dir mnist-idx' in text
    refused = subprocess.run([sys.executable, str(ROOT / "scripts" / "ablation.py"), "--grid", "lr=1,2"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert (refused.returncode, refused.stderr) == (1, "This sweep defines its own combinations; it takes no --grid.\n")


@pytest.mark.slow  # about 100 s on 2 cores: every benchmark of the GPU check, small; run with -m slow
def test_the_gpu_check_runs_end_to_end_as_a_cpu_dry_run(tmp_path):
    from conftest import make_mnist, write_idx

    idx_dir = write_idx(tmp_path / "idx", make_mnist(600, 100))
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu", "--idx-dir", str(idx_dir),
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    runs = summary["runs"]
    assert {"lab", "lab-warm-cache", "lab-tf32", "lab-nondeterministic", "improved", "resnet", "seeds"} <= set(runs)
    assert not [name for name, run in runs.items() if "failed" in run], result.stdout  # every step compiled and trained
    assert runs["improved"]["recipe"] == "improved" and runs["lab-tf32"]["precision"] == "tf32"
    assert runs["resnet"]["recipe"] == "resnet"
    assert runs["seeds"]["seeds"] == 2 and runs["seeds"]["max_weight_difference_seed_0"] < 1e-3  # vmapped = alone
    assert runs["lab"]["achieved_gflops_per_second"] > 0 and "GFLOP/s" in result.stdout
    for name in ("lab", "lab-nondeterministic", "resnet"):  # trained on the 600 images, not a stub
        assert len(runs[name]["test_accuracy_per_epoch"]) >= 1 and runs[name]["images_per_second"] > 0
    assert "4 skipped" in summary["pytest"] or "4 passed" in summary["pytest"]  # collected; skipped without a GPU
    assert "targets:" in result.stdout
