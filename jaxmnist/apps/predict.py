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
from typing import Sequence

import numpy as np

from jaxmnist.apps.picture import BadPicture, open_picture
from jaxmnist.apps.prepare import prepare_digit
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
    """The three most likely digits and their probabilities, most likely first."""
    order = np.argsort(-probabilities, kind="stable")[:3]
    return [(int(d), float(probabilities[d])) for d in order]


def read_digit(path: str) -> np.ndarray:
    """One picture file, or standard input for "-", as the 28x28 digit the model reads."""
    if path == "-" and sys.stdin is None:  # started with standard input closed
        raise BadPicture("cannot be read: standard input is closed")
    source = io.BytesIO(sys.stdin.buffer.read()) if path == "-" else path
    with open_picture(source) as picture:
        return prepare_digit(picture)


def main(argv: Sequence[str] | None = None) -> int:
    parser = checkpoint_parser(prog="python -m jaxmnist.predict", description="Read the digit in each picture with a "
                           "trained model; pictures are prepared as MNIST's digits were.")
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


def _wider_than_a_digit(digit: np.ndarray) -> bool:
    """Whether a prepared digit's ink box is more than WIDEST times wider than tall."""
    rows, cols = np.nonzero(digit > 51)  # a fifth of full ink: the antialiased fringe does not count
    return len(rows) > 0 and (cols.max() - cols.min() + 1) > WIDEST * (rows.max() - rows.min() + 1)


def _predict_each(args) -> int:
    from jaxmnist.apps.evaluate import load_model  # JAX loads here, after the flags

    predict = load_model(args.workdir, args.step)
    failed = False
    for path in args.images:
        try:
            digit = read_digit(path)
        except BadPicture as error:  # this file only: the others are still read
            log.error("%s %s.", "standard input" if path == "-" else path, error)
            failed = True
            continue
        likely = top_three(predict(digit[None])[0])
        doubt = ("it is wider than any MNIST digit (a line, not a digit?)" if _wider_than_a_digit(digit) else
                 "the picture may not look like MNIST's digits (one dark digit on even, light paper reads best)"
                 if likely[0][1] < UNSURE_BELOW else "")
        if args.json:
            print(json.dumps({"file": path, "digit": likely[0][0], "unsure": bool(doubt),
                              "top3": [{"digit": d, "probability": round(p, 6)} for d, p in likely]}), flush=True)
        else:
            alternatives = ", ".join(f"{d}: {100 * p:.1f}%" for d, p in likely)
            log.info("%s: %d  (%s)%s", path, likely[0][0], alternatives, f"  unsure: {doubt}" if doubt else "")
    return 1 if failed else 0
