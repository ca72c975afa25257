"""The IDX reader on tiny files written here (each corrupt case), and the splits on the real data."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from src.data import allocate, check_classes, load_split, make_splits, read_idx
from src.errors import UserError


def write_idx(path: Path, array: np.ndarray, magic: bytes | None = None, compress: bool = True) -> Path:
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    raw = header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def tiny_folder(folder: Path, n: int = 12, labels: np.ndarray | None = None) -> Path:
    """A complete data folder of `n` random 28x28 images per split, labels cycling 0-9."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 10 if labels is None else labels
    for images_name, labels_name in (("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                                     ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")):
        write_idx(folder / images_name, rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / labels_name, labels)
    return folder


def test_reads_a_valid_file(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    assert np.array_equal(read_idx(write_idx(tmp_path / "x.gz", images), 3), images)
    labels = np.array([3, 1, 4])
    assert read_idx(write_idx(tmp_path / "y.gz", labels), 1).tolist() == [3, 1, 4]


@pytest.mark.parametrize("case, message", [
    ("bad magic", "IDX magic 0x00000903"),
    ("wrong ndim", "IDX magic 0x00000801"),
    ("short data", "header says 2x28x28 = 1568 bytes of data, file has 1567"),
    ("long data", "file has 1569"),
    ("truncated gzip", "not a complete gzip file"),
    ("not gzip", "not a complete gzip file"),
    ("empty", "shorter than its IDX header"),
])
def test_corrupt_files_give_clear_errors(tmp_path, case, message):
    images = np.zeros((2, 28, 28))
    path = tmp_path / "images.gz"
    if case == "bad magic":
        write_idx(path, images, magic=bytes([0, 0, 0x09, 3]))
    elif case == "wrong ndim":
        write_idx(path, np.zeros(5), magic=bytes([0, 0, 0x08, 1]))
    elif case in ("short data", "long data"):
        raw = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 28, 28) + bytes(1567 if case == "short data" else 1569)
        path.write_bytes(gzip.compress(raw))
    elif case == "truncated gzip":
        path.write_bytes(gzip.compress(bytes(4000))[:-20])
    elif case == "not gzip":
        write_idx(path, images, compress=False)
    elif case == "empty":
        path.write_bytes(gzip.compress(b"\x00\x00"))
    with pytest.raises(UserError, match="corrupt data file") as error:
        read_idx(path, 3)
    assert message in str(error.value) and str(path) in str(error.value)


def test_missing_folder_and_file_say_where_and_how(tmp_path):
    with pytest.raises(UserError, match=r"data folder not found: .*nowhere.*FASHION_MNIST_DIR"):
        load_split(str(tmp_path / "nowhere"), "train")
    tiny_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="data file missing: .*t10k-labels-idx1-ubyte.gz"):
        load_split(str(tmp_path), "test")


def test_folder_level_checks(tmp_path):
    tiny_folder(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(11) % 10)  # 12 images, 11 labels
    with pytest.raises(UserError, match="has 12 images but .* has 11 labels"):
        load_split(str(tmp_path), "train")
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(12, 10))
    with pytest.raises(UserError, match="label 10 outside 0-9"):
        load_split(str(tmp_path), "train")
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((12, 27, 28)))
    with pytest.raises(UserError, match="27x28, expected 28x28"):
        load_split(str(tmp_path), "train")


@pytest.mark.parametrize("classes, message", [
    ([0, 10], "10 is not a Fashion-MNIST class; allowed ids are 0-9"),
    ([-1, 2], "-1 is not a Fashion-MNIST class"),
    ([1, 2, 1], "1 is listed more than once"),
    ([4], "at least 2"),
])
def test_bad_classes(classes, message):
    with pytest.raises(UserError, match=message):
        check_classes(classes)


def test_allocate_is_proportional_and_exact():
    assert allocate(np.array([17, 17, 16]), 10, minimum=1).tolist() == [4, 3, 3]
    assert allocate(np.array([6000, 6000, 6000]), 50, minimum=2).tolist() == [17, 17, 16]
    counts = allocate(np.array([5, 100, 30]), 40, minimum=1)
    assert counts.sum() == 40 and counts.min() >= 1


def test_splits_on_tiny_files_are_stratified_and_seeded(tmp_path):
    tiny_folder(tmp_path, n=60)
    a = make_splits(str(tmp_path), (0, 1, 2), n_train=15, validation_split=0.2, seed=1)
    b = make_splits(str(tmp_path), (0, 1, 2), n_train=15, validation_split=0.2, seed=1)
    c = make_splits(str(tmp_path), (0, 1, 2), n_train=15, validation_split=0.2, seed=2)
    assert np.array_equal(a.x_train, b.x_train) and not np.array_equal(a.x_train, c.x_train)
    assert len(a.x_train) == 12 and len(a.x_val) == 3
    assert a.y_val.sum(axis=0).tolist() == [1, 1, 1]  # every class in validation
    assert a.x_train.dtype == np.float32 and 0 <= a.x_train.min() and a.x_train.max() <= 1
    assert a.x_test.shape == (18, 784) and a.y_test.shape == (18, 3)


def test_n_train_bounds(tmp_path):
    tiny_folder(tmp_path, n=60)
    with pytest.raises(UserError, match=r"data.n_train=19: only 18 training images in classes \[0, 1, 2\]"):
        make_splits(str(tmp_path), (0, 1, 2), n_train=19, validation_split=0.2, seed=0)
    with pytest.raises(UserError, match="data.n_train=5 .* too small"):
        make_splits(str(tmp_path), (0, 1, 2), n_train=5, validation_split=0.2, seed=0)
    with pytest.raises(UserError, match="validation_split=1.5"):
        make_splits(str(tmp_path), (0, 1, 2), n_train=15, validation_split=1.5, seed=0)


def test_real_data_lesson_split(data_dir):
    images, labels = load_split(str(data_dir), "train")
    assert images.shape == (60000, 28, 28) and labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert abs(images.mean() / 255 - 0.2860) < 1e-4
    lesson = make_splits(str(data_dir), (0, 1, 2), n_train=50, validation_split=0.2, seed=0)
    assert (len(lesson.x_train), len(lesson.x_val), len(lesson.x_test)) == (40, 10, 3000)
    assert lesson.x_train.shape[1] == 784 and (lesson.y_val.sum(axis=0) >= 3).all()
    full = make_splits(str(data_dir), (0, 1, 2), n_train=None, validation_split=0.2, seed=0)
    assert (len(full.x_train), len(full.x_val)) == (14400, 3600)
    assert full.y_val.sum(axis=0).tolist() == [1200, 1200, 1200]
    ten = make_splits(str(data_dir), tuple(range(10)), n_train=None, validation_split=0.2, seed=0)
    assert len(ten.x_train) + len(ten.x_val) == 60000 and len(ten.x_test) == 10000
