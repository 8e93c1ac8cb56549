"""Nothing silently wrong, nothing lost: checkpoint digests, damage told apart from everything else,
files replaced whole, links refused, the run's own data, and the settings that change the numbers."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_mnist, run_results, write_idx
from test_evaluate import flip_a_parameter_bit

from jaxmnist.apps import evaluate, export, predict, train
from jaxmnist.runtime import run
from jaxmnist.metrics import MetricsLog
from jaxmnist.runtime.workdir import LOCK_FILE

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--batch-size", "16", "--log-every", "5", "--eval-batch-size", "16", "--allow-small-data", "--cache-dir", ""]
STEPS_PER_EPOCH = 13  # 200 images in batches of 16


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx(tmp_path_factory.mktemp("idx"), make_mnist(200, 30))


@pytest.fixture(scope="module")
def two_epochs(idx_dir, tmp_path_factory):
    """A finished two-epoch run, trained once; tests work on copies of it."""
    workdir = tmp_path_factory.mktemp("original") / "run"
    assert train.main(["--idx-dir", str(idx_dir), "--workdir", str(workdir), "--epochs", "2", *SMALL]) == 0
    return workdir


@pytest.fixture
def workdir(two_epochs, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(two_epochs, copy, symlinks=True)
    return copy


def _train(idx_dir, workdir, *flags) -> int:
    return train.main(["--idx-dir", str(idx_dir), "--workdir", str(workdir), *SMALL, *flags])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "<bound method" not in err[0] and "Traceback" not in err[0]
    return err[0]


def _step_folders(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


# --- files replaced whole, links refused -----------------------------------------------------------

def test_metrics_are_replaced_whole_or_not_at_all(workdir, monkeypatch):
    path = workdir / "metrics.jsonl"
    before = path.read_bytes()
    inode = path.stat().st_ino
    metrics = MetricsLog(path)
    metrics.truncate_after(2 * STEPS_PER_EPOCH)  # nothing to drop: the file is not even rewritten
    assert path.stat().st_ino == inode and path.read_bytes() == before

    def disk_full(_descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the rewrite fails before its rename
    with pytest.raises(OSError):
        metrics.truncate_after(STEPS_PER_EPOCH)
    assert path.read_bytes() == before and not list(workdir.glob("*.partial"))
    monkeypatch.undo()
    metrics.truncate_after(STEPS_PER_EPOCH)
    assert path.stat().st_ino != inode  # a new file renamed into place
    assert [r["step"] for r in metrics.records("epoch")] == [STEPS_PER_EPOCH]


def test_a_linked_metrics_file_is_refused_and_its_target_untouched(workdir, idx_dir, tmp_path, capsys):
    target = tmp_path / "elsewhere.jsonl"
    target.write_text('{"kind": "mine", "step": 999}\n')
    (workdir / "metrics.jsonl").unlink()
    (workdir / "metrics.jsonl").symlink_to(target)
    before = _files(workdir)
    assert _train(idx_dir, workdir, "--epochs", "3") == 1
    assert "metrics.jsonl is a symbolic link" in _one_error_line(capsys)
    assert target.read_text() == '{"kind": "mine", "step": 999}\n' and _files(workdir) == before


def test_a_failed_export_leaves_the_previous_export_whole(workdir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "exported"
    assert export.main(["--workdir", str(workdir), "--out", str(out)]) == 0
    before = _files(out)

    def full_disk(_forward, _path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "_export_onnx", full_disk)
    capsys.readouterr()
    assert export.main(["--workdir", str(workdir), "--out", str(out), "--step", "latest", "--onnx"]) == 1
    assert "No space left on device" in _one_error_line(capsys)
    assert _files(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["exported", "run"]


def test_a_ctrl_c_after_the_export_is_written_still_ends_in_success(workdir, tmp_path, monkeypatch, capsys):
    import signal

    report = export._report

    def interrupted_while_reporting(args, record):
        os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C came just as "Exported" was printed
        report(args, record)

    monkeypatch.setattr(export, "_report", interrupted_while_reporting)
    assert export.main(["--workdir", str(workdir), "--out", str(tmp_path / "exported")]) == 0
    assert "Exported step " in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again afterwards


# --- checkpoint integrity -------------------------------------------------------------------------

def test_a_flipped_bit_is_refused_by_every_command_naming_the_step(workdir, tmp_path, capsys):
    step = _step_folders(workdir)[-1]
    flip_a_parameter_bit(workdir / "checkpoints" / str(step))
    (tmp_path / "digit.png").write_bytes(b"")  # never read: the checkpoint is refused first
    for command in (["evaluate"], ["export", "--out", str(tmp_path / "out")], ["predict", str(tmp_path / "digit.png")]):
        main = {"evaluate": evaluate.main, "export": export.main, "predict": predict.main}[command[0]]
        assert main(["--workdir", str(workdir), "--step", str(step), *command[1:]]) == 1
        line = _one_error_line(capsys)
        assert f"Checkpoint step {step} in {workdir / 'checkpoints'} is damaged: its params" in line, command
    assert not (tmp_path / "out").exists()


def test_train_sets_aside_a_damaged_checkpoint_and_resumes_exactly_from_the_one_before(workdir, idx_dir, tmp_path, capsys):
    # The same run stopped after epoch 1 gives the end-of-epoch-1 checkpoint the original once had.
    assert _train(idx_dir, tmp_path / "short", "--epochs", "1") == 0
    shutil.copytree(tmp_path / "short" / "checkpoints" / str(STEPS_PER_EPOCH), workdir / "checkpoints" / str(STEPS_PER_EPOCH))
    expected = run_results(workdir)
    flip_a_parameter_bit(workdir / "checkpoints" / str(2 * STEPS_PER_EPOCH))
    capsys.readouterr()
    assert _train(idx_dir, workdir, "--epochs", "2") == 0
    out, err = capsys.readouterr()
    assert f"Checkpoint step {2 * STEPS_PER_EPOCH} in {workdir / 'checkpoints'} is damaged: its params" in err
    assert (workdir / "damaged-checkpoints" / str(2 * STEPS_PER_EPOCH)).is_dir()
    assert f"Resuming from epoch 2, step {STEPS_PER_EPOCH}" in out
    records, params = run_results(workdir)
    assert records == expected[0]
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected[1])):
        np.testing.assert_array_equal(got, want)


def test_a_checkpoint_that_cannot_be_read_moves_nothing_and_trains_nothing(workdir, idx_dir, capsys):
    (step,) = _step_folders(workdir)
    for path in (workdir / "checkpoints" / str(step) / "params").rglob("*"):
        if path.is_file() and path.stat().st_size:  # Orbax's own files unreadable: no digest can be compared
            path.write_bytes(b"\0" * 10)
    before = _files(workdir)
    assert _train(idx_dir, workdir, "--epochs", "3") == 1
    line = _one_error_line(capsys)
    assert f"Checkpoint step {step} in {workdir / 'checkpoints'} cannot be read (" in line
    assert "Nothing was moved or retrained" in line
    assert _files(workdir) == before and not (workdir / "damaged-checkpoints").exists()


def test_a_changed_model_is_named_and_the_old_run_left_byte_identical(workdir, idx_dir, monkeypatch, capsys):
    original = run.create_train_state

    def narrower_conv1(*args):  # what a student's edit of conv1 from 16 to 8 filters builds
        state = original(*args)
        return state.replace(params={**state.params, "conv1": {"kernel": jnp.zeros((5, 5, 1, 8)), "bias": jnp.zeros(8)}})

    monkeypatch.setattr(run, "create_train_state", narrower_conv1)
    before = _files(workdir)
    assert _train(idx_dir, workdir, "--epochs", "3") == 1
    line = _one_error_line(capsys)
    assert ("belongs to another model (its conv1.bias has shape (16,), this model's has shape (8,))" in line
            and "--restart" in line and "another --workdir" in line)
    assert _files(workdir) == before and not (workdir / "damaged-checkpoints").exists()


def test_a_model_with_other_parameters_is_named_by_its_first_differing_parameter(workdir, idx_dir, monkeypatch, capsys):
    """The code's model really edited (here: the lab's name now builds the resnet): both the shapes and
    the computation differ, and the sentence names the parameter, not only "computes something else"."""
    from jaxmnist.core.models import MODELS
    from jaxmnist.core.models.resnet import ResNet

    monkeypatch.setitem(MODELS, "lab", lambda recipe: ResNet())
    before = _files(workdir)
    assert _train(idx_dir, workdir, "--epochs", "3") == 1
    line = _one_error_line(capsys)
    assert "belongs to another model (this model has " in line and "every parameter has the shape" not in line
    assert evaluate.main(["--workdir", str(workdir), "--idx-dir", str(idx_dir)]) == 1
    assert "belongs to another model (this model has " in _one_error_line(capsys)
    assert _files(workdir) == before


def test_a_metrics_file_cut_short_is_named_and_training_goes_on(workdir, idx_dir, capsys):
    path = workdir / "metrics.jsonl"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()
                            if json.loads(line)["epoch"] != 1))  # epoch 1's records lost, epoch 2's kept
    assert _train(idx_dir, workdir, "--epochs", "3") == 0
    err = capsys.readouterr().err
    assert f"{path} has no record of epoch 1, which the checkpoints show were trained" in err
    assert [r["epoch"] for r in MetricsLog(path).records("epoch")] == [2, 3]


def test_a_metrics_line_edited_by_hand_is_named_not_a_traceback(workdir, idx_dir, capsys):
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"step": ', '"step": "').replace(', "loss"', '", "loss"', 1)  # "step": "6"
    path.write_text("\n".join(lines) + "\n")
    before = _files(workdir)
    assert _train(idx_dir, workdir, "--epochs", "3") == 1
    assert _one_error_line(capsys) == f"{path} is damaged at line 2; fix or delete that line."
    assert _files(workdir) == before


def test_a_model_changed_without_changing_any_shape_is_named_too(workdir, idx_dir, monkeypatch, capsys):
    """relu -> sigmoid keeps every parameter's shape: resume and evaluate still refuse the old run's
    checkpoints in one sentence, and the run is left byte-identical."""
    monkeypatch.setattr("jaxmnist.core.models.lab.relu", jax.nn.sigmoid)
    before = _files(workdir)
    assert _train(idx_dir, workdir, "--epochs", "3") == 1
    line = _one_error_line(capsys)
    assert "belongs to another model (every parameter has the shape it had" in line and "--restart" in line
    assert evaluate.main(["--workdir", str(workdir), "--idx-dir", str(idx_dir)]) == 1
    assert "belongs to another model (every parameter has the shape it had" in _one_error_line(capsys)
    assert _files(workdir) == before


def test_a_path_the_locale_cannot_decode_is_refused_before_anything_is_written(idx_dir, tmp_path):
    """Under LC_ALL=C without UTF-8 mode Python keeps a non-ASCII name as surrogates, which Orbax
    cannot write: a run that went ahead would train an epoch and then fail to save it."""
    workdir = tmp_path / "r\u00fcn"
    result = subprocess.run([sys.executable, "-m", "jaxmnist.train", "--idx-dir", str(idx_dir), "--workdir", str(workdir),
                             "--allow-small-data", "--cache-dir", ""], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONUTF8": "0", "LC_ALL": "C"}, cwd=Path(__file__).parents[1])
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot be used under this locale" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    here = tmp_path / "r\u00fcn-here"  # the flag plain ASCII, the current folder not
    here.mkdir()
    relative = subprocess.run([sys.executable, "-m", "jaxmnist.train", "--idx-dir", str(idx_dir), "--workdir", "run",
                               "--allow-small-data", "--cache-dir", ""], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONUTF8": "0", "LC_ALL": "C", "PYTHONPATH": str(Path(__file__).parents[1])},
                              cwd=here)
    assert relative.returncode == 1 and "cannot be used under this locale" in relative.stderr
    assert list(here.iterdir()) == []


def test_epochs_below_the_checkpoint_are_refused(workdir, idx_dir, capsys):
    before = _files(workdir)
    assert _train(idx_dir, workdir, "--epochs", "1") == 1
    assert _one_error_line(capsys) == (f"{workdir} has trained into epoch 2 (step {2 * STEPS_PER_EPOCH}), past --epochs 1; "
                                       "give --epochs 2 or more to continue it, or --restart.")
    assert _files(workdir) == before


def test_leftovers_of_interrupted_saves_and_deletions_are_cleaned(workdir, idx_dir):
    checkpoints = workdir / "checkpoints"
    (step,) = _step_folders(workdir)
    shutil.copytree(checkpoints / str(step), checkpoints / f"{step + 1}.orbax-checkpoint-tmp-1234567890")
    shutil.copytree(checkpoints / str(step), checkpoints / "superseded" / str(step - 1))
    assert _train(idx_dir, workdir, "--epochs", "2") == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == [str(step)]


# --- the run's own data, and what changes the numbers ---------------------------------------------

def test_evaluate_reads_a_relative_data_path_from_where_the_run_recorded_it(idx_dir, tmp_path, monkeypatch, capsys):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    shutil.copytree(idx_dir, home / "data")
    write_idx(elsewhere / "data", make_mnist(200, 30, seed=1))  # other images under the same relative name
    monkeypatch.chdir(home)
    assert train.main(["--idx-dir", "data", "--workdir", "run", "--epochs", "1", *SMALL]) == 0
    logged = json.loads((home / "run" / "metrics.jsonl").read_text().splitlines()[-1])["correct"]
    monkeypatch.chdir(elsewhere)
    report = evaluate.evaluate_checkpoint(home / "run")
    assert report["correct"] == logged and report["data"]["name"] == f"IDX files in {home / 'data'}"

    write_idx(home / "data", make_mnist(200, 30, seed=2))  # the run's own folder now holds other images
    capsys.readouterr()
    assert evaluate.main(["--workdir", str(home / "run")]) == 1
    assert "now holds other images" in _one_error_line(capsys)
    assert evaluate.main(["--workdir", str(home / "run"), "--idx-dir", "data"]) == 0  # other data, on purpose
    assert f"On IDX files in {elsewhere / 'data'}" in capsys.readouterr().out


def test_evaluate_says_when_its_count_differs_from_the_logged_one(workdir, capsys):
    step = _step_folders(workdir)[-1]
    meta_file = workdir / "checkpoints" / str(step) / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["correct"] -= 1  # as if training had computed another count
    meta_file.write_text(json.dumps(meta))
    assert evaluate.main(["--workdir", str(workdir), "--step", str(step)]) == 0
    assert f"Training logged {meta['correct']} correct for this checkpoint" in capsys.readouterr().err


def test_resuming_with_jax_enable_x64_is_refused(workdir, idx_dir):
    command = [sys.executable, "-m", "jaxmnist.train", "--idx-dir", str(idx_dir), "--workdir", str(workdir), *SMALL,
               "--epochs", "3"]
    before = _files(workdir)
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={**os.environ, "JAX_ENABLE_X64": "1"})
    assert result.returncode == 1
    assert result.stderr.strip() == (f"{workdir} was trained without JAX_ENABLE_X64, and this run is JAX_ENABLE_X64=1: "
                                     "the numbers would change; resume as it was trained, or --restart.")
    assert _files(workdir) == before


@pytest.mark.parametrize("command", ["train", "evaluate", "export", "predict"])
def test_a_path_too_long_for_the_file_system_is_one_sentence_naming_it(command, workdir, idx_dir, tmp_path, capsys):
    long = str(tmp_path / ("x" * 300))
    argv, flag = {
        "train": (["--idx-dir", long, "--workdir", str(tmp_path / "new"), *SMALL], "--idx-dir"),
        "evaluate": (["--workdir", long], "--workdir"),
        "export": (["--workdir", str(workdir), "--out", long], "--out"),
        "predict": (["--workdir", str(workdir), long], None),
    }[command]
    main = {"train": train.main, "evaluate": evaluate.main, "export": export.main, "predict": predict.main}[command]
    assert main(argv) == 1
    line = _one_error_line(capsys)
    assert "File name too long" in line and (flag is None or line.startswith(f"{flag} {long[:60]}"))


def test_orbax_s_closed_loop_after_a_failed_save_prints_nothing_but_other_errors_still_show(tmp_path, monkeypatch, capfd):
    """A save that fails on a full disk: Orbax closes its event loop, and each of TensorStore's
    pending writes met "Event loop is closed" as a traceback of its own (1 run in 4, 2026-12-03)."""
    import sys
    import time

    import tensorstore

    from jaxmnist.runtime.checkpoint import Checkpoints

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # restored after the test
    Checkpoints(tmp_path / "checkpoints")  # a writer: its process is quiet about closed loops

    def callback_raising(message):
        def callback(_future):
            raise RuntimeError(message)
        promise, future = tensorstore.Promise.new()
        future.add_done_callback(callback)
        promise.set_result(1)
        time.sleep(0.2)

    callback_raising("Event loop is closed")
    assert capfd.readouterr().err == ""
    callback_raising("something else")
    assert "RuntimeError: something else" in capfd.readouterr().err


def test_a_full_disk_under_tensorboard_is_named_and_its_writer_writes_no_more(tmp_path, monkeypatch):
    from jaxmnist.apps.dashboard import Dashboard

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "train", "epoch": 1, "step": 1, "loss": 2.0}) + "\n")
    board = Dashboard(tmp_path)
    board.write({"kind": "train", "epoch": 1, "step": 1, "loss": 2.0})
    events = board._writer.file_writer.event_writer

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(events, "flush", full)
    with pytest.raises(OSError) as failure:
        board.write({"kind": "epoch", "epoch": 1, "step": 4, "test_accuracy": 50.0})
    assert failure.value.filename == str(tmp_path / "tensorboard")
    assert events._closed  # so its exit hook and thread write (and fail, with tracebacks) no more
    board.close()  # nothing left to close, and no error


def test_a_record_whose_numbers_were_edited_or_deleted_is_damage_named_by_its_line(tmp_path):
    """Only kind, epoch and step were checked: a loss edited into "oops" ended a resume and the
    plots in tracebacks (KeyError, TypeError) instead of the damage sentence."""
    from jaxmnist.metrics import MetricsError

    train = {"kind": "train", "epoch": 1, "step": 1, "loss": 2.3}
    epoch = {"kind": "epoch", "epoch": 1, "step": 4, "test_accuracy": 50.0, "test_loss": 1.5, "correct": 5,
             "test_images": 10, "train_loss": 1.9, "train_accuracy": None, "lr": 0.001}
    path = tmp_path / "metrics.jsonl"
    for edited in ({**train, "loss": "oops"}, {k: v for k, v in train.items() if k != "loss"},
                   {**epoch, "test_accuracy": "x"}, {**epoch, "val_loss": "0.1"}, {**epoch, "lr": True}):
        path.write_text("".join(json.dumps(r) + "\n" for r in (train, edited, epoch)))
        with pytest.raises(MetricsError, match=r"metrics.jsonl is damaged at line 2; fix or delete that line\."):
            MetricsLog(path).records()
    path.write_text("".join(json.dumps(r) + "\n" for r in (train, epoch, {**epoch, "val_loss": 0.2, "val_accuracy": 60})))
    assert len(MetricsLog(path).records()) == 3


def test_when_the_only_checkpoint_is_set_aside_the_run_says_it_starts_again(idx_dir, tmp_path, capsys):
    """It set the damaged checkpoint aside and then trained from epoch 1 without a word."""
    workdir = tmp_path / "run"
    assert _train(idx_dir, workdir, "--epochs", "1") == 0
    flip_a_parameter_bit(workdir / "checkpoints" / str(STEPS_PER_EPOCH))
    capsys.readouterr()
    assert _train(idx_dir, workdir, "--epochs", "1") == 0
    out, err = capsys.readouterr()
    assert "is damaged: its params" in err and "No usable checkpoint is left, so training starts again from epoch 1." in err
    assert "Resuming" not in out and "Test Accuracy" in out
    assert (workdir / "damaged-checkpoints" / str(STEPS_PER_EPOCH)).is_dir()


def test_a_file_that_cannot_be_replaced_is_named_not_its_temporary_neighbour(tmp_path, monkeypatch):
    """A read-only workdir's failure read 'Cannot write .../metrics.jsonl.8730.partial'."""
    from jaxmnist.files import replace_file

    real_open = os.open

    def refused(path, *args, **kwargs):
        if str(path).endswith(".partial"):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(OSError) as failure:
        replace_file(tmp_path / "metrics.jsonl", "{}\n")
    assert failure.value.filename == str(tmp_path / "metrics.jsonl") and failure.value.errno == errno.EPERM
