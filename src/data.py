"""Fashion-MNIST: read the official IDX files, pick classes, draw a stratified train/validation split.

Nothing here imports TensorFlow unless no folder is given and Keras's downloader is the fallback.
Raw arrays are cached per process, so a sweep reads the files once.
"""
from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_UBYTE = 0x08  # IDX type code for unsigned bytes, the only one Fashion-MNIST uses


@dataclass(frozen=True)
class Splits:
    """Flattened float32 images in [0, 1] and one-hot labels, ready for `model.fit`."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[int, ...]


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Read one gzip'd IDX file of unsigned bytes with `ndim` dimensions, checking its header and size."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(f"data file missing: {path}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"corrupt data file {path}: not a complete gzip file ({e})") from None
    header = 4 + 4 * ndim
    if len(raw) >= 4 and raw[:4] != bytes([0, 0, _UBYTE, ndim]):
        raise UserError(f"corrupt data file {path}: IDX magic 0x{raw[:4].hex()}, "
                        f"expected 0x0000080{ndim} (unsigned bytes, {ndim} dimensions)")
    if len(raw) < header:
        raise UserError(f"corrupt data file {path}: {len(raw)} bytes, shorter than its IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise UserError(f"corrupt data file {path}: header says {'x'.join(map(str, dims))} = {expected} "
                        f"bytes of data, file has {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def check_folder(folder: str | os.PathLike) -> Path:
    """The data folder, or a one-line error when it is not a folder or lacks one of the four files (their
    contents are checked as they are read); a sweep checks this before its study is created."""
    where = Path(folder).expanduser()
    if not where.is_dir():
        raise UserError(f"data folder not found: {where} (set data.path=DIR or FASHION_MNIST_DIR "
                        f"to a folder holding {', '.join(FILES['train'] + FILES['test'])})")
    missing = [name for name in FILES["train"] + FILES["test"] if not (where / name).is_file()]
    if missing:
        raise UserError(f"data file missing: {where / missing[0]}")
    return where


@functools.lru_cache(maxsize=4)
def load_split(folder: str | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28 uint8, labels N uint8) of the official `split` ('train' or 'test'), cached."""
    if folder is None:
        return _keras_split(split)
    where = check_folder(folder)
    image_file, label_file = (where / name for name in FILES[split])
    images, labels = read_idx(image_file, 3), read_idx(label_file, 1)
    if images.shape[1:] != (28, 28):
        raise UserError(f"corrupt data file {image_file}: images are "
                        f"{images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise UserError(f"corrupt data: {image_file.name} has {len(images)} images but "
                        f"{label_file.name} has {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise UserError(f"corrupt data file {label_file}: label {labels.max()} outside 0-9")
    return images, labels


def _keras_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Keras's own loader (downloads once into ~/.keras/datasets), for users with no local copy."""
    import keras

    try:
        train, test = keras.datasets.fashion_mnist.load_data()
    except Exception as e:  # no network, proxy, broken cache: one clear line instead of a traceback
        raise UserError(f"could not download Fashion-MNIST with Keras ({type(e).__name__}: {e}); "
                        f"set data.path=DIR or FASHION_MNIST_DIR to a folder with the four "
                        f"*-idx?-ubyte.gz files") from None
    return train if split == "train" else test


def check_classes(classes: list[int]) -> tuple[int, ...]:
    """The class ids as a tuple, or a clear error if one is outside 0-9, repeated, or there are fewer than 2."""
    classes = tuple(int(c) for c in classes)
    bad = [c for c in classes if not 0 <= c <= 9]
    if bad:
        raise UserError(f"data.classes: {bad[0]} is not a Fashion-MNIST class; allowed ids are 0-9 "
                        f"({', '.join(f'{i} {n}' for i, n in enumerate(CLASS_NAMES))})")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise UserError(f"data.classes: {repeated[0]} is listed more than once in {list(classes)}")
    if len(classes) < 2:
        raise UserError(f"data.classes: {list(classes)} has {len(classes)} class; a classifier needs at least 2")
    return classes


def allocate(counts: np.ndarray, total: int, minimum: int = 0) -> np.ndarray:
    """Split `total` over classes in proportion to `counts` (largest remainder), each getting >= `minimum`."""
    share = counts * (total - minimum * len(counts)) / counts.sum()
    out = np.floor(share).astype(int)
    out[np.argsort(out - share, kind="stable")[: total - minimum * len(counts) - out.sum()]] += 1
    return out + minimum


@functools.lru_cache(maxsize=4)
def make_splits(folder: str | None, classes: tuple[int, ...], n_train: int | None,
                validation_split: float, seed: int) -> Splits:
    """Stratified, seeded train/validation draw from the official train split; the test split as is.

    Cached per process: the trials of a sweep share one set of prepared arrays.

    Keras's `validation_split` holds out the last rows unshuffled, which can miss a class, so the
    split is drawn here, per class, and every class gets at least one validation image.
    """
    classes = check_classes(classes)
    if not 0.0 < validation_split < 1.0:
        raise UserError(f"data.validation_split={validation_split}: must be between 0 and 1 (exclusive)")
    images, labels = load_split(folder, "train")
    by_class = [np.flatnonzero(labels == c) for c in classes]
    available = sum(len(i) for i in by_class)
    n_total = available if n_train is None else int(n_train)
    if n_total > available:
        raise UserError(f"data.n_train={n_train}: only {available} training images in classes "
                        f"{list(classes)}; use n_train <= {available} or null for all")
    n_val_total = round(n_total * validation_split)
    if n_val_total < len(classes) or n_total - n_val_total < len(classes):
        raise UserError(f"data.n_train={n_train} with validation_split={validation_split} is too small: "
                        f"each of the {len(classes)} classes needs a training and a validation image")

    rng = np.random.default_rng(seed)
    per_class = allocate(np.array([len(i) for i in by_class]), n_total, minimum=2)
    n_val = np.minimum(allocate(per_class, n_val_total, minimum=1), per_class - 1)
    train_idx, val_idx = [], []
    for idx, take, val in zip(by_class, per_class, n_val):
        picked = rng.permutation(idx)[:take]
        val_idx.append(picked[:val])
        train_idx.append(picked[val:])
    train_idx, val_idx = rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(val_idx))

    test_images, test_labels = load_split(folder, "test")
    test_idx = np.flatnonzero(np.isin(test_labels, classes))
    x_train, y_train = _prepare(images, labels, train_idx, classes)
    x_val, y_val = _prepare(images, labels, val_idx, classes)
    x_test, y_test = _prepare(test_images, test_labels, test_idx, classes)
    return Splits(x_train, y_train, x_val, y_val, x_test, y_test, classes)


def load(data: Any) -> Splits:
    """The splits a `data` config describes (data.path, classes, n_train, validation_split, seed), cached."""
    return make_splits(data.path, tuple(data.classes), data.n_train, data.validation_split, data.seed)


def _prepare(images: np.ndarray, labels: np.ndarray, idx: np.ndarray,
             classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Rows `idx` flattened to 784 floats in [0, 1], labels one-hot in the order of `classes`."""
    x = images[idx].reshape(len(idx), -1).astype(np.float32) / 255.0
    position = np.full(10, -1)
    position[list(classes)] = np.arange(len(classes))
    y = np.eye(len(classes), dtype=np.float32)[position[labels[idx]]]
    return x, y
