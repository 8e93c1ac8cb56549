import numpy as np
import pytest
from conftest import SHARED_DATA, make_mnist, needs_real_mnist, write_idx

from jaxmnist import data


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_read_back_exactly(tmp_path, compress):
    original = make_mnist(50, 20)
    loaded = data.load_idx(str(write_idx(tmp_path, original, compress)))
    for got, expected in zip(loaded, original):
        np.testing.assert_array_equal(got, expected)
    assert loaded.train_images.dtype == np.uint8 and loaded.train_labels.dtype == np.int32


def test_a_truncated_idx_file_is_an_error_not_a_short_dataset(tmp_path):
    folder = write_idx(tmp_path, make_mnist(50, 20), compress=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(data.DataError, match="is damaged: its header promises"):
        data.load_idx(str(folder))


def test_a_wrong_magic_number_is_an_error(tmp_path):
    folder = write_idx(tmp_path, make_mnist(50, 20), compress=False)
    path = folder / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + path.read_bytes()[4:])
    with pytest.raises(data.DataError, match="is not an MNIST IDX file"):
        data.load_idx(str(folder))


def test_a_missing_idx_file_is_named(tmp_path):
    folder = write_idx(tmp_path, make_mnist(50, 20))
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match="has no t10k-images-idx3-ubyte"):
        data.load_idx(str(folder))


def test_raw_and_gzipped_files_that_differ_are_refused_and_equal_ones_read(tmp_path):
    write_idx(tmp_path, make_mnist(20, 10), compress=True)
    write_idx(tmp_path, make_mnist(20, 10), compress=False)  # the same images, both ways: either will do
    assert data.load_idx(str(tmp_path)).train_images.shape == (20, 28, 28)
    write_idx(tmp_path, make_mnist(20, 10, seed=1), compress=False)  # now the raw files are other images
    with pytest.raises(data.DataError, match=r"holds both train-images-idx3-ubyte and train-images-idx3-ubyte.gz, "
                                             r"and they differ; remove the one that is not your data\."):
        data.load_idx(str(tmp_path))


def test_tfds_without_data_or_network_fails_at_once_with_directions(tmp_path):
    with pytest.raises(data.DataError) as error:
        data.load_tfds(str(tmp_path), download_host=("127.0.0.1", 9))  # nothing listens on port 9
    assert str(error.value).startswith(f"MNIST is not in {tmp_path}")
    assert "--data-dir" in str(error.value) and "--idx-dir" in str(error.value)


def test_a_data_dir_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load(data_dir=str(tmp_path / "nowhere"))


def test_tfds_source_reads_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=40):
        dataset = data.load_tfds()
    assert dataset.train_images.shape == (40, 28, 28) and dataset.train_images.dtype == np.uint8
    assert dataset.test_labels.shape == (40,) and dataset.test_labels.max() <= 9


def test_the_decoded_cache_is_keyed_by_the_tfds_files(tmp_path):
    version = tmp_path / "tfds" / "mnist" / "3.0.1"
    version.mkdir(parents=True)
    (version / "dataset_info.json").write_text("{}")
    (version / "mnist-train.tfrecord-00000-of-00001").write_bytes(b"x" * 10)
    first = data._cache_path(str(tmp_path / "cache"), str(tmp_path / "tfds"))
    assert first.parent == tmp_path / "cache" and first.name.startswith("mnist-")
    assert data._cache_path(str(tmp_path / "cache"), str(tmp_path / "tfds")) == first
    (version / "mnist-train.tfrecord-00000-of-00001").write_bytes(b"y" * 11)  # re-prepared
    assert data._cache_path(str(tmp_path / "cache"), str(tmp_path / "tfds")) != first
    assert data._cache_path(str(tmp_path / "cache"), str(tmp_path / "empty")) is None  # not prepared


@needs_real_mnist
def test_tfds_and_idx_give_the_same_images_and_labels_as_sets(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    tfds_dir = str(SHARED_DATA / "tensorflow_datasets")
    from_tfds = data.load(data_dir=tfds_dir, cache_dir=str(tmp_path))
    (cache,) = tmp_path.glob("mnist-*.npz")
    from_cache = data.load(data_dir=tfds_dir, cache_dir=str(tmp_path))  # read back without TensorFlow
    for got, expected in zip(from_cache, from_tfds):
        np.testing.assert_array_equal(got, expected)
    cache.write_bytes(b"damaged")  # a damaged cache is decoded again, not trusted
    np.testing.assert_array_equal(data.load(data_dir=tfds_dir, cache_dir=str(tmp_path)).test_labels, from_tfds.test_labels)
    from_idx = data.load(idx_dir=str(SHARED_DATA / "mnist-idx"))
    for images, labels in ((0, 1), (2, 3)):
        # TFDS stores its own shuffled order: compare (label, image bytes) as sorted multisets.
        as_set = lambda d: sorted(bytes([l]) + im.tobytes() for im, l in zip(d[images], d[labels]))  # noqa: E731
        assert as_set(from_tfds) == as_set(from_idx)
    assert len(from_idx.train_images) == 60_000 and len(from_idx.test_images) == 10_000
    assert np.bincount(from_idx.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
