"""The workdir is the user's: nothing is deleted before all is checked, one writer at a time, a
failed save or a damaged record never hangs or blocks, and data that is not MNIST is refused."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_mnist, write_idx

from jaxmnist.apps import train
from jaxmnist.runtime.checkpoint import Checkpoints
from jaxmnist.data import MNIST
from jaxmnist.runtime.workdir import LOCK_FILE, WorkdirError, check_workdir

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--batch-size", "16", "--log-every", "5", "--eval-batch-size", "16", "--allow-small-data", "--cache-dir", ""]


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx(tmp_path_factory.mktemp("idx"), make_mnist(200, 30))


@pytest.fixture
def finished_run(idx_dir, tmp_path):
    """A one-epoch run in tmp_path/run, trained in this process."""
    workdir = tmp_path / "run"
    assert train.main(["--idx-dir", str(idx_dir), "--workdir", str(workdir), "--epochs", "1", *SMALL]) == 0
    return workdir


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under folder, by relative path, with its bytes: to prove nothing changed. (The
    lock file says who holds the lock, which changes with every run that takes it.)"""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def _one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _train(idx_dir, workdir, *flags):
    return [sys.executable, "-m", "jaxmnist.train", "--idx-dir", str(idx_dir), "--workdir", str(workdir), *SMALL, *flags]


@pytest.mark.parametrize("mistake, flags, message", [
    ("a typo in --idx-dir", ["--idx-dir", "/no/such/idx"], "--idx-dir /no/such/idx is not a directory"),
    ("more devices than there are", ["--devices", "2"], "--devices 2 asks for more devices than the 1 there are."),
])
def test_restart_deletes_nothing_when_another_flag_is_wrong(finished_run, idx_dir, capsys, mistake, flags, message):
    before = _files(finished_run)
    capsys.readouterr()
    argv = ["--workdir", str(finished_run), "--restart", *SMALL, *flags]
    if "--idx-dir" not in flags:
        argv += ["--idx-dir", str(idx_dir)]
    assert train.main(argv) == 1
    assert message in _one_error_line(capsys)
    assert _files(finished_run) == before


def test_an_empty_workdir_value_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--workdir", ""])
    assert exit_info.value.code == 2
    assert "--workdir must name a folder (it is empty: an unset shell variable?)" in capsys.readouterr().err


def test_a_folder_that_is_not_a_run_is_refused_even_with_restart(idx_dir, tmp_path, capsys):
    folder = tmp_path / "project"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "model.pt").write_bytes(b"someone else's")
    (folder / "config.json").write_text('{"learning_rate": 0.1}\n')
    before = _files(folder)
    for extra in ([], ["--restart"]):
        assert train.main(["--idx-dir", str(idx_dir), "--workdir", str(folder), *SMALL, *extra]) == 1
        assert _one_error_line(capsys) == (
            f"--workdir {folder} holds files that are not a jaxmnist run; give an empty or new folder.")
    assert _files(folder) == before


def test_a_run_stopped_before_its_first_save_leaves_a_workdir_the_next_run_takes(idx_dir, tmp_path):
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)  # what Orbax creates before the first save
    (workdir / LOCK_FILE).write_text("")
    assert train.main(["--idx-dir", str(idx_dir), "--workdir", str(workdir), "--epochs", "1", *SMALL]) == 0


def test_restart_removes_what_the_run_wrote_and_nothing_else(finished_run, idx_dir, capsys):
    from jaxmnist.apps.evaluate import evaluate_checkpoint, write_report

    write_report(finished_run, evaluate_checkpoint(finished_run, "best"))
    (finished_run / "plots").mkdir()
    (finished_run / "plots" / "curves.png").write_bytes(b"png")
    (finished_run / "notes.txt").write_text("mine\n")
    assert train.main(["--idx-dir", str(idx_dir), "--workdir", str(finished_run), "--epochs", "1", "--seed", "7",
                       "--restart", *SMALL]) == 0
    names = sorted(p.name for p in finished_run.iterdir())
    assert names == [".jaxmnist.lock", "checkpoints", "config.json", "metrics.jsonl", "notes.txt", "tensorboard"]
    assert (finished_run / "notes.txt").read_text() == "mine\n"
    assert json.loads((finished_run / "config.json").read_text())["config"]["seed"] == 7


def test_a_second_run_on_the_same_workdir_is_refused_at_once_and_a_killed_one_blocks_nothing(idx_dir, tmp_path, capsys):
    workdir = tmp_path / "run"
    first = subprocess.Popen(_train(idx_dir, workdir, "--epochs", "200"), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert first.stdout.readline().startswith("Using device")  # it holds the lock from before this line
        started = time.monotonic()
        assert train.main(["--idx-dir", str(idx_dir), "--workdir", str(workdir), "--epochs", "200", *SMALL]) == 1
        assert time.monotonic() - started < 10
        assert _one_error_line(capsys).startswith(
            f"--workdir {workdir} is in use by another jaxmnist run (process {first.pid} on ")
    finally:
        first.kill()
        first.wait(timeout=60)
    assert train.main(["--idx-dir", str(idx_dir), "--workdir", str(workdir), "--epochs", "2", *SMALL]) == 0


def _make_unwritable(folder: Path) -> bool:
    """Make folder unwritable even for root (chattr +i), or by permissions for anyone else."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return True
    return shutil.which("chattr") is not None and subprocess.run(["chattr", "+i", str(folder)]).returncode == 0


def _make_writable(folder: Path) -> None:
    if os.geteuid() != 0:
        folder.chmod(0o755)
    else:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_first_save_that_fails_does_not_claim_earlier_checkpoints(idx_dir, tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)  # an empty checkpoints/: what a run stopped before its first save leaves
    if not _make_unwritable(checkpoints):
        pytest.skip("no way to make a folder unwritable here")
    try:
        result = subprocess.run(_train(idx_dir, tmp_path / "run", "--epochs", "1"), cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
    finally:
        _make_writable(checkpoints)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith("; no checkpoint had been saved before it."), result.stderr


def test_a_failed_save_ends_the_run_within_seconds_in_one_line(finished_run, idx_dir):
    checkpoints = finished_run / "checkpoints"
    before = _files(checkpoints)
    if not _make_unwritable(checkpoints):
        pytest.skip("no way to make a folder unwritable here")
    try:
        started = time.monotonic()
        result = subprocess.run(_train(idx_dir, finished_run, "--epochs", "50"), cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        elapsed = time.monotonic() - started
    finally:
        _make_writable(checkpoints)
    assert result.returncode == 1 and elapsed < 60
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Saving a checkpoint in {checkpoints} failed ("), result.stderr
    assert lines[0].endswith("the checkpoints saved before it are intact.")
    assert _files(checkpoints) == before
    Checkpoints(checkpoints, read_only=True).restore_variables(13)  # still restorable


def test_a_torn_last_metrics_line_is_dropped_with_a_notice(finished_run, idx_dir):
    with (finished_run / "metrics.jsonl").open("a") as file:
        file.write('{"kind": "train", "epo')  # a kill in the middle of a write
    result = subprocess.run(_train(idx_dir, finished_run, "--epochs", "2"), cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ends in a torn line (a run killed while writing it); it is ignored." in result.stderr
    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]


def _write(folder: Path, dataset: MNIST) -> str:
    return str(write_idx(folder, dataset))


@pytest.mark.parametrize("case, message", [
    ("100 training images", "The train split has 100 images, not MNIST's 60,000 (--allow-small-data accepts a smaller one)."),
    ("train and test swapped", "The train split has 10,000 images, not MNIST's 60,000 (--allow-small-data accepts a smaller one)."),
    ("an empty test split", "The test split has no images."),
])
def test_data_that_is_not_mnist_is_refused_before_training(tmp_path, capsys, case, message):
    empty = np.zeros((0,), np.int32)
    dataset = {
        "100 training images": make_mnist(100, 10_000),
        "train and test swapped": make_mnist(10_000, 20),
        "an empty test split": make_mnist(100, 0)._replace(test_images=np.zeros((0, 28, 28), np.uint8), test_labels=empty),
    }[case]
    flags = ["--allow-small-data"] if case == "an empty test split" else []
    assert train.main(["--idx-dir", _write(tmp_path / "idx", dataset), "--workdir", str(tmp_path / "run"), *flags]) == 1
    assert _one_error_line(capsys) == message
    assert not (tmp_path / "run").exists()


def test_resuming_on_other_data_is_refused_naming_both(finished_run, idx_dir, tmp_path, capsys):
    original = make_mnist(200, 30)  # the same images as idx_dir, in another order
    order = np.random.default_rng(0).permutation(200)
    shuffled = original._replace(train_images=original.train_images[order], train_labels=original.train_labels[order])
    other = _write(tmp_path / "shuffled", shuffled)
    before = _files(finished_run)
    capsys.readouterr()
    assert train.main(["--idx-dir", other, "--workdir", str(finished_run), "--epochs", "2", *SMALL]) == 1
    line = _one_error_line(capsys)
    assert line.startswith(f"{finished_run} was trained on IDX files in {idx_dir} (fingerprint ")
    assert f"not on IDX files in {other} (" in line and line.endswith("resume with its own data, or --restart.")
    assert _files(finished_run) == before


@pytest.mark.parametrize("full_at", ["config.json", "metrics.jsonl"])
def test_a_disk_full_at_the_start_names_the_file_and_leaves_a_workdir_the_next_run_takes(idx_dir, tmp_path, monkeypatch,
                                                                                        capsys, full_at):
    import errno

    real_fdopen = os.fdopen

    class FullDisk:  # a file whose writes meet a full disk, as write() does: no file name in the error
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(descriptor, mode="r", *args, **kwargs):
        handle = real_fdopen(descriptor, mode, *args, **kwargs)
        target = os.readlink(f"/proc/self/fd/{descriptor}")
        return FullDisk(handle) if Path(target).name.startswith(full_at) else handle

    workdir = tmp_path / "run"
    monkeypatch.setattr(os, "fdopen", fdopen)
    assert train.main(["--idx-dir", str(idx_dir), "--workdir", str(workdir), "--epochs", "1", *SMALL]) == 1
    monkeypatch.undo()
    assert _one_error_line(capsys) == (f"Cannot write {workdir / full_at} (No space left on device); what was saved "
                                       "before it is intact: run the same command again once it can be written.")
    assert not (workdir / "tensorboard").exists()  # no event file before the first record
    assert train.main(["--idx-dir", str(idx_dir), "--workdir", str(workdir), "--epochs", "1", *SMALL]) == 0


def test_a_run_resumes_on_the_data_it_recorded_without_the_data_flag(finished_run, idx_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # elsewhere: the recorded path is absolute, or joined to where the run began
    capsys.readouterr()
    assert train.main(["--workdir", str(finished_run), "--epochs", "2", *SMALL]) == 0
    out = capsys.readouterr().out
    assert f"Reading the data this run recorded: {idx_dir}" in out and "Resuming from epoch 2, step 13" in out
    assert json.loads((finished_run / "config.json").read_text())["config"]["idx_dir"] == str(idx_dir)  # and still will


def test_other_images_put_in_the_run_s_own_data_folder_are_refused_too(tmp_path, capsys):
    """The same folder, the same kind of files, other images: the fingerprint tells, not the name."""
    data = write_idx(tmp_path / "data", make_mnist(200, 30))
    workdir = tmp_path / "run"
    assert train.main(["--idx-dir", str(data), "--workdir", str(workdir), "--epochs", "1", *SMALL]) == 0
    write_idx(data, make_mnist(200, 30, seed=1))  # replaced in place, as a download or a copy would
    before = _files(workdir)
    capsys.readouterr()
    assert train.main(["--idx-dir", str(data), "--workdir", str(workdir), "--epochs", "2", *SMALL]) == 1
    line = _one_error_line(capsys)
    assert line.startswith(f"{workdir} was trained on IDX files in {data} (fingerprint ")
    assert f"not on IDX files in {data} (" in line and line.endswith("resume with its own data, or --restart.")
    assert _files(workdir) == before


def test_evaluate_prints_its_report_on_a_read_only_workdir_and_refuses_odd_steps(finished_run, capsys):
    from jaxmnist.apps import evaluate

    if not _make_unwritable(finished_run):
        pytest.skip("no way to make a folder unwritable here")
    try:
        capsys.readouterr()
        assert evaluate.main(["--workdir", str(finished_run)]) == 0
        out, err = capsys.readouterr()
        assert "Test Accuracy:" in out and "confusion matrix" in out
        assert err.strip() == f"The report was not saved: {finished_run}/eval cannot be written (Operation not permitted)." \
            or "cannot be written" in err
    finally:
        _make_writable(finished_run)
    assert evaluate.main(["--workdir", str(finished_run), "--step", "\u0661\u0663"]) == 1  # Arabic-Indic digits
    assert _one_error_line(capsys).startswith("There is no checkpoint for --step \u0661\u0663 in ")


@pytest.mark.parametrize("signum, delay", [(signal.SIGINT, 0.3), (signal.SIGTERM, 0.3), (signal.SIGTERM, 1.0)])
def test_a_stop_during_start_up_is_one_line(idx_dir, tmp_path, signum, delay):
    # 0.3 s: while JAX is imported, where an exception used to abort the interpreter; 1 s: later.
    process = subprocess.Popen(_train(idx_dir, tmp_path / "run", "--epochs", "1"), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum and err.strip().splitlines() == [
        "Stopped before training started; run the same command to start again."], err
    assert not (tmp_path / "run" / "checkpoints").exists()  # and the next run starts afresh


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(idx_dir, tmp_path, capsys):
    victim = tmp_path / "precious.txt"
    victim.write_text("mine\n")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / LOCK_FILE).symlink_to(victim)
    assert train.main(["--idx-dir", str(idx_dir), "--workdir", str(workdir), "--epochs", "1", *SMALL]) == 1
    assert _one_error_line(capsys) == (
        f"{workdir / LOCK_FILE} is a link or a folder, not jaxmnist's lock file; move it away and run again.")
    assert victim.read_text() == "mine\n"


def test_an_output_of_the_wrong_kind_is_refused_before_any_work(finished_run, idx_dir, capsys):
    (finished_run / "metrics.jsonl").unlink()
    (finished_run / "metrics.jsonl").mkdir()
    capsys.readouterr()
    assert train.main(["--idx-dir", str(idx_dir), "--workdir", str(finished_run), "--epochs", "2", *SMALL]) == 1
    assert _one_error_line(capsys) == f"{finished_run / 'metrics.jsonl'} should be a file; move it away and run again."


def test_an_epoch_record_torn_by_a_kill_comes_back_from_its_checkpoint(finished_run, idx_dir):
    path = finished_run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["kind"] == "epoch"
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])  # killed while writing epoch 1's record
    assert train.main(["--idx-dir", str(idx_dir), "--workdir", str(finished_run), "--epochs", "2", *SMALL]) == 0
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]


def test_binary_junk_at_the_end_of_the_metrics_is_a_torn_line(finished_run, idx_dir):
    with (finished_run / "metrics.jsonl").open("ab") as file:
        file.write(b"\xff\xfe\x00junk")
    assert train.main(["--idx-dir", str(idx_dir), "--workdir", str(finished_run), "--epochs", "2", *SMALL]) == 0


def test_a_dangling_link_as_workdir_is_named_as_such(tmp_path, capsys):
    (tmp_path / "run").symlink_to(tmp_path / "gone")
    with pytest.raises(WorkdirError, match=r"is a symbolic link to .*gone, which does not exist; create that folder"):
        check_workdir(str(tmp_path / "run"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_folder_whose_config_json_is_someone_elses_is_not_a_run(tmp_path):
    """A web app's config.json with a "versions" key: refused, never overwritten nor --restart'ed away."""
    (tmp_path / "myproj").mkdir()
    (tmp_path / "myproj" / "config.json").write_text('{"name": "my webapp", "versions": {"node": "18"}}')
    (tmp_path / "myproj" / "metrics.jsonl").write_text("")
    with pytest.raises(WorkdirError, match="holds files that are not a jaxmnist run"):
        check_workdir(str(tmp_path / "myproj"))


def test_a_workdir_too_long_for_the_files_a_run_writes_is_refused_before_training(tmp_path):
    """Under the system's path limit itself, but not with a checkpoint's own path added: refused at
    once, not after an epoch whose save then fails."""
    deep = tmp_path
    while len(str(deep)) < 4096 - 150:
        deep = deep / ("d" * 200)
    with pytest.raises(WorkdirError, match=r"characters long; the files a run writes inside it need about 200 more"):
        check_workdir(str(deep)[:4096 - 150])
    assert list(tmp_path.iterdir()) == []
