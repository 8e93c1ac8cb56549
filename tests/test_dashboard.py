"""Watching a run: TensorBoard events that match metrics.jsonl, and a progress bar on terminals only."""

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from conftest import COMPILE_CACHE, make_mnist, write_idx

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx(tmp_path_factory.mktemp("idx"), make_mnist(200, 30))


def _command(idx_dir, workdir, *flags):
    return [sys.executable, "-m", "jaxmnist.train", "--idx-dir", str(idx_dir), "--workdir", str(workdir), "--epochs", "2",
            "--batch-size", "8", "--log-every", "10", "--eval-batch-size", "10", "--allow-small-data",
            "--cache-dir", str(COMPILE_CACHE), *flags]


def _events(folder: Path) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in the TFRecord event files under folder."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):  # TFRecord: length (8 bytes), its CRC (4), the record, its CRC (4)
            length = struct.unpack("<Q", data[offset:offset + 8])[0]
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            scalars += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return scalars


def _in_a_terminal(command, timeout=300) -> tuple[int, str]:
    """Run command with a pseudo-terminal 100 columns wide as its stdout and stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(command, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    output = b""
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            process.kill()
            raise AssertionError("the run printed nothing for too long")
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    return process.wait(timeout=60), output.decode(errors="replace")


def test_every_epoch_is_in_tensorboard_once_even_after_a_resume(idx_dir, tmp_path):
    workdir = tmp_path / "run"
    first = subprocess.run(_command(idx_dir, workdir, "--epochs", "1"), cwd=ROOT, capture_output=True, timeout=300)
    assert first.returncode == 0
    # Records past the checkpoint, as a kill between writing them and saving leaves them:
    with (workdir / "metrics.jsonl").open("a") as file:
        file.write(json.dumps({"kind": "train", "epoch": 2, "step": 26, "loss": 9.0}) + "\n")
    again = subprocess.run(_command(idx_dir, workdir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    scalars = _events(workdir / "tensorboard")
    epochs = [r for r in records if r["kind"] == "epoch"]
    for name in ("test_accuracy", "test_loss", "train_accuracy", "train_loss", "lr", "images_per_second"):
        shown = [(step, value) for tag, step, value in scalars if tag == f"epoch/{name}"]
        assert shown == [(r["step"], pytest.approx(r[name], rel=1e-6)) for r in epochs]
    losses = [(step, value) for tag, step, value in scalars if tag == "train/loss"]
    assert losses == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records if r["kind"] == "train"]
    assert 9.0 not in [value for _, value in losses]  # the dropped record is gone from the dashboard too


def test_a_progress_bar_on_a_terminal_and_only_the_labs_lines_in_a_pipe(idx_dir, tmp_path):
    status, terminal = _in_a_terminal(_command(idx_dir, tmp_path / "tty"))
    assert status == 0 and "Epoch 1:" in terminal and "img/s" in terminal and "Test Accuracy" in terminal
    piped = subprocess.run(_command(idx_dir, tmp_path / "pipe"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0 and piped.stderr == ""
    for line in piped.stdout.splitlines():
        assert line == "" or line.startswith(("Using device:", "Train Epoch:", "Test Accuracy:", "Best model saved")), line
    status, terminal = _in_a_terminal(_command(idx_dir, tmp_path / "off", "--no-progress"))
    assert status == 0 and "img/s" not in terminal and "Test Accuracy" in terminal
