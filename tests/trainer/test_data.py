"""Datasets: digits offline, torchvision's formats read from tiny files written here, and clear errors.

The Fashion-MNIST and CIFAR-10 tests write a few images in the real on-disk formats (idx ubyte
files; pickled CIFAR batches) under a temporary ``data_dir``, so the loaders run through
torchvision's own readers without the network.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from PIL import Image
from torchvision.datasets import CIFAR10, FashionMNIST

from trainer.data import Dataset, dataset_names, load_dataset, split_indices, take_indices
from trainer.errors import TrainerError

FILE_DATASETS = ["fashion-mnist", "cifar10", "imagefolder"]


def assert_well_formed(data: Dataset, shape: tuple[int, int, int]) -> None:
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert x.shape[1:] == shape
        assert len(x) == len(y) > 0
        assert 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
        assert 0 <= int(y.min()) <= int(y.max()) < data.num_classes
    assert data.input_shape == shape


# --- digits -------------------------------------------------------------------------------------


def test_registered_names() -> None:
    assert {"cifar10", "digits", "fashion-mnist", "imagefolder"} <= set(dataset_names())
    assert dataset_names() == sorted(dataset_names())


def test_digits(digits: Dataset) -> None:
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert_well_formed(digits, (1, 8, 8))
    assert len(digits.x_test) == round(1797 * 0.2)
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert float(digits.x_train.max()) == 1.0  # scaled from 0–16


def test_digits_split_is_deterministic_by_seed(digits: Dataset) -> None:
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.x_train, digits.x_train)
    assert torch.equal(again.y_test, digits.y_test)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.y_test, digits.y_test)


def test_digits_test_fraction() -> None:
    data = load_dataset("digits", test_fraction=0.5)
    assert len(data.x_test) == round(1797 * 0.5)


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_split_indices_partition(seed: int) -> None:
    train, test = split_indices(100, 0.25, seed)
    assert len(test) == 25
    assert set(train).isdisjoint(test)
    assert sorted([*train, *test]) == list(range(100))


def test_limit_digits() -> None:
    data = load_dataset("digits", limit=100, test_fraction=0.2)
    assert (len(data.x_train), len(data.x_test)) == (80, 20)
    assert torch.equal(load_dataset("digits", limit=100).x_train, data.x_train)
    assert not torch.equal(load_dataset("digits", limit=100, seed=1).x_train, data.x_train)
    everything = load_dataset("digits", limit=10_000)
    assert len(everything.x_train) + len(everything.x_test) == 1797


def test_take_indices() -> None:
    assert list(take_indices(5, None, 0)) == [0, 1, 2, 3, 4]
    assert list(take_indices(5, 9, 0)) == [0, 1, 2, 3, 4]
    some = take_indices(100, 10, 7)
    assert len(set(some)) == 10
    assert list(some) == sorted(some)
    assert list(some) == list(take_indices(100, 10, 7))


@pytest.mark.parametrize("name", ["digits", *FILE_DATASETS])
@pytest.mark.parametrize("test_fraction", [0.0, 1.0, -0.5])
def test_bad_test_fraction_fails_before_reading_files(name: str, test_fraction: float) -> None:
    with pytest.raises(TrainerError, match="test_fraction must be in"):
        load_dataset(name, test_fraction=test_fraction)


@pytest.mark.parametrize("name", ["digits", *FILE_DATASETS])
def test_bad_limit(name: str) -> None:
    with pytest.raises(TrainerError, match="limit must be ≥ 2"):
        load_dataset(name, limit=1)


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(TrainerError, match=r"unknown dataset 'mnist'; choose one of cifar10, digits"):
        load_dataset("mnist")


def test_unknown_option() -> None:
    with pytest.raises(TrainerError, match=r"bad options for dataset 'digits'.*image_size"):
        load_dataset("digits", image_size=16)


# --- data directories -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_data_dir_is_required(name: str) -> None:
    with pytest.raises(TrainerError, match=f"'{name}'.*--data-dir is required"):
        load_dataset(name)


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_missing_data_dir(name: str, tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="does not exist") as info:
        load_dataset(name, data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_data_dir_that_is_a_file(name: str, tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(TrainerError, match="is not a directory"):
        load_dataset(name, data_dir=path)


# --- fashion-mnist --------------------------------------------------------------------------------

FASHION_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
N_FASHION_TRAIN, N_FASHION_TEST = 12, 5


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx format: magic (0, 0, type 0x08 = uint8, number of dimensions), big-endian sizes, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(root: Path, *, gz: bool = False, skip: tuple[str, ...] = ()) -> Path:
    """Training image i is all pixel value i, test image i is 100 + i; the label of value v is v % 10."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    train_values = np.arange(N_FASHION_TRAIN)
    test_values = 100 + np.arange(N_FASHION_TEST)
    arrays = {
        "train-images-idx3-ubyte": np.broadcast_to(train_values[:, None, None], (N_FASHION_TRAIN, 28, 28)),
        "train-labels-idx1-ubyte": train_values % 10,
        "t10k-images-idx3-ubyte": np.broadcast_to(test_values[:, None, None], (N_FASHION_TEST, 28, 28)),
        "t10k-labels-idx1-ubyte": test_values % 10,
    }
    for name, array in arrays.items():
        if name in skip:
            continue
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (raw / name).write_bytes(idx_bytes(array))
    return raw


def pixel_values(x: torch.Tensor) -> torch.Tensor:
    """The 0–255 value of each image's first pixel."""
    return (x[:, 0, 0, 0] * 255).round().long()


def assert_fashion(data: Dataset, n_train: int = N_FASHION_TRAIN, n_test: int = N_FASHION_TEST) -> None:
    assert data.name == "fashion-mnist"
    assert data.num_classes == 10
    assert_well_formed(data, (1, 28, 28))
    assert (len(data.x_train), len(data.x_test)) == (n_train, n_test)
    train_values, test_values = pixel_values(data.x_train), pixel_values(data.x_test)
    # Images kept their labels, and the official test set is the held-out set.
    assert torch.equal(data.y_train, train_values % 10)
    assert torch.equal(data.y_test, test_values % 10)
    assert int(train_values.max()) < 100 <= int(test_values.min())
    # Every pixel of an image has its value: the layout is N×1×28×28, not scrambled.
    assert torch.equal(data.x_train, data.x_train[:, :, :1, :1].expand_as(data.x_train))


def test_fashion_mnist(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    assert_fashion(load_dataset("fashion-mnist", data_dir=tmp_path))


def test_fashion_mnist_ignores_test_fraction_without_a_limit(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    a = load_dataset("fashion-mnist", data_dir=tmp_path, test_fraction=0.5, seed=1)
    b = load_dataset("fashion-mnist", data_dir=tmp_path, test_fraction=0.1, seed=2)
    assert torch.equal(a.x_test, b.x_test)
    assert torch.equal(a.x_train, b.x_train)


def test_fashion_mnist_from_gzipped_files(tmp_path: Path) -> None:
    raw = write_fashion(tmp_path, gz=True)
    assert_fashion(load_dataset("fashion-mnist", data_dir=tmp_path))
    assert all((raw / name).is_file() for name in FASHION_FILES)  # decompressed next to the .gz


def test_fashion_mnist_limit(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    data = load_dataset("fashion-mnist", data_dir=tmp_path, limit=8, test_fraction=0.25)
    assert_fashion(data, n_train=6, n_test=2)
    same = load_dataset("fashion-mnist", data_dir=tmp_path, limit=8, test_fraction=0.25)
    assert torch.equal(same.x_train, data.x_train)
    assert torch.equal(same.x_test, data.x_test)
    other = load_dataset("fashion-mnist", data_dir=tmp_path, limit=8, test_fraction=0.25, seed=5)
    assert not torch.equal(pixel_values(other.x_train), pixel_values(data.x_train))
    # A limit above what there is keeps the official sets whole.
    assert_fashion(load_dataset("fashion-mnist", data_dir=tmp_path, limit=1000))


def test_fashion_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(TrainerError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    message = str(info.value)
    for fragment in [
        "'fashion-mnist'",
        str(tmp_path),
        "FashionMNIST/raw/train-images-idx3-ubyte",
        "FashionMNIST/raw/t10k-labels-idx1-ubyte",
        ".gz",
        "Pass --download where the network allows",
    ]:
        assert fragment in message


def test_fashion_mnist_names_the_missing_file(tmp_path: Path) -> None:
    write_fashion(tmp_path, skip=("t10k-labels-idx1-ubyte",))
    with pytest.raises(TrainerError, match=r"missing t10k-labels-idx1-ubyte in .*raw\. torchvision expects"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fashion_mnist_damaged_file(tmp_path: Path) -> None:
    raw = write_fashion(tmp_path)
    (raw / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(TrainerError, match=r"'fashion-mnist'.*could not be read"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fashion_mnist_damaged_gzip(tmp_path: Path) -> None:
    raw = write_fashion(tmp_path, gz=True)
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(TrainerError, match=r"cannot decompress .*train-labels-idx1-ubyte\.gz"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert not (raw / "train-labels-idx1-ubyte").exists()
    assert not (raw / "train-labels-idx1-ubyte.part").exists()


def test_fashion_mnist_download_with_files_present_needs_no_network(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    assert_fashion(load_dataset("fashion-mnist", data_dir=tmp_path, download=True))


def test_fashion_mnist_download_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: FashionMNIST) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(FashionMNIST, "download", offline)
    target = tmp_path / "new"
    with pytest.raises(
        TrainerError, match=r"downloading dataset 'fashion-mnist' into .* failed: Error downloading"
    ):
        load_dataset("fashion-mnist", data_dir=target, download=True)
    assert target.is_dir()  # created to download into


# --- cifar10 --------------------------------------------------------------------------------------

CIFAR_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
N_CIFAR_BATCH, N_CIFAR_TEST = 2, 3


def write_cifar(root: Path) -> Path:
    """Image i has value i + 80 × channel in every pixel of each channel; its label is i % 10.

    Training images are 0–9 (two per data batch), test images 10–12.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = [(f"data_batch_{b}", N_CIFAR_BATCH) for b in range(1, 6)] + [("test_batch", N_CIFAR_TEST)]
    first = 0
    for name, n in batches:
        ids = np.arange(first, first + n)
        first += n
        pixels = np.broadcast_to((ids[:, None] + 80 * np.arange(3))[:, :, None, None], (n, 3, 32, 32))
        # The real format: rows of 3072 uint8 (1024 red, then green, then blue, each row-major).
        batch = {"data": pixels.reshape(n, 3072).astype(np.uint8), "labels": [int(i) % 10 for i in ids]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_LABELS}))
    return folder


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip torchvision's md5 check of the CIFAR files, which only the official files pass.

    This is a format test: the files are real CIFAR batches, just not the official ones, so the
    integrity check is reduced to "the file exists" (what the check does when given no md5).
    """
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file()
    )


def assert_cifar(data: Dataset, n_train: int = 5 * N_CIFAR_BATCH, n_test: int = N_CIFAR_TEST) -> None:
    assert data.name == "cifar10"
    assert data.num_classes == 10
    assert_well_formed(data, (3, 32, 32))
    assert (len(data.x_train), len(data.x_test)) == (n_train, n_test)
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        ids = pixel_values(x)
        assert torch.equal(y, ids % 10)
        for channel in range(3):  # channels in order, each filled with its value: N×C×H×W
            expected = ((ids + 80 * channel).float() / 255)[:, None, None].expand(-1, 32, 32)
            assert torch.allclose(x[:, channel], expected)
    assert int(pixel_values(data.x_train).max()) < 10 <= int(pixel_values(data.x_test).min())


@pytest.mark.usefixtures("no_md5")
def test_cifar10(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    assert_cifar(load_dataset("cifar10", data_dir=tmp_path))


@pytest.mark.usefixtures("no_md5")
def test_cifar10_limit(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    assert_cifar(load_dataset("cifar10", data_dir=tmp_path, limit=5, test_fraction=0.2), n_train=4, n_test=1)


@pytest.mark.usefixtures("no_md5")
def test_cifar10_from_the_published_archive(tmp_path: Path) -> None:
    source = tmp_path / "source"
    folder = write_cifar(source)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    assert_cifar(load_dataset("cifar10", data_dir=data_dir))
    assert (data_dir / "cifar-10-batches-py" / "test_batch").is_file()


@pytest.mark.usefixtures("no_md5")
def test_cifar10_download_with_files_present_needs_no_network(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    assert_cifar(load_dataset("cifar10", data_dir=tmp_path, download=True))


def test_cifar10_files_that_fail_the_checksum(tmp_path: Path) -> None:
    write_cifar(tmp_path)  # not the official files: torchvision's md5 check refuses them
    with pytest.raises(TrainerError, match=r"'cifar10'.*could not be read.*corrupted.*--download"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar10_missing_files(tmp_path: Path) -> None:
    with pytest.raises(TrainerError) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(info.value)
    for fragment in [
        "'cifar10'",
        str(tmp_path),
        "cifar-10-batches-py/data_batch_1",
        "cifar-10-batches-py/data_batch_5",
        "cifar-10-batches-py/test_batch",
        "cifar-10-batches-py/batches.meta",
        "cifar-10-python.tar.gz",
        "Pass --download where the network allows",
    ]:
        assert fragment in message


def test_cifar10_download_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: CIFAR10) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(
        TrainerError, match=r"downloading dataset 'cifar10' into .* failed: .*name resolution"
    ):
        load_dataset("cifar10", data_dir=tmp_path, download=True)


# --- imagefolder ----------------------------------------------------------------------------------

RED, BLUE = (255, 0, 0), (0, 0, 255)


def write_images(root: Path) -> None:
    """Class "cats" (index 0): red images and one grayscale; class "dogs" (index 1): blue images."""
    cats, dogs = root / "cats", root / "dogs"
    cats.mkdir(parents=True)
    dogs.mkdir()
    Image.new("RGB", (8, 8), RED).save(cats / "a.png")
    Image.new("RGB", (40, 20), RED).save(cats / "b.png")
    Image.new("L", (16, 16), 128).save(cats / "gray.png")
    for i, size in enumerate([(32, 32), (5, 50), (64, 64)]):
        Image.new("RGB", size, BLUE).save(dogs / f"{i}.png")


def test_imagefolder(tmp_path: Path) -> None:
    write_images(tmp_path)
    data = load_dataset("imagefolder", data_dir=tmp_path, test_fraction=0.5)
    assert data.name == "imagefolder"
    assert data.num_classes == 2
    assert_well_formed(data, (3, 32, 32))
    assert (len(data.x_train), len(data.x_test)) == (3, 3)
    x = torch.cat([data.x_train, data.x_test])
    y = torch.cat([data.y_train, data.y_test])
    colours = [tuple(round(float(v) * 255) for v in image[:, 0, 0]) for image in x]
    assert sorted(zip(y.tolist(), colours, strict=True)) == [
        (0, (128, 128, 128)),  # grayscale, converted to RGB
        (0, RED),
        (0, RED),
        (1, BLUE),
        (1, BLUE),
        (1, BLUE),
    ]
    for image in x:  # uniform images stay uniform after resizing
        assert torch.allclose(image, image[:, :1, :1].expand_as(image))


def test_imagefolder_split_is_deterministic_by_seed(tmp_path: Path) -> None:
    write_images(tmp_path)
    a = load_dataset("imagefolder", data_dir=tmp_path, seed=0, test_fraction=0.5)
    b = load_dataset("imagefolder", data_dir=tmp_path, seed=0, test_fraction=0.5)
    assert torch.equal(a.x_test, b.x_test)
    assert torch.equal(a.y_test, b.y_test)
    held_out = [
        load_dataset("imagefolder", data_dir=tmp_path, seed=seed, test_fraction=0.5).x_test[:, :, 0, 0]
        for seed in range(5)
    ]
    splits = {tuple(x.flatten().tolist()) for x in held_out}
    assert len(splits) > 1


def test_imagefolder_image_size_and_limit(tmp_path: Path) -> None:
    write_images(tmp_path)
    data = load_dataset("imagefolder", data_dir=tmp_path, image_size=16, limit=4, test_fraction=0.25)
    assert_well_formed(data, (3, 16, 16))
    assert (len(data.x_train), len(data.x_test)) == (3, 1)


def test_imagefolder_bad_image_size(tmp_path: Path) -> None:
    write_images(tmp_path)
    with pytest.raises(TrainerError, match="image_size must be ≥ 2"):
        load_dataset("imagefolder", data_dir=tmp_path, image_size=1)


def test_imagefolder_without_class_directories(tmp_path: Path) -> None:
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(TrainerError, match=r"'imagefolder'.*one sub-directory per class.*\.png"):
        load_dataset("imagefolder", data_dir=tmp_path)


def test_imagefolder_class_without_images(tmp_path: Path) -> None:
    write_images(tmp_path)
    (tmp_path / "birds").mkdir()
    (tmp_path / "birds" / "notes.txt").write_text("no images here")
    with pytest.raises(TrainerError, match="birds"):
        load_dataset("imagefolder", data_dir=tmp_path)


def test_imagefolder_needs_two_classes(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    Image.new("RGB", (8, 8), RED).save(tmp_path / "only" / "a.png")
    with pytest.raises(TrainerError, match=r"one class .*'only'.*at least two"):
        load_dataset("imagefolder", data_dir=tmp_path)


def test_imagefolder_unreadable_image(tmp_path: Path) -> None:
    write_images(tmp_path)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(TrainerError, match=r"cannot read image .*broken\.png"):
        load_dataset("imagefolder", data_dir=tmp_path)
