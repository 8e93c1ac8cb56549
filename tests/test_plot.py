import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import make_mnist, write_idx

from jaxmnist.config import Config
from jaxmnist.runtime import run

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
    for name in ("curves", "samples", "structure", "confusion", "errors"):
        png = workdir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000  # a drawn figure, not an empty canvas
    assert (workdir / "eval").is_dir()  # the missing eval JSON was computed


def test_plot_refuses_a_directory_that_is_not_a_run(tmp_path):
    result = _plot("--workdir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip() == f"{tmp_path} has no metrics.jsonl: is it a jaxmnist workdir?"


def _recorded_run(folder: Path, epochs=2, fields=lambda epoch: {}, **recipe) -> Path:
    """A workdir's records alone, as a finished run leaves them: config.json and metrics.jsonl;
    fields(epoch) adds to each epoch's record."""
    folder.mkdir(parents=True)
    config = Config(**recipe).to_dict()
    (folder / "config.json").write_text(json.dumps({"written_by": "jaxmnist", "config": config}))
    records = [{"kind": "epoch", "epoch": e, "step": 4 * e, "lr": config["lr"], "train_loss": 1.0 / e,
                "test_loss": 1.2 / e, "test_accuracy": 90.0 + e + config["seed"]} | fields(e) for e in range(1, epochs + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_overlays_name_each_run_by_what_differs_in_its_recipe(tmp_path):
    from jaxmnist.apps import plot

    a = _recorded_run(tmp_path / "mnist", lr=3e-3, dropout=0.3, seed=1, workdir="elsewhere")
    b = _recorded_run(tmp_path / "b" / "mnist", lr=1e-3, dropout=0.3, seed=0)
    assert plot.run_labels([a, b]) == ["lr=0.003, seed=1", "lr=0.001, seed=0"]  # not "mnist" twice
    same = _recorded_run(tmp_path / "same", lr=3e-3, dropout=0.3, seed=1)
    assert plot.run_labels([a, same]) == ["mnist", "same"]  # nothing differs: the folders' names


def _accuracy_panel(workdir: Path) -> dict[str, tuple[list, list]]:
    """curves.png's accuracy panel as drawn: each line's legend label -> its (epochs, values)."""
    from jaxmnist.apps import plot

    accuracy_ax = plot.curves([workdir]).axes[2]
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in accuracy_ax.get_lines()
            if not line.get_label().startswith(("_", "the lab"))}


def test_curves_show_training_test_and_validation_accuracy_and_which_set_chose_the_best(tmp_path):
    # Test accuracy rises to epoch 3 (91, 92, 93); validation peaks at epoch 2; epoch 2's training
    # accuracy is unknown (null: resumed from a checkpoint older than the counter).
    val, train = {1: 95.0, 2: 97.0, 3: 96.0}, {1: 80.0, 2: None, 3: 90.0}
    workdir = _recorded_run(tmp_path / "val", epochs=3, validation=40,
                            fields=lambda e: {"val_accuracy": val[e], "val_loss": 0.1 / e, "train_accuracy": train[e]})
    lines = _accuracy_panel(workdir)
    assert list(lines) == ["test", "validation", "training", "best: epoch 2, chosen by validation accuracy"]
    assert lines["validation"][1] == [95.0, 97.0, 96.0] and lines["test"][1] == [91.0, 92.0, 93.0]
    assert lines["training"][1][0] == 80.0 and np.isnan(lines["training"][1][1]) and lines["training"][1][2] == 90.0
    assert lines["best: epoch 2, chosen by validation accuracy"] == ([2], [97.0])  # on the accuracy that chose it

    lab = _recorded_run(tmp_path / "lab", epochs=3, fields=lambda e: {"train_accuracy": train[e]})
    assert list(_accuracy_panel(lab)) == ["test", "training", "best: epoch 3, chosen by test accuracy"]


def test_a_sweep_is_drawn_as_its_combinations_mean_curves(tmp_path):
    for lr in (1e-3, 3e-3):
        for seed in (0, 1):
            _recorded_run(tmp_path / "sweep" / f"lr={lr}_seed={seed}", lr=lr, seed=seed)
    (tmp_path / "sweep" / "summary.md").write_text("not a run")
    result = _plot("--sweep", str(tmp_path / "sweep"))
    assert result.returncode == 0, result.stderr
    png = tmp_path / "sweep" / "plots" / "sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    empty = _plot("--sweep", str(tmp_path / "sweep" / "plots"))
    assert (empty.returncode, empty.stderr) == (1, f"{tmp_path / 'sweep' / 'plots'} holds no jaxmnist runs: is it a sweep's --root?\n")


def test_plot_draws_only_the_curves_of_a_run_of_another_model(tmp_path, monkeypatch, capsys):
    """After the model's code changed: one sentence, as evaluate says it, and no figure of the
    wrong model (structure.png of the new code beside the old checkpoint's errors); the curves,
    which need only metrics.jsonl, are drawn."""
    from jaxmnist.apps import plot
    from jaxmnist.core import models
    from jaxmnist.core.models.resnet import ResNet

    idx_dir = write_idx(tmp_path / "idx", make_mnist(200, 30))
    workdir = tmp_path / "run"
    run.train_and_evaluate(Config(workdir=str(workdir), idx_dir=str(idx_dir), epochs=1, eval_batch_size=16,
                                  allow_small_data=True))
    monkeypatch.setitem(models.MODELS, "lab", lambda recipe: ResNet())  # the student's edit of the lab's model
    assert plot.main(["--workdir", str(workdir)]) == 1
    err = capsys.readouterr().err
    assert "belongs to another model" in err and "Only " in err and "curves.png was drawn" in err
    assert sorted(p.name for p in (workdir / "plots").iterdir()) == ["curves.png"]


def test_the_confusion_matrix_s_title_fits_in_its_figure():
    """Its second line was cut at both edges ("20/10000 test images correct" for 9920)."""
    from jaxmnist.apps import plot

    matrix = np.diag([980, 1130, 1025, 1005, 975, 885, 950, 1020, 965, 985])
    matrix[4, 9] = 7
    figure = plot.confusion({"confusion_matrix": matrix.tolist(), "step": 4690, "correct": 9920, "test_images": 10000,
                             "chosen_by": "validation", "classes": list("0123456789")})
    title = figure.axes[0].title.get_window_extent(figure.canvas.get_renderer())
    assert 0 <= title.x0 and title.x1 <= figure.bbox.width and title.y1 <= figure.bbox.height


def test_samples_of_a_count_that_does_not_fill_two_rows_of_one_batch_is_one_sentence():
    """count=0 drew nothing and failed inside matplotlib; an odd count lost an image."""
    import pytest

    from jaxmnist.apps import plot

    for count in (0, 3, 66):
        with pytest.raises(ValueError, match=rf"count must be an even number from 2 to 64 \(--batch-size\), got {count}\."):
            plot.samples(Config(), make_mnist(128, 16), count=count)
    assert len(plot.samples(Config(), make_mnist(128, 16), count=4).axes) == 4
