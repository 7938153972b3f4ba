"""Data loaders: real parsing on files the tests write, and clear refusals."""

import gzip
import struct

import numpy as np
import pytest

from train.cli import main
from train.data import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    load_images,
    load_mnist_idx,
    load_text,
    read_idx,
)
from train.errors import TrainError


def write_idx(path, magic, array, compress=False):
    data = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def write_mnist(folder, n=6, prefix="train", compress=False):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", IDX_IMAGES_MAGIC, images, compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", IDX_LABELS_MAGIC, labels, compress)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    images, labels = write_mnist(tmp_path, compress=compress)
    x, y = load_mnist_idx(tmp_path)
    np.testing.assert_array_equal(x, images.reshape(6, 784).astype(np.float32) / 255)
    np.testing.assert_array_equal(y, labels)


def test_idx_folder_with_t10k_uses_it_as_held_out(tmp_path):
    write_mnist(tmp_path, n=6)
    write_mnist(tmp_path, n=3, prefix="t10k")
    split = load_images(str(tmp_path), seed=0)
    assert (len(split.train_x), len(split.val_x)) == (6, 3)


def test_idx_wrong_magic(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(TrainError, match="magic number 0x00000801, expected 0x00000803"):
        read_idx(tmp_path / "train-labels-idx1-ubyte", IDX_IMAGES_MAGIC)


def test_idx_truncated(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(TrainError, match="truncated or corrupt"):
        load_mnist_idx(tmp_path)


def test_idx_wrong_image_shape(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", IDX_IMAGES_MAGIC, np.zeros((2, 14, 14), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", IDX_LABELS_MAGIC, np.zeros(2, np.uint8))
    with pytest.raises(TrainError, match="expected 28x28"):
        load_mnist_idx(tmp_path)


def test_idx_label_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", IDX_LABELS_MAGIC, np.zeros(5, np.uint8))
    with pytest.raises(TrainError, match="6 images but .* 5 labels"):
        load_mnist_idx(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(TrainError, match="no train-images-idx3-ubyte"):
        load_mnist_idx(tmp_path)
    with pytest.raises(TrainError, match="does not exist"):
        load_text(str(tmp_path / "nope.txt"))


def test_default_digits_are_real_shuffled_and_split():
    split = load_images(None, seed=0)
    assert (len(split.train_x), len(split.val_x)) == (4500, 500)
    assert split.train_x.min() >= 0 and split.train_x.max() <= 1
    assert set(np.unique(split.val_y)) == set(range(10))  # shuffled before the split
    again = load_images(None, seed=0)
    np.testing.assert_array_equal(split.val_y, again.val_y)


def test_text_vocabulary_and_split(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello world " * 20, encoding="utf-8")
    split = load_text(str(path))
    assert split.vocab == " dehlorw"
    assert len(split.train_ids) + len(split.val_ids) == 240
    assert "".join(split.vocab[i] for i in split.train_ids[:5]) == "hello"


def test_empty_and_non_utf8_text(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(TrainError, match="empty"):
        load_text(str(tmp_path / "empty.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(TrainError, match="not UTF-8"):
        load_text(str(tmp_path / "bin.txt"))


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    assert main(["--model", "gpt", "--data", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: text file") and "Traceback" not in err


def test_cli_rejects_unknown_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "diffusion"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'diffusion'" in capsys.readouterr().err
