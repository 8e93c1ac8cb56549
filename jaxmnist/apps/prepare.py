"""Any picture -> a 28x28 image made the way its dataset's own images were made.

MNIST's digits are white on black, their longer side scaled to 20 pixels with antialiasing, and
placed on a 28x28 field so that their centre of mass is at its centre. prepare_digit does the
same to a photo, a scan or a drawing, so that the model sees what it was trained on; EMNIST and
KMNIST were made the same way. prepare_article makes a Fashion-MNIST image of a product photo. Pictures are
read as a photo viewer shows them (jaxmnist.apps.picture); Pillow resamples; nothing here imports JAX.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from jaxmnist.apps.picture import BadPicture, as_shown

FIELD = 28  # the output is FIELD x FIELD
BOX = 20  # the digit's longer side, as in MNIST
INK = 0.15  # a pixel is ink when its darkness above the paper reaches this share of the darkest


class NotADigit(BadPicture):
    """The picture was read but holds no digit; the message completes a sentence that starts with
    its name ("digit.png" + " has no ink: ...")."""


def prepare_digit(picture: Image.Image | np.ndarray) -> np.ndarray:
    """A digit in any size, colour or polarity -> uint8 [28, 28], white on black, MNIST-style.

    Grey; the paper's own brightness taken away (evened out where the page is lit unevenly);
    inverted when the paper is lighter than the ink; cropped to the ink; scaled so that the
    longer side is 20 pixels (Pillow's antialiasing filter); placed on a black 28x28 square with its
    centre of mass at the centre. A picture without ink raises NotADigit.
    """
    ink = _ink(picture)
    ink = np.where(ink >= INK, ink, 0.0)  # paper texture and JPEG noise go
    rows, cols = np.nonzero(ink)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = ink.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # Pillow: (width, height)
    small = np.asarray(Image.fromarray(ink.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS))
    small = np.clip(small, 0.0, 1.0)
    return _centre_of_mass_on_field(small)


def prepare_article(picture: Image.Image | np.ndarray) -> np.ndarray:
    """A photo of one article of clothing on a plain background -> uint8 [28, 28], Fashion-MNIST-style.

    Zalando made Fashion-MNIST from product photos: trimmed to the article, the longer side scaled
    to 28 pixels, the article centred, grey levels negated (a light article on black). So here: the
    background taken away as prepare_digit takes the paper, every grey level of the article kept
    (its texture is what tells a shirt from a coat), cropped to its box, scaled into 28x28 and
    centred by its box, not by its mass."""
    article = _ink(picture, plain_background=True)
    rows, cols = np.nonzero(article >= ARTICLE_EDGE)
    article = article[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = article.shape
    scale = FIELD / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.clip(np.asarray(Image.fromarray(article.astype(np.float32), mode="F").resize(
        size, Image.Resampling.LANCZOS)), 0.0, 1.0)
    field = np.zeros((FIELD, FIELD), np.float32)
    top, left = (FIELD - small.shape[0]) // 2, (FIELD - small.shape[1]) // 2
    field[top : top + small.shape[0], left : left + small.shape[1]] = small
    return np.round(field * 255.0).astype(np.uint8)


ARTICLE_EDGE = 0.05  # of the article's brightest: fainter pixels are background noise, outside its box

# How a picture becomes one of a dataset's images, by jaxmnist.datasets' `prepare`.
PREPARE = {"ink": prepare_digit, "article": prepare_article}


def _ink(picture: Image.Image | np.ndarray, plain_background: bool = False) -> np.ndarray:
    """How far each pixel stands out from the paper (or background), 0..1 of the most: grey; the
    paper's own brightness taken away (evened out where the page is lit unevenly, unless the
    background is plain: a product photo, or a Fashion-MNIST image whose article reaches its
    edges); inverted when the paper is lighter than the ink. A picture with nothing on it raises
    NotADigit."""
    grey = _as_grey(picture)  # float [H, W], 0 black .. 1 white
    paper = float(np.median(_border(grey))) if plain_background else _paper(grey)
    ink = grey - paper if np.median(paper) < 0.5 else paper - grey  # brightness of the ink above the paper
    if np.ndim(paper) and np.median(paper) >= 0.5:  # lit unevenly: ink as a share of its paper's light,
        ink = ink / np.maximum(paper, 0.05)          # which the lamp does not change
    ink = np.clip(ink, 0.0, None)
    if ink.max() < 0.1:
        raise NotADigit("has no ink: a blank page, or a drawing too faint to see")
    return ink / ink.max()


UNEVEN = 0.1  # a border whose brightness varies more than this across the picture is lit unevenly
WORKING = 100  # pixels on the longer side at which the paper of an unevenly lit page is estimated
WIDER_THAN_A_STROKE = 21  # of those: a window no stroke fills (a digit's strokes are 5-15% of it)


def _paper(grey: np.ndarray) -> np.ndarray | float:
    """The paper's brightness under each pixel. On an evenly lit page, the median of the picture's
    border (where the digit is not). Where the light varies across the page (a lamp to one side, a
    shadow), the picture with its strokes filled in: a morphological closing (opening, for light
    ink on dark paper) over windows wider than a stroke, which keeps the edge of a shadow where it
    is, so that the darker part of the paper is not taken for ink."""
    border = _border(grey)
    if np.percentile(border, 95) - np.percentile(border, 5) < UNEVEN:
        return float(np.median(border))
    height, width = grey.shape
    scale = WORKING / max(height, width)
    small = Image.fromarray(np.round(grey * 255).astype(np.uint8)).resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)
    grow, shrink = ImageFilter.MaxFilter(WIDER_THAN_A_STROKE), ImageFilter.MinFilter(WIDER_THAN_A_STROKE)
    light_paper = np.median(border) >= 0.5
    filled = small.filter(grow).filter(shrink) if light_paper else small.filter(shrink).filter(grow)
    # One working pixel more of the darker (lighter) side, so that scaling back up, which blurs a
    # shadow's edge, never lifts the paper above its own dark side there: that would be ink.
    filled = filled.filter(ImageFilter.MinFilter(3) if light_paper else ImageFilter.MaxFilter(3))
    return np.asarray(filled.resize((width, height), Image.Resampling.BILINEAR), np.float32) / 255.0


def _border(grey: np.ndarray) -> np.ndarray:
    """The picture's outermost pixels, where its subject is not (mostly)."""
    return np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])


def _as_grey(picture: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(picture, np.ndarray):
        array = picture.astype(np.float32)
        if array.ndim == 3:  # colour: the luminance Pillow uses
            array = array[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
        return array / (255.0 if picture.dtype == np.uint8 or array.max() > 1.0 else 1.0)
    return as_shown(picture)


def _centre_of_mass_on_field(digit: np.ndarray) -> np.ndarray:
    """Paste digit [h, w] (0..1) on a black FIELD x FIELD square, its centre of mass at the centre."""
    rows, cols = np.indices(digit.shape)
    total = digit.sum()
    centre_row, centre_col = (rows * digit).sum() / total, (cols * digit).sum() / total
    top = int(round(FIELD / 2 - 0.5 - centre_row))  # pixel centres: the field's centre is at 13.5
    left = int(round(FIELD / 2 - 0.5 - centre_col))
    top = min(max(top, 0), FIELD - digit.shape[0])  # keep the whole digit on the field
    left = min(max(left, 0), FIELD - digit.shape[1])
    field = np.zeros((FIELD, FIELD), np.float32)
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return np.round(field * 255.0).astype(np.uint8)
