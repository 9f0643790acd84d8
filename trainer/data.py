"""Datasets of the training experiments, as in-memory tensors with deterministic splits.

``digits`` (scikit-learn's 8×8 digits, shipped with scikit-learn: the default and what tests use)
is built here; ``fashion-mnist``, ``cifar10`` and ``imagefolder`` read the user's files through
torchvision's dataset classes. Every loader returns a :class:`Dataset` of float tensors scaled to
0–1, shaped (N, C, H, W), with a held-out split chosen by ``seed``.

Splits. ``digits`` and ``imagefolder`` have no official split: the samples are pooled and a
``seed``-chosen ``test_fraction`` of them is held out. ``fashion-mnist`` and ``cifar10`` come with an
official test set, the one published accuracies are measured on: it is the held-out set, whole,
and ``test_fraction`` does not apply (it is still validated) unless ``limit`` is given.

``limit`` (every loader) keeps at most ``limit`` samples in all, chosen by ``seed``, and holds out
``test_fraction`` of them. For the datasets with an official split, training samples are still drawn
only from the official training set and held-out ones only from the official test set (at least
one), so a limited run is a seed-chosen subsample of the standard benchmark.

Files are never fetched unless ``download=True``: missing files are a :class:`TrainerError` that
names the directory searched and the files torchvision expects there.
"""

from __future__ import annotations

import gzip
import inspect
import logging
import shutil
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.errors import TrainerError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)


Loader = Callable[..., Dataset]
_LOADERS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    """Register a loader under ``name``.

    A loader takes keyword-only ``seed``, ``test_fraction`` and ``data_dir``; it may also take
    ``download`` and ``limit`` (passed only when set) and options of its own (``load_dataset``'s
    extra keywords).
    """

    def wrap(loader: Loader) -> Loader:
        _LOADERS[name] = loader
        return loader

    return wrap


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic random split of ``range(n)`` into (train, test) indices."""
    if not 0 < test_fraction < 1:
        raise TrainerError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def from_arrays(
    name: str, x: np.ndarray, y: np.ndarray, *, num_classes: int, seed: int, test_fraction: float
) -> Dataset:
    """Split arrays (x: N×C×H×W floats in 0–1, y: N ints) into a Dataset."""
    train, test = split_indices(len(x), test_fraction, seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    return Dataset(name, xt[train], yt[train], xt[test], yt[test], num_classes)


def take_indices(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``limit`` elements of ``range(n)``, chosen by ``seed`` (all: no limit)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def _check_split(test_fraction: float, limit: int | None) -> None:
    # Checked before any file is read, so that a bad setting fails at once, for every dataset.
    if not 0 < test_fraction < 1:
        raise TrainerError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if limit is not None and limit < 2:
        raise TrainerError(f"limit must be ≥ 2 (one training and one held-out sample at least), got {limit}")


def _official_split(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    num_classes: int,
    seed: int,
    test_fraction: float,
    limit: int | None,
) -> Dataset:
    """A Dataset from official train and test (uint8 N×C×H×W pixels, labels) pairs, cut to ``limit``."""
    (x_train, y_train), (x_test, y_test) = train, test
    n_train, n_test = len(x_train), len(x_test)
    if limit is not None:
        n_test = min(n_test, max(1, min(limit - 1, round(limit * test_fraction))))
        n_train = min(n_train, limit - n_test)
    train_idx = take_indices(len(x_train), n_train, seed)
    test_idx = take_indices(len(x_test), n_test, seed)
    return Dataset(
        name,
        _pixels(x_train[train_idx]),
        _labels(y_train[train_idx]),
        _pixels(x_test[test_idx]),
        _labels(y_test[test_idx]),
        num_classes,
    )


def _pixels(x: np.ndarray) -> torch.Tensor:
    """uint8 pixels (N×C×H×W, any strides) as contiguous float32 in 0–1."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)


def _labels(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(y, dtype=np.int64).copy())


def _data_root(name: str, data_dir: Path | None, *, create: bool) -> Path:
    """The existing directory ``data_dir`` (created when about to download into it)."""
    if data_dir is None:
        raise TrainerError(f"dataset {name!r} is read from files: --data-dir is required")
    root = Path(data_dir).expanduser()
    if create and not root.exists():
        try:
            root.mkdir(parents=True)
        except OSError as exc:
            raise TrainerError(f"cannot create data directory {str(root)!r} for {name!r}: {exc}") from exc
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise TrainerError(f"data directory {str(root)!r} for dataset {name!r} {what}")
    return root


def _missing_files_error(
    name: str, root: Path, folder: Path, expected: Sequence[str], missing: Sequence[str], also: str
) -> TrainerError:
    layout = ", ".join(str(folder.relative_to(root) / f) for f in expected)
    return TrainerError(
        f"dataset {name!r} not found in data directory {str(root)!r}: missing {', '.join(missing)} "
        f"in {folder}. torchvision expects, under the data directory: {layout}{also}. "
        "Pass --download where the network allows, or place the files there yourself"
    )


def _download(name: str, root: Path, fetch: Callable[[], object]) -> None:
    """Run torchvision's download; any failure (offline, bad checksum) becomes a TrainerError."""
    logger.info("downloading %s into %s (skipped when the files are already there)", name, root)
    try:
        fetch()
    except (RuntimeError, OSError) as exc:  # URLError and HTTPError are OSErrors
        reason = " ".join(str(exc).split())  # torchvision's message spans lines, one per mirror tried
        raise TrainerError(
            f"downloading dataset {name!r} into {str(root)!r} failed: {reason}. "
            "Without the network, place the files there yourself (run without --download to see which)"
        ) from exc


#: What torchvision's readers raise on damaged or truncated files (bad magic numbers are assertions).
_READ_ERRORS = (RuntimeError, OSError, ValueError, TypeError, AssertionError, EOFError, KeyError, IndexError)


def _read_error(name: str, root: Path, exc: BaseException) -> TrainerError:
    return TrainerError(
        f"dataset {name!r} in {str(root)!r} could not be read: {type(exc).__name__}: {exc}. "
        "Replace the damaged files, or remove them and pass --download where the network allows"
    )


def _gunzip_missing(folder: Path, names: Sequence[str]) -> None:
    """Decompress ``name.gz`` next to each missing ``name`` (the form the files are published in)."""
    for name in names:
        target, packed = folder / name, folder / f"{name}.gz"
        if target.is_file() or not packed.is_file():
            continue
        logger.info("decompressing %s", packed)
        partial = folder / f"{name}.part"
        try:
            with gzip.open(packed, "rb") as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)
        except (OSError, EOFError) as exc:  # a bad gzip file is an OSError; so is a read-only directory
            partial.unlink(missing_ok=True)
            raise TrainerError(f"cannot decompress {packed} to {target}: {exc}") from exc


@register("digits")
def load_digits(
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    data_dir: Path | None = None,
    download: bool = False,
    limit: int | None = None,
) -> Dataset:
    """scikit-learn's 1,797 8×8 digits (shipped, offline), scaled from 0–16 to 0–1.

    ``data_dir`` and ``download`` have no effect: the data comes with scikit-learn.
    """
    from sklearn.datasets import load_digits as sk_digits

    _check_split(test_fraction, limit)
    data = sk_digits()
    x = (data.images / 16.0)[:, None, :, :]
    keep = take_indices(len(x), limit, seed)
    return from_arrays(
        "digits", x[keep], data.target[keep], num_classes=10, seed=seed, test_fraction=test_fraction
    )


@register("fashion-mnist")
def load_fashion_mnist(
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    data_dir: Path | None = None,
    download: bool = False,
    limit: int | None = None,
) -> Dataset:
    """Zalando's Fashion-MNIST: 60,000 training and 10,000 official test images, 1×28×28, 10 classes.

    Read through ``torchvision.datasets.FashionMNIST`` from ``data_dir/FashionMNIST/raw/`` (the four
    ``*-ubyte`` files); a file found there only gzipped (``*-ubyte.gz``, as published) is decompressed
    next to it first. The official test set is the held-out set (see the module's notes on splits).
    """
    from torchvision.datasets import FashionMNIST

    name = "fashion-mnist"
    _check_split(test_fraction, limit)
    root = _data_root(name, data_dir, create=download)
    if download:
        _download(name, root, lambda: FashionMNIST(root=str(root), train=True, download=True))
    raw = root / FashionMNIST.__name__ / "raw"
    # torchvision's resource names are the published .gz files; it reads them decompressed.
    expected = [Path(resource).name.removesuffix(".gz") for resource, _ in FashionMNIST.resources]
    _gunzip_missing(raw, expected)
    missing = [f for f in expected if not (raw / f).is_file()]
    if missing:
        raise _missing_files_error(name, root, raw, expected, missing, " (or each gzipped, as .gz)")
    try:
        train, test = (FashionMNIST(root=str(root), train=flag, download=False) for flag in (True, False))
        arrays = [(part.data.numpy()[:, None], part.targets.numpy()) for part in (train, test)]
    except _READ_ERRORS as exc:
        raise _read_error(name, root, exc) from exc
    return _official_split(
        name,
        arrays[0],
        arrays[1],
        num_classes=len(FashionMNIST.classes),
        seed=seed,
        test_fraction=test_fraction,
        limit=limit,
    )


@register("cifar10")
def load_cifar10(
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    data_dir: Path | None = None,
    download: bool = False,
    limit: int | None = None,
) -> Dataset:
    """CIFAR-10: 50,000 training and 10,000 official test images, 3×32×32, 10 classes.

    Read through ``torchvision.datasets.CIFAR10`` from ``data_dir/cifar-10-batches-py/``
    (``data_batch_1``…``data_batch_5``, ``test_batch``, ``batches.meta``; torchvision checks each
    file's md5 against the official release). When those are missing but the published archive
    ``data_dir/cifar-10-python.tar.gz`` is there, it is unpacked first. The official test set is the
    held-out set (see the module's notes on splits).
    """
    from torchvision.datasets import CIFAR10

    name = "cifar10"
    _check_split(test_fraction, limit)
    root = _data_root(name, data_dir, create=download)
    if download:
        _download(name, root, lambda: CIFAR10(root=str(root), train=True, download=True))
    folder = root / CIFAR10.base_folder
    expected = [f for f, _ in [*CIFAR10.train_list, *CIFAR10.test_list]] + [CIFAR10.meta["filename"]]
    archive = root / CIFAR10.filename
    if any(not (folder / f).is_file() for f in expected) and archive.is_file():
        logger.info("unpacking %s", archive)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(root, filter="data")
        except (OSError, EOFError, tarfile.TarError) as exc:
            raise TrainerError(f"cannot unpack {archive}: {exc}") from exc
    missing = [f for f in expected if not (folder / f).is_file()]
    if missing:
        also = f" (or the published archive {CIFAR10.filename} in the data directory, to be unpacked)"
        raise _missing_files_error(name, root, folder, expected, missing, also)
    try:
        train, test = (CIFAR10(root=str(root), train=flag, download=False) for flag in (True, False))
        # torchvision holds the pixels as N×H×W×C uint8; _pixels makes the N×C×H×W view contiguous.
        arrays = [(part.data.transpose(0, 3, 1, 2), np.asarray(part.targets)) for part in (train, test)]
        num_classes = len(train.classes)
    except _READ_ERRORS as exc:
        raise _read_error(name, root, exc) from exc
    return _official_split(
        name,
        arrays[0],
        arrays[1],
        num_classes=num_classes,
        seed=seed,
        test_fraction=test_fraction,
        limit=limit,
    )


@register("imagefolder")
def load_image_folder(
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    data_dir: Path | None = None,
    download: bool = False,
    limit: int | None = None,
    image_size: int = 32,
) -> Dataset:
    """Your own images, one sub-directory of ``data_dir`` per class (torchvision's ``ImageFolder``).

    Classes are numbered in the sorted order of their directory names. Every image is converted to
    RGB and resized, stretched if need be, to ``image_size`` × ``image_size``; the result is 3×S×S.
    The samples are pooled and split by ``seed``; ``download`` has no effect (nothing to fetch).
    """
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    name = "imagefolder"
    _check_split(test_fraction, limit)
    if image_size < 2:
        raise TrainerError(f"image_size must be ≥ 2 pixels, got {image_size}")
    root = _data_root(name, data_dir, create=False)
    try:
        folder = ImageFolder(str(root))
    except (FileNotFoundError, ValueError) as exc:
        raise TrainerError(
            f"dataset {name!r} in {str(root)!r}: {exc} Expected one sub-directory per class, "
            f"holding images ({', '.join(IMG_EXTENSIONS)})"
        ) from exc
    if len(folder.classes) < 2:
        raise TrainerError(
            f"dataset {name!r} in {str(root)!r} has one class ({folder.classes[0]!r}); "
            "a classifier needs at least two sub-directories"
        )
    keep = take_indices(len(folder.samples), limit, seed)
    logger.info("reading %d images of %d classes from %s", len(keep), len(folder.classes), root)
    x = np.empty((len(keep), 3, image_size, image_size), dtype=np.uint8)
    y = np.empty(len(keep), dtype=np.int64)
    for row, index in enumerate(keep):
        path, label = folder.samples[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
        except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
            raise TrainerError(f"dataset {name!r}: cannot read image {path}: {exc}") from exc
        x[row] = np.asarray(rgb).transpose(2, 0, 1)
        y[row] = label
    return from_arrays(
        name,
        x.astype(np.float32) / 255.0,
        y,
        num_classes=len(folder.classes),
        seed=seed,
        test_fraction=test_fraction,
    )


def load_dataset(
    name: str,
    *,
    data_dir: Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    download: bool = False,
    limit: int | None = None,
    **options: Any,
) -> Dataset:
    """Load a registered dataset by name; unknown names, options and missing data are clear errors.

    ``download`` allows fetching missing files (torchvision's datasets only); ``limit`` keeps at most
    that many samples in all (see the module's notes); ``options`` go to the loader (``imagefolder``:
    ``image_size``).
    """
    if name not in _LOADERS:
        raise TrainerError(f"unknown dataset {name!r}; choose one of {', '.join(dataset_names())}")
    loader = _LOADERS[name]
    kwargs: dict[str, Any] = {"seed": seed, "test_fraction": test_fraction, "data_dir": data_dir, **options}
    # Passed only when set, so that a loader registered without them still works with the defaults.
    if download:
        kwargs["download"] = True
    if limit is not None:
        kwargs["limit"] = limit
    try:
        inspect.signature(loader).bind(**kwargs)
    except TypeError as exc:
        raise TrainerError(f"bad options for dataset {name!r}: {exc}") from exc
    return loader(**kwargs)
