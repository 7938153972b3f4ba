"""A grid of 28x28 grey images as a PNG file, with numpy and zlib only."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np

SIDE = 28  # pixels per image side
GAP = 2  # pixels between images
SCALE = 2  # each pixel drawn as SCALE x SCALE


def grid(images: np.ndarray) -> np.ndarray:
    """(N, 784) values in [0, 1] as one uint8 picture, ceil(sqrt N) images a row."""
    n = len(images)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    cell = SIDE + GAP
    canvas = np.zeros((rows * cell + GAP, cols * cell + GAP), dtype=np.uint8)
    pixels = (np.clip(images, 0, 1) * 255).round().astype(np.uint8).reshape(n, SIDE, SIDE)
    for i, image in enumerate(pixels):
        top, left = GAP + (i // cols) * cell, GAP + (i % cols) * cell
        canvas[top : top + SIDE, left : left + SIDE] = image
    return np.kron(canvas, np.ones((SCALE, SCALE), dtype=np.uint8))


def write_png(path: Path, picture: np.ndarray) -> Path:
    """An 8-bit greyscale PNG: signature, IHDR, one zlib IDAT of filter-0 rows, IEND."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    height, width = picture.shape
    rows = b"".join(b"\x00" + row.tobytes() for row in picture)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(signature + body)
    return path


def save_grid(images: np.ndarray, path: Path) -> Path:
    """Write (N, 784) images in [0, 1] to `path` as a PNG grid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png(path, grid(images))
