"""python -m jaxmnist.sweep: its runs, the finished rule, the table, the SLURM script, and whole sweeps."""

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import COMPILE_CACHE, make_mnist, write_idx

from jaxmnist.apps.sweep import slurm, table
from jaxmnist.apps.sweep.command import main
from jaxmnist.apps.sweep.plan import (
    Status,
    SweepError,
    epoch_records,
    parse_grid,
    plan,
    status,
)
from jaxmnist.apps.sweep import pool
from jaxmnist.apps.sweep.pool import core_shares
from jaxmnist.runtime.workdir import WorkdirError

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = str(COMPILE_CACHE)  # shared with the other tests that start training processes
TINY = ["--allow-small-data", "--epochs", "1", "--eval-batch-size", "10"]


def _fake_run(run, epochs, accuracies=None, val=None, **recorded):
    """A workdir as the trainer leaves it: config.json with the recipe, and one record per epoch."""
    run.workdir.mkdir(parents=True)
    config = run.config.to_dict() | recorded
    (run.workdir / "config.json").write_text(json.dumps({"written_by": "jaxmnist", "config": config}))
    records = [{"kind": "epoch", "epoch": e, "step": 4 * e, "epoch_seconds": 2.0,
                "test_accuracy": (accuracies or [80.0 + e] * epochs)[e - 1]}
               | ({"val_accuracy": val[e - 1]} if val else {}) for e in range(1, epochs + 1)]
    (run.workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_grid_is_every_combination_each_a_run_named_by_what_differs(tmp_path):
    runs = plan(parse_grid(["lr=1e-3,3e-3", "weight_decay=0,0.05", "deterministic=false"]), [0, 1], tmp_path,
                ["--epochs", "2", "--optimizer", "adamw"])
    assert [run.name for run in runs[:3]] == ["lr=1e-3_weight-decay=0_deterministic=false_seed=0",
                                              "lr=1e-3_weight-decay=0_deterministic=false_seed=1",
                                              "lr=1e-3_weight-decay=0.05_deterministic=false_seed=0"]
    assert len(runs) == 8 and len({run.workdir for run in runs}) == 8
    last = runs[-1]
    assert last.flags == ("--epochs", "2", "--optimizer", "adamw", "--lr", "3e-3", "--weight-decay", "0.05", "--no-deterministic", "--seed", "1",
                          "--workdir", str(tmp_path / last.name))
    assert (last.config.lr, last.config.weight_decay, last.config.deterministic, last.config.seed, last.config.epochs) \
        == (3e-3, 0.05, False, 1, 2)
    assert last.combination == "lr=3e-3, weight-decay=0.05, deterministic=false"


@pytest.mark.parametrize("grid, common, message", [
    (["lr=1e-3", "lr=3e-3"], [], "--grid lr is given twice; list all its values in one --grid."),
    (["lr"], [], "--grid lr should read NAME=VALUE,VALUE,... (for example --grid lr=1e-3,3e-3)."),
    (["learning-rate=1"], [], "The sweep's setting learning-rate is not a flag of python -m jaxmnist.train."),
    (["seed=1,2"], [], "The sweep's setting seed is set by the sweep itself."),
    (["lr=1e-3"], ["--lr=3e-3"], "--lr is both in the sweep's settings and in the flags after --; give it once."),
    (["lr=1/2"], [], "The value '1/2' of lr cannot name a folder; use letters, digits and . + - only."),
    (["deterministic=no"], [], "deterministic is on or off: its values are true and false, not 'no'."),
    ([], ["--workdir", "x"], "The sweep sets --workdir of each run itself; give --root to the sweep instead."),
    ([], ["--restart"], "The sweep sets --restart of each run itself; give a new --root to the sweep instead."),
])
def test_a_sweep_that_cannot_run_is_refused_in_one_sentence(tmp_path, grid, common, message):
    with pytest.raises(SweepError) as error:
        plan(parse_grid(grid), [0], tmp_path, common)
    assert str(error.value) == message


def test_a_bad_value_is_the_trainers_own_error_before_any_run_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--grid", "lr=1e-3,-1", "--root", str(tmp_path / "sweep")])
    assert exit.value.code == 2
    assert capsys.readouterr().err == ("python -m jaxmnist.sweep (lr=-1_seed=0): error: --lr must be a finite positive number "
                                       "that float32 holds (1.2e-38 to 3.4e38), got -1.0.\n")
    assert not (tmp_path / "sweep").exists()


def test_finished_is_what_the_runs_own_records_say_under_the_resume_rule(tmp_path):
    runs = plan([{}], [0, 1, 2, 3, 4, 5], tmp_path, ["--epochs", "3"])
    assert status(runs[0]) is Status.NEW  # no folder
    _fake_run(runs[1], 3, workdir="elsewhere", recipe="improved")  # where it ran and the preset's name do not matter
    _fake_run(runs[2], 2)  # stopped after epoch 2
    _fake_run(runs[3], 5)  # a longer run of the step schedule: its first 3 epochs are this run
    _fake_run(runs[4], 3, dropout=0.3)
    runs[5].workdir.mkdir()
    (runs[5].workdir / "notes.txt").write_text("mine")
    assert [status(run) for run in runs[1:4]] == [Status.FINISHED, Status.STARTED, Status.FINISHED]
    assert [r["epoch"] for r in epoch_records(runs[3])] == [1, 2, 3]
    with pytest.raises(SweepError, match=r"seed=4 holds a run with other settings \(--dropout 0.3 -> 0.0\); "
                                         "use another --root, or move that folder away."):
        status(runs[4])
    with pytest.raises(WorkdirError, match="holds files that are not a jaxmnist run"):  # the trainer's own refusal
        status(runs[5])


def test_the_table_is_the_mean_and_spread_of_the_runs_own_records(tmp_path):
    runs = plan(parse_grid(["dropout=0,0.3"]), [0, 1, 2], tmp_path, ["--epochs", "3"])
    tests = {0: [90, 95, 94], 1: [91, 93, 96], 2: [92, 97, 95], 3: [80, 85, 84], 4: [81, 86, 85]}
    vals = {0: [89, 93, 96], 1: [90, 94, 95], 2: [91, 98, 94], 3: [79, 84, 83], 4: [80, 85, 86]}
    for i, run in enumerate(runs[:5]):  # the last run has not finished: the table says 2 of 3
        _fake_run(run, 3, tests[i], vals[i])
    rows = table.summarize(runs, {run.workdir for run in runs[:5]})
    first, second = rows
    assert first.best_epochs == [3, 3, 2]  # chosen on validation: seed 0's best test epoch is 2
    assert first.values["best test"] == [94, 96, 97] and first.values["final val"] == [96, 95, 94]
    assert table.mean_and_std(first.values["final test"]) == (statistics.mean([94, 96, 95]), statistics.stdev([94, 96, 95]))
    assert (second.seeds, second.planned, second.values["best val"]) == ([0, 1], 3, [84, 86])
    text = table.markdown(rows)
    assert "| dropout=0 | 3 of 3 | 95.00 +- 1.00 | 95.67 +- 1.53 | 95.00 +- 1.00 | 96.33 +- 1.53 | 3, 3, 2 | 6 s |" in text
    assert text.splitlines()[0] == ("| combination | seeds | final test | best test | final val | best val "
                                    "| best epoch per seed | time of a run |")
    csv_lines = table.csv_text(rows).splitlines()
    assert csv_lines[2] == "0.3,0 1,3,84.5000,0.7071,85.0000,0.0000,84.5000,2.1213,85.0000,1.4142,2 3,6.0"


def test_the_time_left_counts_epochs_not_runs(tmp_path, caplog):
    # Runs of 5 and of 15 epochs: a 5-epoch run took 100 s, so one 15-epoch run still waiting takes 300 s.
    short, long = plan([{"epochs": "5"}, {"epochs": "15"}], [0], tmp_path, ["--idx-dir", "x"])
    short.workdir.mkdir(parents=True)
    (short.workdir / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(1, 6)))
    with caplog.at_level("INFO", logger="jaxmnist"):
        pool._report(done=1, running=[], waiting=[long], timings=[(100.0, 5)], jobs=2)
    assert "1 done, 0 running, 1 left; about 5 min 0 s left" in caplog.text
    assert pool._epochs_done(short) == 5 and pool._epochs_done(long) == 0
    with (short.workdir / "metrics.jsonl").open("a") as metrics:  # epoch 6 has begun: 5 are done, not 6
        metrics.write(json.dumps({"kind": "train", "epoch": 6, "step": 101, "loss": 0.1}) + "\n")
    assert pool._epochs_done(short) == 5
    caplog.clear()
    last = pool._Running(short, None, [0], 0.0, None, 0, 0)  # its last epoch recorded, its process not yet ended
    with caplog.at_level("INFO", logger="jaxmnist"):
        pool._report(done=1, running=[last], waiting=[], timings=[(100.0, 5)], jobs=2)
    assert "0 left; the last runs are finishing" in caplog.text and "about 0 s left" not in caplog.text


def test_each_simultaneous_run_has_its_own_cores():
    assert core_shares([0, 1], 2) == [[0], [1]]
    assert core_shares(list(range(8)), 3) == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert core_shares([4, 5], 3) == [[4], [5], [4]]  # more runs than cores: they take turns on a core


def test_the_slurm_script_is_one_run_per_task_through_the_sweeps_own_rule(tmp_path):
    runs = plan(parse_grid(["lr=1e-3,3e-3"]), [0, 1], tmp_path / "sweep", [])
    text = slurm.script(["python", "-m", "jaxmnist.sweep", "--root", "my sweep"], ["--epochs", "2"], runs, tmp_path / "sweep")
    assert "#SBATCH --array=0-3\n" in text and "#   task 3: lr=3e-3_seed=1\n" in text
    assert "#   python -m jaxmnist.sweep --root 'my sweep' -- --epochs 2\n" in text  # the table, afterwards
    assert text.rstrip().endswith("""exec python -m jaxmnist.sweep --root 'my sweep' --array-task "$SLURM_ARRAY_TASK_ID" -- --epochs 2""")


def _sweep(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "jaxmnist.sweep", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_the_slurm_scripts_tasks_train_and_then_skip_their_runs(tmp_path, report):
    idx = write_idx(tmp_path / "idx", make_mnist(200, 30))
    script, root = tmp_path / "sweep.sbatch", tmp_path / "sweep"
    common = ["--", "--idx-dir", str(idx), *TINY, "--cache-dir", CACHE_DIR]
    made = _sweep("--seeds", "0", "1", "--root", str(root), "--slurm", str(script), *common)
    assert made.wait(timeout=60) == 0, made.stderr.read()
    start = time.perf_counter()
    for task in ("0", "1"):  # as SLURM would run each array task
        result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "SLURM_ARRAY_TASK_ID": task})
        assert result.returncode == 0, result.stderr
        assert f"Task {task}: seed={task}\n" in result.stdout and "Test Accuracy:" in result.stdout
    report(f"two SLURM array tasks of a tiny run, run locally one after the other: {time.perf_counter() - start:.0f} s")
    again = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "SLURM_ARRAY_TASK_ID": "1"})
    assert again.stdout == "Task 1: seed=1 has finished already; nothing to do.\n"
    unset = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={**os.environ, "SLURM_ARRAY_TASK_ID": ""})
    assert unset.returncode != 0 and "submit this script with sbatch" in unset.stderr
    table_run = _sweep("--seeds", "0", "1", "--root", str(root), *common)  # the same sweep, here: only the table
    out, _ = table_run.communicate(timeout=60)
    assert table_run.returncode == 0 and "2 finished already (skipped), 0 to resume, 0 new" in out
    assert "| the common flags alone | 2 of 2 |" in (root / "summary.md").read_text()


def test_a_failed_run_is_named_with_the_trainers_reason_and_the_others_go_on(tmp_path):
    result = _sweep("--grid", "lr=1e-3", "--root", str(tmp_path / "sweep"), "--", "--idx-dir", str(tmp_path / "nope"))
    out, err = result.communicate(timeout=120)
    assert result.returncode == 1
    reason = f"--idx-dir {tmp_path / 'nope'} is not a directory; it should hold the four MNIST IDX files."
    assert f"lr=1e-3_seed=0 failed: {reason} (all it printed: {tmp_path / 'sweep' / 'lr=1e-3_seed=0'}.log)\n" in err
    assert err.endswith(f"1 of 1 runs failed (the first: lr=1e-3_seed=0: {reason}); the table holds the others.\n")


def _read(path):
    try:
        return Path(path).read_text(errors="replace")
    except OSError:  # the process has just ended
        return ""


def _finished(root):
    """The workdirs under root whose 1-epoch run has written its epoch record."""
    return [p for p in root.glob("*_seed=*") if '"kind": "epoch"' in _read(p / "metrics.jsonl")]


def _children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
def test_a_sweep_runs_two_at_a_time_survives_ctrl_c_and_skips_finished_runs_on_restart(tmp_path, report):
    """2 flags x 2 values x 2 seeds at 1 epoch, two processes at a time; SIGINT; the same command again."""
    idx = write_idx(tmp_path / "idx", make_mnist(200, 30))
    root = tmp_path / "sweep"
    args = ["--seeds", "0", "1", "--grid", "lr=1e-3,3e-3", "--grid", "dropout=0,0.3", "--root", str(root), "--jobs", "2",
            "--", "--idx-dir", str(idx), *TINY, "--cache-dir", CACHE_DIR]
    start = time.perf_counter()
    sweep = _sweep(*args)
    shares = {",".join(map(str, share)) for share in core_shares(sorted(os.sched_getaffinity(0)), 2)}
    cores_seen, most_at_once = set(), 0
    while not _finished(root):  # sample the sweep's training processes until the first run has finished
        trainers = [c for c in _children(sweep.pid) if "jaxmnist.train" in _read(f"/proc/{c}/cmdline")]
        most_at_once = max(most_at_once, len(trainers))
        cores_seen |= {line.split()[1] for c in trainers for line in _read(f"/proc/{c}/status").splitlines()
                       if line.startswith("Cpus_allowed_list")}
        assert sweep.poll() is None, sweep.communicate()
        time.sleep(0.05)
    sweep.send_signal(signal.SIGINT)  # as Ctrl-C would, to the sweep alone
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, err
    assert "Stopping:" in out and "run the same command again to resume the rest." in out
    assert most_at_once == 2 and cores_seen == shares  # two runs at once, each pinned to its own share
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(root) in " ".join(p.info["cmdline"] or [])]
    finished_before = {p.name: (p / "metrics.jsonl").read_text() for p in _finished(root)}
    assert 1 <= len(finished_before) < 8

    again = _sweep(*args)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    report(f"sweep of 2 x 2 x 2 tiny 1-epoch runs, 2 at a time, with a Ctrl-C and a restart: {time.perf_counter() - start:.0f} s")
    assert f"{len(finished_before)} finished already (skipped)" in out
    for name, text in finished_before.items():
        assert (root / name / "metrics.jsonl").read_text() == text  # not trained again
        assert f"Started {name} " not in out
    # The table's numbers are the runs' own metrics.
    summary = (root / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("lr,dropout,seeds,planned,final_test_mean,final_test_std,best_test_mean")
    for line in summary[1:]:
        lr, dropout, seeds, planned, final_mean, final_std = line.split(",")[:6]
        accuracies = [json.loads((root / f"lr={lr}_dropout={dropout}_seed={s}" / "metrics.jsonl").read_text()
                                 .splitlines()[-1])["test_accuracy"] for s in (0, 1)]
        assert (seeds, planned) == ("0 1", "2")
        assert float(final_mean) == pytest.approx(statistics.mean(accuracies), abs=1e-4)
        assert float(final_std) == pytest.approx(statistics.stdev(accuracies), abs=1e-4)
    assert "| lr=3e-3, dropout=0.3 | 2 of 2 |" in (root / "summary.md").read_text()


def test_a_second_sweep_on_the_same_root_is_refused_naming_the_first(tmp_path):
    import fcntl

    from jaxmnist.apps.sweep.command import SWEEP_LOCK

    root = tmp_path / "sweep"
    root.mkdir()
    with open(root / SWEEP_LOCK, "w") as lock:  # the first sweep, still running
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("process 4242 on host0, started 2026-12-03 10:00:00\n")
        lock.flush()
        second = _sweep("--root", str(root), "--", "--idx-dir", str(tmp_path / "idx"))
        out, err = second.communicate(timeout=120)
    assert second.returncode == 1
    assert err.splitlines() == [f"--root {root} is in use by another sweep (process 4242 on host0, started 2026-12-03 "
                                "10:00:00); wait for it to finish, or use another --root."]
    assert sorted(p.name for p in root.iterdir()) == [SWEEP_LOCK]  # no run started, no log, no table


def test_the_runs_of_a_killed_sweep_save_and_stop_with_it(tmp_path):
    """SIGKILL to the sweep alone (its runs are in sessions of their own): each run gets SIGTERM
    from the kernel, saves and stops, so none trains on alone holding its workdir's lock."""
    idx = write_idx(tmp_path / "idx", make_mnist(200, 30))
    root = tmp_path / "sweep"
    sweep = _sweep("--root", str(root), "--", "--idx-dir", str(idx), "--allow-small-data", "--epochs", "50",
                   "--eval-batch-size", "10", "--batch-size", "16", "--log-every", "5", "--cache-dir", CACHE_DIR)
    log = root / "seed=0.log"
    deadline = time.monotonic() + 120
    while "Train Epoch: 2 " not in _read(log):  # training, with a checkpoint saved
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        time.sleep(0.1)
    [trainer] = [c for c in _children(sweep.pid) if "jaxmnist.train" in _read(f"/proc/{c}/cmdline")]
    sweep.kill()
    sweep.wait()
    deadline = time.monotonic() + 60
    while psutil.pid_exists(trainer) and psutil.Process(trainer).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the run trained on after its sweep was killed"
        time.sleep(0.1)
    assert "; the state is saved: run the same command again to resume." in _read(log).splitlines()[-1]


def test_the_table_of_a_sweep_with_no_finished_run_is_still_a_table(tmp_path):
    runs = plan(parse_grid(["lr=2e-3,3e-3"]), [0], tmp_path, [])
    text = table.markdown(table.summarize(runs, finished=set()))
    header, separator, *rows = text.splitlines()
    assert header == "| combination | seeds | best epoch per seed | time of a run |"
    assert all(line.count("|") == header.count("|") for line in (separator, *rows)), text
    assert rows[0] == "| lr=2e-3 | 0 of 1 | - | - |"
