"""The datasets a run can train on (--dataset): MNIST and the datasets made in its image, by TFDS name.

A table only, with no files and no JAX, so that every layer reads it: the flags (its names), the
data layer (what to read and check), the models (how many classes), and the commands (what to call
each class, and how to prepare a picture for predict). Adding a dataset of 28x28 grey images is one
entry here.
"""

from __future__ import annotations

from typing import NamedTuple

DIGITS = tuple("0123456789")
LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class Dataset(NamedTuple):
    title: str  # as the console and the figures name it
    classes: tuple[str, ...]  # each label's name, in label order
    train_size: int  # images in the training split
    test_size: int
    item: str  # what one image shows, for sentences: "digit", "article of clothing"
    prepare: str  # how predict makes a picture into one of its images: "ink" or "article" (apps/prepare.py)
    transposed: bool = False  # EMNIST's files store each image transposed
    first_label: int = 0  # EMNIST Letters numbers its classes from 1


DATASETS: dict[str, Dataset] = {
    "mnist": Dataset("MNIST", DIGITS, 60_000, 10_000, "digit", "ink"),
    "fashion_mnist": Dataset("Fashion-MNIST", ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                               "Sneaker", "Bag", "Ankle boot"), 60_000, 10_000, "article of clothing",
                             "article"),
    # Kuzushiji-MNIST: ten cursive Japanese hiragana, named by their sound.
    "kmnist": Dataset("Kuzushiji-MNIST", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"), 60_000, 10_000,
                      "character", "ink"),
    "emnist/digits": Dataset("EMNIST Digits", DIGITS, 240_000, 40_000, "digit", "ink", transposed=True),
    # Upper and lower case of each letter are one class.
    "emnist/letters": Dataset("EMNIST Letters", LETTERS, 124_800, 20_800, "letter", "ink", transposed=True,
                              first_label=1),
    # The 47 classes of EMNIST Balanced: the lower-case letters that differ from their capitals.
    "emnist/balanced": Dataset("EMNIST Balanced", DIGITS + LETTERS + tuple("abdefghnqrt"), 112_800, 18_800,
                               "character", "ink", transposed=True),
}


# The fingerprints (data.describe) of the published files this project has read: a run given one
# dataset's files under another's name is refused, not trained with the wrong class names.
KNOWN_FINGERPRINTS = {
    "bab833be44432887": "mnist",  # MNIST's four IDX files
    "bd58c4704eea5663": "mnist",  # TFDS mnist 3.0.1 (the same images, in TFDS's order)
    "09627107dde20800": "fashion_mnist",  # Fashion-MNIST's four IDX files (Debian's dataset-fashion-mnist)
}


def a_or_an(item: str) -> str:
    """ "a digit", "an article of clothing": an item for a sentence."""
    return f"{'an' if item[0] in 'aeiou' else 'a'} {item}"


def num_classes(name: str) -> int:
    """How many outputs a model of this dataset has; runs recorded before --dataset are MNIST's."""
    return len(DATASETS[name].classes)
