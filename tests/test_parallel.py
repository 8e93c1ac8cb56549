"""Data parallelism: 4 simulated CPU devices, and 2 processes joined by jax.distributed."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import COMPILE_CACHE, make_mnist, write_idx

from jaxmnist.apps.evaluate import evaluate_checkpoint, restore_model
from jaxmnist.runtime.checkpoint import Checkpoints

ROOT = Path(__file__).resolve().parents[1]
FOUR_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx(tmp_path_factory.mktemp("idx"), make_mnist(200, 32))


def _train(idx_dir, workdir, *extra, env=None):
    command = [sys.executable, "-m", "jaxmnist.train", "--idx-dir", str(idx_dir), "--workdir", str(workdir),
               "--batch-size", "16", "--log-every", "4", "--eval-batch-size", "16", "--allow-small-data",
               "--cache-dir", str(COMPILE_CACHE), *extra]
    # JAX_PLATFORMS=cpu: these tests simulate devices and processes on the CPU, GPU or not.
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process):
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return out


def _epochs(workdir):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["kind"] == "epoch"]


@pytest.mark.parametrize("model", ["lab", "resnet"])
def test_four_devices_compute_what_one_device_computes(idx_dir, tmp_path, model):
    # The resnet's BatchNorm takes its statistics over the global batch, not each device's share.
    out = _finish(_train(idx_dir, tmp_path / "four", "--epochs", "2", "--model", model, env=FOUR_DEVICES))
    assert "Using device: cpu (4 x cpu)" in out
    _finish(_train(idx_dir, tmp_path / "one", "--epochs", "2", "--model", model, "--devices", "1", env=FOUR_DEVICES))
    for four, one in zip(_epochs(tmp_path / "four"), _epochs(tmp_path / "one")):
        # Same batches, angles and updates; only the order of float sums differs.
        assert four["correct"] == one["correct"]
        for key in ("train_loss", "test_loss"):
            assert four[key] == pytest.approx(one[key], rel=1e-5)
    params = [restore_model(tmp_path / w, "26").variables["params"] for w in ("four", "one")]  # a 4-device checkpoint, read on 1
    # Two epochs of Adam amplify a different order of float sums differently on each CPU type: the
    # lab's CNN up to 1.04e-5 on the AVX2-only type, less on the AVX-512 one. The resnet's
    # BatchNorm sums over the global batch add to it: 1.4e-4 on the AVX-512 type, in a few weights
    # whose gradients are near zero, where Adam's normalised step (at most the rate, 1e-3) turns
    # the last digits of a sum into a visible difference. A tolerance of one such step holds.
    tolerance = {"lab": 1e-4, "resnet": 1e-3}[model]
    for a, b in zip(*map(jax.tree.leaves, params)):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)


def test_each_device_gets_its_share_of_the_batch():
    script = """
import jax, jax.numpy as jnp, numpy as np
from jaxmnist.runtime import parallel
from jaxmnist.core.loops import DeviceDataset, epoch_order, select_batch
mesh = parallel.make_mesh("all")
data = parallel.replicate(DeviceDataset(np.zeros((200, 28, 28), np.uint8), np.zeros(200, np.int32)), mesh)
order = parallel.replicate(epoch_order(jax.random.key(0), 200, 64), mesh)
batch = jax.jit(select_batch, static_argnums=3)(data, order, 0, parallel.batch_sharded(mesh))
print(len(batch.images.addressable_shards), batch.images.sharding.shard_shape(batch.images.shape))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, **FOUR_DEVICES},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4", "(16,", "28,", "28)"]


def test_a_four_device_checkpoint_evaluates_on_one_device_but_resumes_on_four_only(idx_dir, tmp_path):
    _finish(_train(idx_dir, tmp_path / "run", "--epochs", "1", env=FOUR_DEVICES))
    report = evaluate_checkpoint(tmp_path / "run", "latest", idx_dir=str(idx_dir))  # this process has one device
    assert report["correct"] == _epochs(tmp_path / "run")[-1]["correct"]
    refused = _train(idx_dir, tmp_path / "run", "--epochs", "2")  # one device: other sums, other numbers
    out, err = refused.communicate(timeout=300)
    assert refused.returncode == 1 and err.strip().splitlines() == [
        f"{tmp_path / 'run'} was trained on 4 device(s), and this run has 1: the sums would change; resume with "
        "--devices 4, or --restart."]
    out = _finish(_train(idx_dir, tmp_path / "run", "--epochs", "2", env=FOUR_DEVICES))
    assert "Resuming from epoch 2, step 13" in out


def _free_port():
    """A port for the coordinator that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _two_processes(idx_dir, workdir, *extra):
    """Two processes of one run, joined by jax.distributed on localhost, one CPU device each."""
    port = _free_port()
    return [
        _train(idx_dir, workdir, *extra, env={
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)})
        for i in range(2)
    ]


def test_two_processes_train_one_epoch_and_write_once(idx_dir, tmp_path):
    processes = _two_processes(idx_dir, tmp_path / "run", "--epochs", "1")
    first, second = (_finish(p) for p in processes)
    assert "Using device: cpu (2 x cpu)" in first and "Test Accuracy" in first
    assert "Train Epoch" not in second and "Test Accuracy" not in second  # only process 0 talks
    assert Checkpoints(tmp_path / "run" / "checkpoints", read_only=True).steps() == [13]
    assert len(_epochs(tmp_path / "run")) == 1 and sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".jaxmnist.lock", "checkpoints", "config.json", "metrics.jsonl", "tensorboard"]


def test_a_batch_that_does_not_split_evenly_is_refused(idx_dir, tmp_path):
    process = _train(idx_dir, tmp_path / "run", "--batch-size", "30", env=FOUR_DEVICES)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert err.strip().splitlines()[-1] == (
        "--batch-size 30 does not split evenly across 4 devices; choose a multiple of 4 or fewer --devices.")


def _results(workdir):
    """Epoch records without wall-clock fields, and the final parameters."""
    records = [{k: v for k, v in r.items() if not k.endswith("seconds") and k != "images_per_second"}
               for r in _epochs(workdir)]
    return records, restore_model(workdir, "latest").variables["params"]


@pytest.mark.parametrize("targets", [pytest.param((1,), marks=pytest.mark.slow), (0, 1)],  # each about 30 s
                         ids=["to one process", "to both"])
def test_sigterm_stops_every_process_with_one_save_and_the_restart_resumes_exactly(idx_dir, tmp_path, targets):
    flags = ("--epochs", "2", "--checkpoint-seconds", "3600")  # only the stop and epoch ends save
    for process in _two_processes(idx_dir, tmp_path / "straight", *flags):
        _finish(process)
    processes = _two_processes(idx_dir, tmp_path / "run", *flags)
    watchdog = threading.Timer(300, lambda: [p.kill() for p in processes])  # a hang fails, never blocks
    watchdog.start()
    try:
        lines = iter(processes[0].stdout)
        while not next(lines).startswith("Train Epoch: 2 [0/"):  # mid-run: epoch 1 is saved, epoch 2 is not
            pass
        for i in targets:
            processes[i].send_signal(signal.SIGTERM)
        outcomes = [p.communicate(timeout=300) for p in processes]
    finally:
        watchdog.cancel()
    for process, (_, err) in zip(processes, outcomes):
        assert process.returncode == 143, err[-3000:]
    last_line = outcomes[0][1].strip().splitlines()[-1]
    assert last_line.startswith("Stopped at step ") and "in epoch 2);" in last_line
    stopped_at = int(last_line.split()[3])
    assert 13 < stopped_at < 26
    assert Checkpoints(tmp_path / "run" / "checkpoints", read_only=True).steps() == [13, stopped_at]  # saved once
    first, _ = (_finish(p) for p in _two_processes(idx_dir, tmp_path / "run", *flags))  # process 1 is quiet
    assert f"Resuming from epoch 2, step {stopped_at}" in first
    (records, params), (expected_records, expected_params) = _results(tmp_path / "run"), _results(tmp_path / "straight")
    assert records == expected_records
    for got, expected in zip(jax.tree.leaves(params), jax.tree.leaves(expected_params)):
        np.testing.assert_array_equal(got, expected)


# One outcome for all processes: what fails at start-up is agreed by all of them (one exchange,
# parallel.agree_on_start), so each ends with the same sentence; a process gone mid-run is
# jax.distributed's to tell, through its heartbeat (docs/devices.md).

def _outcomes(processes, seconds=120):
    """Each process's (exit code, stderr lines); a process still running after `seconds` fails the test."""
    watchdog = threading.Timer(seconds, lambda: [p.kill() for p in processes])
    watchdog.start()
    try:
        results = [p.communicate() for p in processes]
    finally:
        watchdog.cancel()
    return [(p.returncode, err.strip().splitlines()) for p, (_, err) in zip(processes, results)]


def test_a_workdir_locked_by_a_third_process_ends_both_processes(idx_dir, tmp_path):
    import fcntl

    workdir = tmp_path / "run"
    workdir.mkdir()
    with open(workdir / ".jaxmnist.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a third process holds the lock
        (code0, err0), (code1, err1) = _outcomes(_two_processes(idx_dir, workdir, "--epochs", "1"))
    assert code0 == code1 == 1, (err0, err1)
    assert len(err0) == 1 and err0[0].startswith("Process 0 of 2: --workdir ") and "is in use by another jaxmnist run" in err0[0]
    assert err1 == err0
    assert sorted(p.name for p in workdir.iterdir()) == [".jaxmnist.lock"]  # nothing written


def test_a_data_error_on_one_process_ends_both(idx_dir, tmp_path):
    broken = tmp_path / "broken-idx"
    broken.mkdir()  # process 1 reads an empty folder instead of the four IDX files
    port = _free_port()
    processes = [
        _train(idx_dir if i == 0 else broken, tmp_path / "run", "--epochs", "1", env={
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)})
        for i in range(2)
    ]
    (code0, err0), (code1, err1) = _outcomes(processes)
    assert code0 == code1 == 1, (err0, err1)
    assert len(err1) == 1 and err1[0].startswith("Process 1 of 2: ") and str(broken) in err1[0], err1
    assert err0 == err1
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize("killed", [pytest.param(0, marks=pytest.mark.slow), 1],  # each about 45 s
                         ids=["the coordinator", "the other"])
def test_a_process_killed_mid_epoch_ends_the_other_in_one_line(idx_dir, tmp_path, killed):
    flags = ("--epochs", "2", "--peer-timeout", "5")
    processes = _two_processes(idx_dir, tmp_path / "run", *flags)
    lines = iter(processes[0].stdout)
    while not next(lines).startswith("Train Epoch: 2 [0/"):  # epoch 1 is saved
        pass
    processes[killed].kill()
    survivor = 1 - killed
    [(code, err)] = _outcomes([processes[survivor]], seconds=60)  # within --peer-timeout and a little more
    text = "\n".join(err)
    assert code != 0 and ("Terminating process because the JAX distributed service detected fatal errors" in text
                          or "a collective failed because another process of the run is gone" in text), text
    assert "Traceback" not in text  # jax.distributed's own lines, or our one sentence: never a Python traceback
    processes[killed].wait()
    first, _ = (_finish(p) for p in _two_processes(idx_dir, tmp_path / "run", *flags))  # and they are
    assert "Resuming from epoch 2, step 13" in first


def test_a_process_started_alone_says_what_it_waits_for_and_gives_up(idx_dir, tmp_path):
    port = _free_port()
    alone = _train(idx_dir, tmp_path / "run", "--join-timeout", "8", env={
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"})
    [(code, err)] = _outcomes([alone], seconds=60)
    assert code != 0 and err[0] == f"Process 0 of 2 is waiting for the others at 127.0.0.1:{port} (up to --join-timeout 8 s) ..."
    assert "RegisterTask" in "\n".join(err)  # jax.distributed's own verdict: the others never registered
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("env, message", [
    ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES must be a whole number, got 'two'."),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID must be between 0 and 1 (JAX_NUM_PROCESSES is 2), got 2."),
])
def test_a_mistyped_process_variable_is_one_sentence(idx_dir, tmp_path, env, message):
    [(code, err)] = _outcomes([_train(idx_dir, tmp_path / "run", env=env)], seconds=60)
    assert code == 1 and err == [message] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, values", [("--epochs", ("1", "2")), ("--workdir", ("a", "b"))])
def test_processes_started_with_different_flags_refuse_together(idx_dir, tmp_path, flag, values):
    # Unchecked, the first trained on after the second had stopped, and both waited forever.
    port = _free_port()
    processes = [
        _train(idx_dir, tmp_path / "a", flag, str(tmp_path / value) if flag == "--workdir" else value, env={
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)})
        for i, value in enumerate(values)
    ]
    outcomes = _outcomes(processes)
    shown = [str(tmp_path / v) if flag == "--workdir" else v for v in values]
    sentence = f"Process 1 of 2 has {flag} {shown[1]}, process 0 {flag} {shown[0]}; start every process with the same flags and data."
    assert outcomes == [(1, [sentence]), (1, [sentence])]
    assert not any((tmp_path / v).exists() for v in values)
