"""The edge to the data files: TFDS or raw IDX files in, uint8 numpy arrays out.

MNIST by default, or any dataset of jaxmnist/datasets.py (--dataset): Fashion-MNIST, KMNIST,
EMNIST; each read, put upright and checked against its own sizes and classes. This is the only
module that imports tensorflow / tensorflow_datasets, and only when the TFDS source is used, so
the IDX path (and a GPU machine without TensorFlow) never pays for it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from jaxmnist.datasets import DATASETS, KNOWN_FINGERPRINTS
from jaxmnist.errors import UserError
from jaxmnist.files import replace_file

if TYPE_CHECKING:
    from jaxmnist.config import Config

IMAGE_SIZE = 28
# Where TFDS fetches the datasets from; probed before a download so that no network fails in seconds.
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)


class DataError(UserError):
    """The dataset cannot be found or read; the message is one sentence for the user."""


class MNIST(NamedTuple):
    """A whole MNIST-shaped dataset in host memory: images uint8 [N, 28, 28] upright, labels int32 [N]
    from 0."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load(data_dir: str | None = None, idx_dir: str | None = None, cache_dir: str = "", name: str = "mnist") -> MNIST:
    """Load the dataset name (a key of DATASETS) from IDX files when idx_dir is given, else through
    TFDS (downloading if needed); upright, labels from 0, checked against its classes.

    With a cache_dir, what TFDS decoded is kept there as one .npz, keyed by the TFDS files it
    came from: importing TensorFlow and decoding 70,000 PNGs takes about 10 s, reading the
    .npz a tenth of a second. The IDX files are fast to read and never cached.
    """
    if idx_dir is not None:
        dataset = _as_stored(load_idx(idx_dir, name), name)
    else:
        cached = _cache_path(cache_dir, data_dir, name) if cache_dir else None
        dataset = _read_cache(cached) if cached is not None and cached.is_file() else None
        if dataset is None:
            dataset = _as_stored(load_tfds(data_dir, name=name), name)
            if cached is not None:
                _write_cache(cached, dataset)
    check_arrays(dataset, name)
    return dataset


def _as_stored(dataset: MNIST, name: str) -> MNIST:
    """Both sources store EMNIST's images transposed and its letters from label 1: put them upright,
    from 0, as every other dataset is."""
    info = DATASETS[name]
    images = (lambda x: np.ascontiguousarray(x.transpose(0, 2, 1))) if info.transposed else (lambda x: x)
    return MNIST(images(dataset.train_images), dataset.train_labels - info.first_label,
                 images(dataset.test_images), dataset.test_labels - info.first_label)


# --- the decoded-TFDS cache --------------------------------------------------------------------


def _cache_path(cache_dir: str, data_dir: str | None, name: str = "mnist") -> Path | None:
    """<cache_dir>/<name>-<fingerprint>.npz for the prepared TFDS files, or None if there are none.

    The fingerprint covers every file's path, size and modification time, so re-preparing the
    dataset (or pointing at another copy) never reads a stale cache. No TensorFlow needed.
    """
    root = Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser().absolute()
    files = sorted(p for p in (root / name).rglob("*") if p.is_file())
    if not any(p.name == "dataset_info.json" for p in files):
        return None  # not prepared: TFDS will download it, or explain why it cannot
    fingerprint = hashlib.sha256("\n".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files).encode())
    return Path(cache_dir).expanduser() / f"{name.replace('/', '-')}-{fingerprint.hexdigest()[:16]}.npz"


def _read_cache(path: Path) -> MNIST | None:
    try:
        with np.load(path) as arrays:
            return MNIST(**{name: arrays[name] for name in MNIST._fields})
    except (OSError, ValueError, KeyError, EOFError):  # damaged or older: decode from TFDS again
        return None


def _write_cache(path: Path, dataset: MNIST) -> None:
    """Write atomically (replace_file): a kill mid-write leaves no half file to read next time."""
    arrays = io.BytesIO()
    np.savez(arrays, **dataset._asdict())
    with contextlib.suppress(OSError, UserError):  # a cache that cannot be written only costs time
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, arrays.getvalue())


# --- IDX files ---------------------------------------------------------------------------------

_IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte", 0x803),
    "train_labels": ("train-labels-idx1-ubyte", 0x801),
    "test_images": ("t10k-images-idx3-ubyte", 0x803),
    "test_labels": ("t10k-labels-idx1-ubyte", 0x801),
}


def load_idx(idx_dir: str, name: str = "mnist") -> MNIST:
    """Read a dataset's four IDX files (gzipped or not) from idx_dir, checking every header; as
    stored (EMNIST transposed)."""
    folder, title = Path(idx_dir), DATASETS[name].title
    if not folder.is_dir():
        raise DataError(f"--idx-dir {idx_dir} is not a directory; it should hold the four {title} IDX files.")
    arrays = {field: _read_idx(folder, stem, magic, title) for field, (stem, magic) in _IDX_FILES.items()}
    arrays["train_labels"] = arrays["train_labels"].astype(np.int32)
    arrays["test_labels"] = arrays["test_labels"].astype(np.int32)
    return MNIST(**arrays)


def _read_idx(folder: Path, stem: str, magic: int, title: str) -> np.ndarray:
    found = [p for p in (folder / stem, folder / f"{stem}.gz") if p.exists()]
    if not found:
        raise DataError(f"{folder} has no {stem} (or {stem}.gz); it should hold the four {title} IDX files.")
    odd = next((p for p in found if not p.is_file()), None)
    if odd is not None:  # a pipe or a device would be read forever, or block
        raise DataError(f"{odd} is not a regular file (a folder, a pipe or a device); it should be an MNIST IDX file.")
    arrays = [_read_idx_file(path, magic) for path in found]
    if len(arrays) == 2 and not np.array_equal(*arrays):  # which one the user meant cannot be guessed
        raise DataError(f"{folder} holds both {stem} and {stem}.gz, and they differ; remove the one that is not "
                        "your data.")
    return arrays[0]


def _read_idx_file(path: Path, magic: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path} cannot be read as a gzip file ({error}).") from None
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path} is not an MNIST IDX file (expected magic number {magic:#010x}).")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path} is damaged: its header promises {expected} bytes but it has {len(raw)}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


# --- TFDS --------------------------------------------------------------------------------------


def load_tfds(data_dir: str | None = None, download_host: tuple[str, int] = _DOWNLOAD_HOST,
              name: str = "mnist") -> MNIST:
    """Load a dataset through TFDS from data_dir (or TFDS's default), downloading only if it can;
    as stored (EMNIST transposed).

    download_host is probed first, because TFDS itself retries a download for minutes offline.
    """
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"--data-dir {data_dir} does not exist; give a TFDS data directory or use --idx-dir.")
    tfds = _import_tfds()
    builder = tfds.builder(name, data_dir=data_dir)
    try:
        return _read_splits(builder)
    except AssertionError:  # TFDS's way of saying "not prepared in this data_dir"
        pass
    if not _can_reach(download_host):
        raise DataError(
            f"{DATASETS[name].title} is not in {builder.data_dir} and cannot be downloaded (no network): point "
            f"--data-dir at a prepared TFDS data directory or --idx-dir at the four {DATASETS[name].title} IDX files."
        )
    builder.download_and_prepare()
    return _read_splits(builder)


def _read_splits(builder) -> MNIST:
    return MNIST(*_read_split(builder, "train"), *_read_split(builder, "test"))


def _import_tfds():
    """Import TensorFlow with its GPUs hidden, so that it never takes memory JAX needs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences a startup banner; TF only reads files here
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataError(
            f"The TFDS source needs tensorflow-cpu and tensorflow-datasets ({error}); "
            "install them or use --idx-dir."
        ) from None
    tf.config.set_visible_devices([], "GPU")
    return tfds


def _read_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    # Batches of 10,000 images, concatenated: fast, and independent of the split's size.
    # (batch_size=-1 would read it in one call but aborts the process under tfds.testing.mock_data.)
    dataset = builder.as_dataset(split=split, batch_size=10_000, shuffle_files=False)
    batches = list(dataset.as_numpy_iterator())
    images = np.concatenate([b["image"] for b in batches]).astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    return images, np.concatenate([b["label"] for b in batches]).astype(np.int32)


def _can_reach(address: tuple[str, int], timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def check_arrays(dataset: MNIST, name: str = "mnist") -> None:
    """Refuse anything that is not shaped like the dataset: images [N, 28, 28], labels of its classes."""
    info = DATASETS[name]
    last = len(info.classes) - 1
    for split, images, labels in (
        ("train", dataset.train_images, dataset.train_labels),
        ("test", dataset.test_images, dataset.test_labels),
    ):
        if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(images) != len(labels):
            raise DataError(f"The {split} split has images {images.shape} and labels {labels.shape}; expected [N, 28, 28] and [N].")
        if len(labels) and (labels.min() < 0 or labels.max() > last):
            stored = f"{info.first_label}..{last + info.first_label}"
            raise DataError(f"The {split} split has labels outside {stored}, the {len(info.classes)} classes of "
                            f"{info.title}: are these {info.title}'s files (--dataset)?")


def check_sizes(dataset: MNIST, allow_small: bool = False, validation: int = 0, batch_size: int = 1,
                name: str = "mnist") -> None:
    """Each split must have the dataset's size (a short or swapped dataset must never train
    silently); allow_small accepts fewer images, but never an empty split. What --validation leaves
    to train on must fill a batch."""
    info = DATASETS[name]
    for split, count, expected in (("train", len(dataset.train_labels), info.train_size),
                                   ("test", len(dataset.test_labels), info.test_size)):
        if count == 0:
            raise DataError(f"The {split} split has no images.")
        if count != expected and not (allow_small and count < expected):
            hint = " (--allow-small-data accepts a smaller one)" if count < expected else ""
            raise DataError(f"The {split} split has {count:,} images, not {info.title}'s {expected:,}{hint}.")
    num_train = len(dataset.train_images) - validation
    if validation and num_train < batch_size:
        raise DataError(f"--validation {validation} leaves {max(num_train, 0):,} of the {len(dataset.train_images):,} "
                        f"training images to train on, fewer than one batch (--batch-size {batch_size}).")
    if batch_size > num_train:
        raise DataError(f"--batch-size {batch_size} is larger than the {num_train:,} training images.")


def split_validation(dataset: MNIST, validation: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(images, labels) to train on, and (images, labels) held out: --validation N holds out the
    training split's last N images, the same whatever the seed. The data's fingerprint stays the
    whole split's: the split is the recipe's, not the data's."""
    split = len(dataset.train_images) - validation
    return ((dataset.train_images[:split], dataset.train_labels[:split]),
            (dataset.train_images[split:], dataset.train_labels[split:]))


class Source(NamedTuple):
    """Which data a run trained on: where it came from, and a fingerprint of the arrays themselves."""

    name: str  # e.g. "IDX files in /data/mnist" or "TFDS mnist in ~/tensorflow_datasets"
    fingerprint: str  # sha256 of the four arrays, 16 hex digits: the same images in the same order


def source_name(data_dir: str | None, idx_dir: str | None, name: str = "mnist") -> str:
    """Where the flags say the data are: "IDX files in /data/mnist" or "TFDS mnist in ~/tensorflow_datasets"."""
    if idx_dir is not None:
        return f"IDX files in {Path(idx_dir).absolute()}"
    return f"TFDS {name} in {data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'}"


def check_named_right(source: Source, name: str) -> None:
    """Refuse the published files of one dataset read under another's name (Fashion-MNIST's files
    given as MNIST's trained to 87% with digits' names): their fingerprint says which they are."""
    known = KNOWN_FINGERPRINTS.get(source.fingerprint)
    if known is not None and known != name:
        raise DataError(f"{source.name} holds {DATASETS[known].title}'s images (fingerprint {source.fingerprint}), "
                        f"not {DATASETS[name].title}'s: give --dataset {known}.")


def describe(dataset: MNIST, data_dir: str | None, idx_dir: str | None, name: str = "mnist") -> Source:
    """The Source record of a loaded dataset (hashing 55 MB takes about 0.1 s)."""
    digest = hashlib.sha256()
    for array in dataset:
        digest.update(np.ascontiguousarray(array).tobytes())
    return Source(source_name(data_dir, idx_dir, name), digest.hexdigest()[:16])


def for_run(config: Config, given: MNIST | None = None) -> tuple[MNIST, Source]:
    """A run's data and their Source, every check passed: read as its flags say (a first TFDS read
    decodes 70,000 PNGs, about 10 s: said, not silent), or the arrays given from Python, named so."""
    if given is None:
        where = source_name(config.data_dir, config.idx_dir, config.dataset)
        slow = threading.Timer(2.0, logging.getLogger("jaxmnist").info, (f"Loading {where} ...",))
        slow.start()
        try:
            dataset = load(config.data_dir, config.idx_dir, config.cache_dir, config.dataset)
        finally:
            slow.cancel()
    else:
        dataset = given
        check_arrays(dataset, config.dataset)
    check_sizes(dataset, config.allow_small_data, config.validation, config.batch_size, config.dataset)
    source = describe(dataset, config.data_dir, config.idx_dir, config.dataset)
    if given is not None:
        source = source._replace(name=f"{DATASETS[config.dataset].title} arrays given in Python")
    check_named_right(source, config.dataset)
    return dataset, source
