"""Hold `jaxmnist.apps.predict` to MNIST itself: test digits redrawn as a person's picture would be.

    python scripts/predict_check.py --workdir runs/mnist --idx-dir ../shared/data/mnist-idx --count 1000

Each of the first COUNT test digits is drawn 4 times larger, as dark ink on light paper, off-centre
on a 400x300 canvas, and saved as PNG and as JPEG (quality 85); jaxmnist.apps.prepare brings each file
back to 28x28. Prints the model's accuracy on the untouched digits and on each kind of file, how
often the predictions agree, and how far the prepared pixels are from the originals.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CANVAS = (400, 300)  # width, height


def as_a_photo(digit: np.ndarray, index: int) -> Image.Image:
    """An MNIST digit [28, 28] as a person's picture: 4x larger, dark on light, off-centre on a
    large canvas (the position moves with index)."""
    large = Image.fromarray(255 - digit).resize((112, 112), Image.Resampling.BILINEAR)
    canvas = Image.new("L", CANVAS, 255)
    canvas.paste(large, (20 + (index * 37) % 250, 15 + (index * 53) % 160))
    return canvas.convert("RGB")


def save_photos(digits: np.ndarray, folder: Path) -> dict[str, list[Path]]:
    """Every digit as folder/<i>.png and folder/<i>.jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, list[Path]] = {"png": [], "jpeg": []}
    for i, digit in enumerate(digits):
        photo = as_a_photo(digit, i)
        photo.save(folder / f"{i}.png")
        photo.save(folder / f"{i}.jpg", quality=85)
        paths["png"].append(folder / f"{i}.png")
        paths["jpeg"].append(folder / f"{i}.jpg")
    return paths


def check(workdir: str, digits: np.ndarray, labels: np.ndarray, folder: Path) -> dict:
    from jaxmnist.apps.evaluate import load_model
    from jaxmnist.apps.predict import read_digit

    predict = load_model(workdir)
    original = predict(digits).argmax(axis=1)
    result = {"images": len(digits), "accuracy_untouched": float((original == labels).mean() * 100)}
    for kind, paths in save_photos(digits, folder).items():
        prepared = np.stack([read_digit(str(p)) for p in paths])
        predicted = predict(prepared).argmax(axis=1)
        result[f"accuracy_{kind}"] = float((predicted == labels).mean() * 100)
        result[f"agreement_{kind}"] = float((predicted == original).mean() * 100)
        result[f"mean_abs_pixel_difference_{kind}"] = float(np.abs(prepared / 255.0 - digits / 255.0).mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/mnist")
    parser.add_argument("--idx-dir", required=True)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    from jaxmnist.data import load_idx

    dataset = load_idx(args.idx_dir)
    with tempfile.TemporaryDirectory() as tmp:
        result = check(args.workdir, dataset.test_images[: args.count], dataset.test_labels[: args.count], Path(tmp))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
