"""Never lose work: real subprocess runs killed, interrupted, diverging, and resumed."""

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import COMPILE_CACHE, make_mnist, write_idx
from conftest import run_results as _results

from jaxmnist.apps.evaluate import restore_model
from jaxmnist.core.loops import TrainTotals
from jaxmnist.runtime.checkpoint import Checkpoints

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx(tmp_path_factory.mktemp("idx"), make_mnist(200, 30))


# One cache for every run here: each subprocess skips compiling what another one compiled.
CACHE_DIR = COMPILE_CACHE


def _command(idx_dir, workdir, *extra):
    # 13 steps an epoch, logged after batches 0, 5 and 10; a checkpoint at every log point, so a
    # kill can land anywhere, and an epoch's last two steps run after its last log line.
    return [sys.executable, "-m", "jaxmnist.train", "--idx-dir", str(idx_dir), "--workdir", str(workdir),
            "--epochs", "3", "--batch-size", "16", "--log-every", "5", "--eval-batch-size", "16",
            "--checkpoint-seconds", "0.001", "--allow-small-data", "--cache-dir", str(CACHE_DIR), *extra]


def _run(command):
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)


def _start(command):
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for_lines(process, count, prefix="Train Epoch", timeout=120):
    """Read the child's output until count lines start with prefix; a child that hangs is killed
    after timeout seconds, which ends its output and fails the test instead of hanging it."""
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        seen = 0
        for line in process.stdout:
            seen += line.startswith(prefix)
            if seen >= count:
                return line
    finally:
        watchdog.cancel()
    raise AssertionError("the run ended before the expected line")


@pytest.fixture(scope="module")
def uninterrupted(idx_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    assert _run(_command(idx_dir, workdir)).returncode == 0
    return _results(workdir)


def _assert_same(workdir, uninterrupted):
    records, params = _results(workdir)
    expected_records, expected_params = uninterrupted
    assert records == expected_records
    for got, expected in zip(jax.tree.leaves(params), jax.tree.leaves(expected_params)):
        np.testing.assert_array_equal(got, expected)


def test_killed_three_times_and_resumed_equals_an_uninterrupted_run(idx_dir, tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    for lines in (3, 5, 4):  # SIGKILL at three different points, one of them mid-epoch-2
        process = _start(_command(idx_dir, workdir))
        _wait_for_lines(process, lines)
        process.kill()
        process.wait()
    result = _run(_command(idx_dir, workdir))
    assert result.returncode == 0, result.stderr
    assert "Resuming from epoch" in result.stdout
    _assert_same(workdir, uninterrupted)


def test_a_save_cut_short_by_a_kill_is_ignored(idx_dir, tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    process = _start(_command(idx_dir, workdir))
    _wait_for_lines(process, 3)
    process.kill()
    process.wait()
    # What a kill in the middle of writing leaves: a temporary directory holding part of a checkpoint.
    checkpoints = workdir / "checkpoints"
    latest = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    partial = checkpoints / f"{latest + 1}.orbax-checkpoint-tmp-1234567890"
    shutil.copytree(checkpoints / str(latest), partial)
    shutil.rmtree(partial / "opt_state")
    result = _run(_command(idx_dir, workdir))
    assert result.returncode == 0, result.stderr
    _assert_same(workdir, uninterrupted)


def test_a_damaged_latest_checkpoint_is_reported_and_an_older_one_used(idx_dir, tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    process = _start(_command(idx_dir, workdir))
    _wait_for_lines(process, 6)  # into epoch 2: a best (end of epoch 1) and a newer latest exist
    process.kill()
    process.wait()
    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    steps = checkpoints.steps()
    assert len(steps) == 2
    for path in (workdir / "checkpoints" / str(steps[-1]) / "params").rglob("*"):
        if path.is_file() and path.stat().st_size:
            path.write_bytes(b"garbage")
    result = _run(_command(idx_dir, workdir))
    assert result.returncode == 0, result.stderr
    # Orbax's own files are unreadable, and the older checkpoint reads: so the bytes are wrong.
    assert (f"Checkpoint step {steps[-1]} in {workdir / 'checkpoints'} cannot be read (" in result.stderr
            and f"Step {steps[0]} reads, so its bytes are damaged. It was moved to" in result.stderr)
    assert f"Resuming from epoch 2, step {steps[0]}" in result.stdout
    assert (workdir / "damaged-checkpoints" / str(steps[-1])).is_dir()  # set aside, not deleted
    _assert_same(workdir, uninterrupted)


@pytest.mark.parametrize("signum, moment, prefix, count", [
    (signal.SIGTERM, "mid-epoch", "Train Epoch", 4),
    (signal.SIGHUP, "mid-epoch, as a closed terminal sends it", "Train Epoch", 4),
    (signal.SIGINT, "in the last steps of epoch 1, after its last log line", "Train Epoch: 1 [160/200", 1),
    (signal.SIGINT, "as epoch 1 is evaluated and saved", "Test Accuracy", 1),
    (signal.SIGINT, "in the last steps of the last epoch", "Train Epoch: 3 [160/200", 1),
])
def test_a_stop_at_any_moment_saves_and_resumes_exactly(idx_dir, tmp_path, uninterrupted, signum, moment, prefix, count):
    workdir = tmp_path / "run"
    process = _start(_command(idx_dir, workdir))
    _wait_for_lines(process, count, prefix)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    if process.returncode == 0:  # only where the run's end came before the next step boundary
        assert moment == "in the last steps of the last epoch" and "Test Accuracy" in out, err
    else:
        assert process.returncode == 128 + signum, err
        assert err.strip().splitlines()[-1].startswith("Stopped at step "), err
        assert "run the same command again to resume" in err
    result = _run(_command(idx_dir, workdir))
    assert result.returncode == 0, result.stderr
    _assert_same(workdir, uninterrupted)  # every epoch evaluated and logged exactly once


def test_the_improved_recipe_resumes_exactly_too(idx_dir, tmp_path):
    # Its extra randomness (shifts, dropout) and AdamW's state must come back as they were.
    recipe = ("--recipe", "improved", "--epochs", "2")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _run(_command(idx_dir, straight, *recipe)).returncode == 0
    process = _start(_command(idx_dir, killed, *recipe))
    _wait_for_lines(process, 5)  # mid-epoch 2
    process.kill()
    process.wait()
    result = _run(_command(idx_dir, killed, *recipe))
    assert result.returncode == 0 and "Resuming from epoch 2" in result.stdout, result.stderr
    _assert_same(killed, _results(straight))


def test_the_resnet_resumes_exactly_after_a_sigkill_mid_epoch(idx_dir, tmp_path):
    # BatchNorm's running statistics are part of the state: a resume that lost them would differ.
    recipe = ("--model", "resnet", "--epochs", "2")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _run(_command(idx_dir, straight, *recipe)).returncode == 0
    process = _start(_command(idx_dir, killed, *recipe))
    _wait_for_lines(process, 5)  # mid-epoch 2, saved at the last log point
    process.kill()
    process.wait()
    result = _run(_command(idx_dir, killed, *recipe))
    assert result.returncode == 0 and "Resuming from epoch 2" in result.stdout, result.stderr
    _assert_same(killed, _results(straight))
    statistics = [restore_model(w, "latest").variables["batch_stats"] for w in (straight, killed)]
    for got, expected in zip(*map(jax.tree.leaves, statistics)):
        np.testing.assert_array_equal(got, expected)


def test_a_run_with_a_validation_set_resumes_exactly(idx_dir, tmp_path):
    flags = ("--validation", "40", "--epochs", "2")  # 160 training images: 10 steps an epoch
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _run(_command(idx_dir, straight, *flags)).returncode == 0
    process = _start(_command(idx_dir, killed, *flags))
    _wait_for_lines(process, 3)  # epoch 2's first log line
    process.kill()
    process.wait()
    result = _run(_command(idx_dir, killed, *flags))
    assert result.returncode == 0 and "Resuming from epoch 2" in result.stdout, result.stderr
    _assert_same(killed, _results(straight))
    epochs = [r for r in _results(killed)[0] if r["kind"] == "epoch"]
    assert [(r["val_images"], r["step"]) for r in epochs] == [(40, 10), (40, 20)]


def test_a_run_of_another_format_is_refused_naming_both_versions_and_nothing_moves(idx_dir, tmp_path, capsys):
    import json

    from jaxmnist.apps import evaluate
    from jaxmnist.runtime.workdir import FORMAT

    workdir = tmp_path / "run"
    assert _run(_command(idx_dir, workdir, "--epochs", "1")).returncode == 0
    (meta,) = (workdir / "checkpoints").glob("*/meta/metadata")
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps(record | {"format": FORMAT - 1}))  # as an older jaxmnist would have written it
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and p.name != ".jaxmnist.lock"}
    expected = (f"The checkpoints in {workdir / 'checkpoints'} are of jaxmnist's format {FORMAT - 1}, and this jaxmnist "
                f"reads format {FORMAT}; use the jaxmnist that wrote them, or --restart to train afresh.")
    result = _run(_command(idx_dir, workdir, "--epochs", "2"))
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [expected]
    assert evaluate.main(["--workdir", str(workdir)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [expected]
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and p.name != ".jaxmnist.lock"} == before


def test_a_different_configuration_is_refused_and_restart_starts_over(idx_dir, tmp_path):
    workdir = tmp_path / "run"
    assert _run(_command(idx_dir, workdir, "--epochs", "1")).returncode == 0
    refused = _run(_command(idx_dir, workdir, "--epochs", "1", "--rotation", "5", "--seed", "3"))
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f"{workdir} holds a run with different settings (--rotation 10.0 -> 5.0, --seed 0 -> 3); "
        "use another --workdir, or --restart to discard that run."
    )
    restarted = _run(_command(idx_dir, workdir, "--epochs", "1", "--rotation", "5", "--seed", "3", "--restart"))
    assert restarted.returncode == 0 and "Resuming" not in restarted.stdout
    # More epochs is safe to continue.
    longer = _run(_command(idx_dir, workdir, "--epochs", "2", "--rotation", "5", "--seed", "3"))
    assert longer.returncode == 0 and "Resuming from epoch 2" in longer.stdout


def test_a_non_finite_loss_stops_the_run_and_keeps_the_best_checkpoint(idx_dir, tmp_path):
    from jaxmnist.config import Config
    from jaxmnist.core.steps import create_train_state

    workdir = tmp_path / "run"
    assert _run(_command(idx_dir, workdir, "--epochs", "1")).returncode == 0
    # Inject a divergence: a newer checkpoint whose parameters are NaN, as an exploding run leaves.
    checkpoints = Checkpoints(workdir / "checkpoints")
    best = checkpoints.best_step()
    template = create_train_state(Config(), jax.random.key(0), 13)
    progress = {"step": template.step, **TrainTotals.zeros()._asdict()}
    state, progress, meta = checkpoints.restore(best, template, progress)
    poisoned = state.replace(step=best + 1, params=jax.tree.map(lambda p: p * np.nan, state.params))
    checkpoints.save(best + 1, poisoned, {**progress, "step": best + 1}, {**meta, "step": best + 1}, None)
    checkpoints.__exit__(None, None, None)  # on disk before the run starts

    diverged = _run(_command(idx_dir, workdir))
    assert diverged.returncode == 1
    assert diverged.stderr.strip().splitlines()[-1] == (
        f"The training loss became nan at epoch 2, step 19; stopped. The best checkpoint (step {best}, "
        f"{meta['test_accuracy']:.2f}%) is kept.")
    kept = Checkpoints(workdir / "checkpoints", read_only=True)
    assert kept.best_step() == best
    variables, meta = kept.restore_variables(best)
    params = variables["params"]
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))
