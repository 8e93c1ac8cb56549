"""Hold `jaxmnist.apps.predict` to pictures as people really have them: one table row per file format.

    python scripts/formats_check.py --workdir runs/mnist --idx-dir ../shared/data/mnist-idx --count 300

Each of the first COUNT test digits is drawn as a person's picture (scripts/predict_check.py's
as_a_photo: 4x larger, dark on light, off-centre) and saved in each way below; the files go
through the command line, `python -m jaxmnist.predict --json`, as a user's would. Prints, per
format, how many were read as their label, how many were refused (one line on stderr each) and
the share correct. The command runs in a scratch folder, so PYTHONPATH says which checkout is
measured (PYTHONPATH=../main for another).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from predict_check import as_a_photo

ORIENTATION = 0x0112  # the EXIF tag a phone writes instead of turning the pixels
# The turn that stores an upright picture under each tag (a viewer applies the inverse).
STORED_TURN = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def save_with_orientation(photo: Image.Image, path: Path, tag: int) -> None:
    """A JPEG whose pixels are turned and whose EXIF tag says how to turn them back upright."""
    exif = Image.Exif()
    exif[ORIENTATION] = tag
    photo.transpose(STORED_TURN[tag]).save(path, "JPEG", quality=90, exif=exif)


def save_16_bit(photo: Image.Image, path: Path) -> None:
    """A 16-bit grey PNG (I;16), as a scanner writes: the 8-bit levels spread over 0..65535."""
    Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257).save(path, "PNG")


def save_float(photo: Image.Image, path: Path) -> None:
    """A 32-bit float TIFF in 0..1."""
    Image.fromarray(np.asarray(photo.convert("L"), np.float32) / 255.0).save(path, "TIFF")


def save_light_on_transparent(photo: Image.Image, path: Path) -> None:
    """White ink on a transparent background: the ink is in the opacity alone."""
    ink = 255 - np.asarray(photo.convert("L"))
    rgba = np.dstack([np.full_like(ink, 255)] * 3 + [ink])
    Image.fromarray(rgba, "RGBA").save(path, "PNG")


def save_dark_on_transparent(photo: Image.Image, path: Path) -> None:
    """Black ink on a transparent background, as drawing programs export."""
    ink = 255 - np.asarray(photo.convert("L"))
    rgba = np.dstack([np.zeros_like(ink)] * 3 + [ink])
    Image.fromarray(rgba, "RGBA").save(path, "PNG")


FORMATS: dict[str, tuple[str, Callable[[Image.Image, Path], None]]] = {
    "upright JPEG": (".jpg", lambda photo, path: photo.save(path, "JPEG", quality=90)),
    "EXIF orientation 6 (JPEG)": (".jpg", lambda photo, path: save_with_orientation(photo, path, 6)),
    "EXIF orientation 3 (JPEG)": (".jpg", lambda photo, path: save_with_orientation(photo, path, 3)),
    "EXIF orientation 8 (JPEG)": (".jpg", lambda photo, path: save_with_orientation(photo, path, 8)),
    "16-bit grey PNG": (".png", save_16_bit),
    "float TIFF, 0..1": (".tif", save_float),
    "white ink on transparent PNG": (".png", save_light_on_transparent),
    "black ink on transparent PNG": (".png", save_dark_on_transparent),
}


def check(workdir: str, digits: np.ndarray, labels: np.ndarray, folder: Path) -> list[dict]:
    rows = []
    for number, (name, (suffix, save)) in enumerate(FORMATS.items()):
        paths = [folder / f"{number}-{i}{suffix}" for i in range(len(digits))]
        for i, (digit, path) in enumerate(zip(digits, paths)):
            save(as_a_photo(digit, i), path)
        result = subprocess.run([sys.executable, "-m", "jaxmnist.predict", "--workdir", workdir, "--json",
                                 *map(str, paths)], cwd=folder, capture_output=True, text=True, check=False)
        read = {json.loads(line)["file"]: json.loads(line)["digit"] for line in result.stdout.splitlines()}
        correct = sum(read.get(str(path)) == int(label) for path, label in zip(paths, labels))
        rows.append({"format": name, "images": len(paths), "correct": correct, "refused": len(paths) - len(read),
                     "accuracy": 100.0 * correct / len(paths)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--idx-dir", required=True, help="the MNIST IDX files (the test digits come from here)")
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    from jaxmnist.data import load_idx

    mnist = load_idx(args.idx_dir)
    with tempfile.TemporaryDirectory(prefix="jaxmnist-formats-") as folder:
        rows = check(args.workdir, mnist.test_images[: args.count], mnist.test_labels[: args.count], Path(folder))
    print("| format | correct | refused | accuracy |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['format']} | {row['correct']}/{row['images']} | {row['refused']} | {row['accuracy']:.1f}% |")


if __name__ == "__main__":
    main()
