"""`python -m jaxmnist.predict`: read the digit in each picture with a trained model.

    python -m jaxmnist.predict --workdir runs/mnist my-digit.png photo.jpg
    python -m jaxmnist.predict --workdir runs/mnist --json *.png

    some-camera-app | python -m jaxmnist.predict --workdir runs/mnist -

Each picture (PNG, JPEG, BMP, TIFF, ...; any size up to 50 million pixels, colour or grey, 8 or
16 bits, dark ink on light paper or the reverse) is read as a photo viewer shows it
(jaxmnist.apps.picture), prepared as MNIST's digits were (jaxmnist.apps.prepare), then classified. `-` reads
one picture from standard input. A picture that cannot be read is one line on stderr; the others
are still predicted, and the exit status is 1.
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from jaxmnist.apps.picture import BadPicture, open_picture
from jaxmnist.apps.prepare import PREPARE, prepare_digit
from jaxmnist.datasets import DATASETS, Dataset
from jaxmnist.config import checkpoint_parser
from jaxmnist.runtime.reporting import log
from jaxmnist.apps.console import run_command, setup_console


# Below this probability for its best digit the model is guessing more than reading: say so, since
# a photo unlike MNIST's digits (uneven light, a thick pen, two digits) is read wrong with no word.
UNSURE_BELOW = 0.5
# No digit of MNIST's 70,000 has an ink box more than 2.5 times wider than tall: a picture prepared
# into one (a line, a strip of scan) is not a digit, however sure the model is of its answer.
WIDEST = 3.0


def top_three(probabilities: np.ndarray) -> list[tuple[int, float]]:
    """The three most likely classes (by number) and their probabilities, most likely first."""
    order = np.argsort(-probabilities, kind="stable")[:3]
    return [(int(d), float(probabilities[d])) for d in order]


def read_digit(path: str, prepare: Callable[[Image.Image], np.ndarray] = prepare_digit) -> np.ndarray:
    """One picture file, or standard input for "-", as the 28x28 image the model reads, made by
    prepare (the run's dataset's way: apps/prepare.py)."""
    if path == "-" and sys.stdin is None:  # started with standard input closed
        raise BadPicture("cannot be read: standard input is closed")
    source = io.BytesIO(sys.stdin.buffer.read()) if path == "-" else path
    with open_picture(source) as picture:
        return prepare(picture)


def main(argv: Sequence[str] | None = None) -> int:
    parser = checkpoint_parser(prog="python -m jaxmnist.predict", description="Read the digit (or letter, or article "
                           "of clothing: the run's dataset's classes) in each picture with a trained model; pictures "
                           "are prepared as the dataset's images were.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="picture files of one digit each; - reads one "
                        "from standard input; a file whose name starts with - goes after -- (-- -lead.png)")
    parser.add_argument("--json", action="store_true", help="one JSON object per picture instead of a line")
    argv = sys.argv[1:] if argv is None else list(argv)
    before_dashes = argv[:argv.index("--")] if "--" in argv else argv
    dashed = next((a for a in before_dashes if a.startswith("-") and a != "-" and not a.startswith("--")
                   and os.path.exists(a)), None)
    if dashed is not None:  # argparse would take it for a flag and say only that IMAGE is missing
        parser.error(f"{dashed} is a file whose name starts with -: put it after --, as in "
                     f"jaxmnist predict --workdir DIR -- {dashed}")
    args = parser.parse_args(argv)
    setup_console()
    return run_command(lambda: _predict_each(args))


def _wider_than_a_digit(digit: np.ndarray) -> bool:  # MNIST's rule; EMNIST's and KMNIST's shapes are alike
    """Whether a prepared digit's ink box is more than WIDEST times wider than tall."""
    rows, cols = np.nonzero(digit > 51)  # a fifth of full ink: the antialiased fringe does not count
    return len(rows) > 0 and (cols.max() - cols.min() + 1) > WIDEST * (rows.max() - rows.min() + 1)


def _trained(workdir: str, step: str) -> tuple[Callable[..., np.ndarray], Dataset]:
    """The checkpoint's predict function (evaluate.load_model's), and the dataset its run learned."""
    from jaxmnist.apps.evaluate import dataset_name, predictor, restore_model  # JAX loads here, after the flags

    restored = restore_model(workdir, step)
    return predictor(restored.model, restored.variables), DATASETS[dataset_name(restored.meta)]


def _predict_each(args) -> int:
    predict, dataset = _trained(args.workdir, args.step)
    names, prepare = dataset.classes, PREPARE[dataset.prepare]
    failed = False
    for path in args.images:
        try:
            image = read_digit(path, prepare)
        except BadPicture as error:  # this file only: the others are still read
            log.error("%s %s.", "standard input" if path == "-" else path, error)
            failed = True
            continue
        likely = top_three(predict(image[None])[0])
        doubt = (f"it is wider than any {dataset.title} {dataset.item} (a line, not a {dataset.item}?)" if dataset.prepare == "ink" and
                 _wider_than_a_digit(image) else
                 f"the picture may not look like {dataset.title}'s images ({LOOKS_BEST[dataset.prepare]})"
                 if likely[0][1] < UNSURE_BELOW else "")
        if args.json:
            answer = {"file": path, "class": names[likely[0][0]], "label": likely[0][0], "unsure": bool(doubt),
                      "top3": [{"class": names[c], "label": c, "probability": round(p, 6)} for c, p in likely]}
            if dataset.item == "digit":  # the field scripts read before there were other datasets
                answer |= {"digit": likely[0][0]}
            print(json.dumps(answer), flush=True)
        else:
            alternatives = ", ".join(f"{names[c]}: {100 * p:.1f}%" for c, p in likely)
            log.info("%s: %s  (%s)%s", path, names[likely[0][0]], alternatives, f"  unsure: {doubt}" if doubt else "")
    return 1 if failed else 0


LOOKS_BEST = {"ink": "one dark stroke drawing on even, light paper reads best",
              "article": "one article alone on a plain, even background reads best"}
