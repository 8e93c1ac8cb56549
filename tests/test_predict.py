"""Using the trained model: pictures of digits prepared as MNIST's were, predictions from the
command line, and an exported model that runs without jaxmnist."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxmnist import predict
from jaxmnist.config import Config
from jaxmnist.data import load_idx
from jaxmnist.prepare import NotADigit, prepare_digit
from conftest import SHARED_DATA, needs_real_mnist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from predict_check import as_a_photo, save_photos  # noqa: E402

pytestmark = needs_real_mnist


@pytest.fixture(scope="module")
def mnist():
    return load_idx(str(SHARED_DATA / "mnist-idx"))


@pytest.fixture(scope="module")
def trained(mnist, tmp_path_factory):
    """One epoch on 10,000 real training images: about 97% on the test digits, in seconds."""
    from jaxmnist.run import train_and_evaluate

    workdir = tmp_path_factory.mktemp("model")
    small = mnist._replace(train_images=mnist.train_images[:10_000], train_labels=mnist.train_labels[:10_000])
    train_and_evaluate(Config(workdir=str(workdir), epochs=1, allow_small_data=True, cache_dir=""), small)
    return workdir


def test_mnist_digits_redrawn_as_photos_come_back_close_to_the_originals(mnist, tmp_path):
    digits = mnist.test_images[:60]
    paths = save_photos(digits, tmp_path)
    for kind in ("png", "jpeg"):
        prepared = np.stack([prepare_digit(Image.open(p)) for p in paths[kind]])
        assert prepared.shape == (60, 28, 28) and prepared.dtype == np.uint8
        difference = np.abs(prepared / 255.0 - digits / 255.0).mean(axis=(1, 2))
        assert difference.mean() < 0.08 and difference.max() < 0.25, (kind, difference.mean(), difference.max())
        rows, cols = np.indices((28, 28))
        for image in prepared[:10]:  # centre of mass at the field's centre, the longer side 20 pixels
            mass = image.astype(float) / image.sum()
            assert abs((rows * mass).sum() - 13.5) < 1 and abs((cols * mass).sum() - 13.5) < 1
            ink_rows, ink_cols = np.nonzero(image)
            assert max(np.ptp(ink_rows), np.ptp(ink_cols)) + 1 in (19, 20, 21)


def test_redrawn_digits_are_predicted_as_the_originals_are(trained, mnist, tmp_path):
    from jaxmnist.evaluate import load_model

    digits = mnist.test_images[:200]
    model = load_model(trained)
    original = model(digits).argmax(axis=1)
    paths = save_photos(digits, tmp_path)
    for kind in ("png", "jpeg"):
        prepared = np.stack([prepare_digit(Image.open(p)) for p in paths[kind]])
        agreement = (model(prepared).argmax(axis=1) == original).mean()
        assert agreement >= 0.95, (kind, agreement)


def test_a_blank_page_is_not_a_digit():
    with pytest.raises(NotADigit, match="has no ink"):
        prepare_digit(Image.new("RGB", (300, 200), (250, 250, 245)))


def test_predict_reads_each_file_and_reports_bad_ones_in_one_line_each(trained, mnist, tmp_path, capsys):
    digit = mnist.test_images[0]
    photo = as_a_photo(digit, 3)
    photo.save(tmp_path / "digit.png")
    photo.save(tmp_path / "digit.jpg", quality=85)
    photo.convert("L").save(tmp_path / "digit.bmp")
    transparent = Image.new("RGBA", (200, 200), (0, 0, 0, 0))  # a drawing exported without a background
    transparent.paste(Image.new("RGBA", (112, 112), (20, 20, 20, 255)), (40, 40), Image.fromarray(digit).resize((112, 112)))
    transparent.save(tmp_path / "drawn.png")
    Image.new("RGB", (300, 200), "white").save(tmp_path / "blank.png")
    (tmp_path / "notes.txt").write_text("not an image")
    files = [tmp_path / n for n in ("digit.png", "digit.jpg", "digit.bmp", "drawn.png", "blank.png", "notes.txt", "missing.png")]
    capsys.readouterr()
    assert predict.main(["--workdir", str(trained), "--json", *map(str, files)]) == 1
    out, err = capsys.readouterr()
    results = [json.loads(line) for line in out.splitlines()]
    label = int(mnist.test_labels[0])
    assert [r["file"] for r in results] == [str(f) for f in files[:4]]
    assert all(r["digit"] == label and len(r["top3"]) == 3 for r in results)
    assert err.strip().splitlines() == [
        f"{files[4]} has no ink: a blank page, or a digit too faint to see.",
        f"{files[5]} is not an image Pillow can read (UnidentifiedImageError).",
        f"{files[6]} does not exist.",
    ]
    assert predict.main(["--workdir", str(trained), str(files[0])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{files[0]}: {label}  ({label}: ")


def test_the_exported_model_runs_with_jax_alone_and_matches(trained, mnist, tmp_path):
    from jaxmnist.evaluate import load_model
    from jaxmnist.export import export_model

    record = export_model(trained, tmp_path / "exported")
    assert record["step"] == 157 and record["jax_export"]["platforms"] == ["cpu", "cuda"]
    np.save(tmp_path / "images.npy", mnist.test_images[:7])
    snippet = f"""
import sys
import numpy as np
from jax import export
with open({str(tmp_path / "exported" / "mnist.jaxexport")!r}, "rb") as file:
    model = export.deserialize(bytearray(file.read()))
probabilities = np.asarray(model.call(np.load({str(tmp_path / "images.npy")!r})))
np.save({str(tmp_path / "probabilities.npy")!r}, probabilities)
assert "jaxmnist" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = load_model(trained)(mnist.test_images[:7])
    np.testing.assert_allclose(np.load(tmp_path / "probabilities.npy"), expected, atol=1e-5)
    saved = json.loads((tmp_path / "exported" / "export.json").read_text())
    assert saved["workdir"] == str(trained) and saved["step"] == 157


def test_onnx_export_agrees_with_jax(trained, tmp_path):
    pytest.importorskip("jax2onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from jaxmnist.export import export_model

    record = export_model(trained, tmp_path / "exported", onnx=True)
    assert record["onnx"]["max_abs_difference_vs_jax"] < 1e-5
    session = onnxruntime.InferenceSession(str(tmp_path / "exported" / "mnist.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"images": np.zeros((3, 28, 28), np.uint8)})[0].shape == (3, 10)


def test_a_pipe_and_an_oversized_picture_are_one_line_each(trained, tmp_path, capsys, monkeypatch):
    import os

    os.mkfifo(tmp_path / "pipe")
    Image.new("L", (100, 100), 255).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels is a decompression bomb now
    capsys.readouterr()
    assert predict.main(["--workdir", str(trained), str(tmp_path / "pipe"), str(tmp_path / "huge.png")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"{tmp_path / 'pipe'} is not a regular file (a pipe or a device).",
        f"{tmp_path / 'huge.png'} is too large to be a picture of one digit (more than 1,000 pixels).",
    ]


def test_export_never_overwrites_files_it_did_not_write(trained, tmp_path):
    from jaxmnist.export import ExportError, export_model

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "export.json").write_text('{"my": "notes"}')
    with pytest.raises(ExportError, match="holds files this command did not write"):
        export_model(trained, tmp_path / "mine")
    assert (tmp_path / "mine" / "export.json").read_text() == '{"my": "notes"}'
    export_model(trained, tmp_path / "ours")
    export_model(trained, tmp_path / "ours")  # its own earlier export is replaced
