"""A picture file -> the grey levels a photo viewer would show, with bounded work.

Pillow decodes; this module adds what a viewer does on top of it:
- turns the picture as the camera's EXIF orientation tag says (phones tag instead of rotating);
- scales 16-bit and float pixels from their own range (Pillow's conversion to 8 bits clips them);
- lays transparent pixels on a background the visible strokes stand out from, dark or light;
- reads a phone's MPO JPEG as its primary picture and refuses other files of several frames
  (an animation or a multi-page scan: which frame holds the digit is the user's choice).
The pixel count is checked from the header before a pixel is decoded, and what is decoded is
shrunk to the size a digit needs, so that one picture cannot take seconds and gigabytes.
jaxmnist.apps.predict and jaxmnist.apps.serve both read pictures here; nothing here imports JAX.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jaxmnist.errors import UserError

# A 48-megapixel phone photo or a page scanned at 600 dpi fits, and the decoded pixels of one
# picture stay within a few hundred megabytes. Below Pillow's own limit (89 million), so this one
# decides.
MAX_PIXELS = 50_000_000
# Larger pictures are shrunk (a box filter) to this longer side once decoded: the digit ends 20
# pixels tall anyway, and preparing a 49-megapixel picture at full size takes seconds.
WORKING_SIDE = 2048
_WIDE = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")  # Pillow's modes of more than 8 bits per pixel
TOO_LARGE = f"has more than {MAX_PIXELS:,} pixels, too many for a picture of one digit"


class BadPicture(UserError):
    """The picture cannot be read; the message completes a sentence that starts with its name
    ("digit.png" + " is not an image Pillow can read (...)")."""


def open_picture(source: str | Path | BinaryIO) -> Image.Image:
    """Open a file (or a file object) lazily: the header is read and the pixel count checked,
    the pixels are not decoded yet (as_shown does that). Close the result, or use it in `with`."""
    try:
        if isinstance(source, (str, Path)) and Path(source).exists() and not Path(source).is_dir() \
                and not Path(source).is_file():
            raise BadPicture("is not a regular file (a pipe or a device)")  # reading it could wait forever
    except OSError as error:  # a name too long, a loop of links: the path cannot even be looked up
        raise BadPicture(f"cannot be looked up ({error.strerror})") from None
    try:
        with warnings.catch_warnings():
            # Pillow warns in two lines between its limit and twice it; here that is TOO_LARGE.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(source)
    except FileNotFoundError:
        raise BadPicture("does not exist") from None
    except IsADirectoryError:
        raise BadPicture("is a folder, not an image") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise BadPicture(TOO_LARGE) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise BadPicture(f"is not an image Pillow can read ({type(error).__name__})") from None
    if picture.width * picture.height > MAX_PIXELS:
        picture.close()
        raise BadPicture(TOO_LARGE)
    return picture


def as_shown(picture: Image.Image) -> np.ndarray:
    """Decode an opened picture into float32 grey levels [H, W], 0 black .. 1 white, upright as a
    photo viewer shows it, at most WORKING_SIDE pixels on its longer side."""
    try:
        frames = picture.n_frames if getattr(picture, "is_animated", False) else 1  # GIF: finds its second frame
        picture.load()
    except (OSError, SyntaxError, ValueError) as error:  # truncated or damaged after a valid header
        raise BadPicture(f"is not an image Pillow can read ({type(error).__name__})") from None
    if frames > 1 and picture.format != "MPO":  # MPO: the first frame is the photo, the others previews
        raise BadPicture(f"has {frames} frames (an animation or a multi-page file); save the one with the digit "
                         "as a picture of its own")
    picture = ImageOps.exif_transpose(picture)
    if picture.mode in _WIDE:
        promised = 1.0 if picture.mode == "F" else 65535.0
        wide = picture if picture.mode == "F" else picture.convert("I")  # the same values, in a mode Pillow shrinks
        return _from_own_range(np.asarray(_fitted(wide), np.float32), promised)
    if picture.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in picture.info:
        # Through RGBA: a palette's or a colour key's transparency becomes an alpha channel too.
        grey_alpha = picture.convert("RGBA").convert("LA")
        return _on_contrasting_background(np.asarray(_fitted(grey_alpha), np.float32) / 255.0)
    return np.asarray(_fitted(picture.convert("L")), np.float32) / 255.0


def _fitted(picture: Image.Image) -> Image.Image:
    """picture shrunk by the smallest whole factor that brings its longer side to WORKING_SIDE."""
    factor = -(-max(picture.size) // WORKING_SIDE)
    return picture if factor == 1 else picture.reduce(factor)


def _from_own_range(pixels: np.ndarray, promised: float) -> np.ndarray:
    """16-bit or float pixels -> 0..1: by the range their kind promises (0..65535 for integers, 0..1
    for floats); a picture whose values leave it (a 32-bit scan, raw float data) by its own min..max."""
    low, high = float(pixels.min()), float(pixels.max())
    if low >= 0.0 and high <= promised:
        return pixels / promised
    return (pixels - low) / max(high - low, np.finfo(np.float32).tiny)


def _on_contrasting_background(grey_alpha: np.ndarray) -> np.ndarray:
    """[H, W, 2] grey and opacity, 0..1 -> grey [H, W] laid on black or white, whichever the
    visible pixels (weighted by their opacity) stand out from: the ink is what differs from the
    transparent background, dark strokes or light ones."""
    grey, alpha = grey_alpha[..., 0], grey_alpha[..., 1]
    visible = float(alpha.sum())
    background = 1.0 if visible == 0.0 or float((grey * alpha).sum()) / visible < 0.5 else 0.0
    return grey * alpha + background * (1.0 - alpha)
