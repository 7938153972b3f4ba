"""The client's PNG writer, read back with nothing but zlib and the PNG layout."""

import struct
import zlib

import numpy as np
from serve_client.png import GAP, SCALE, SIDE, grid, save_grid


def read_grey_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, chunks = 8, {}
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        tag, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(tag + body), f"{tag} checksum"
        chunks[tag] = chunks.get(tag, b"") + body
        at += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 0) and b"IEND" in chunks
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(height, width + 1)
    assert (rows[:, 0] == 0).all()  # filter type 0 on every row
    return rows[:, 1:]


def test_a_grid_png_holds_each_image_where_it_belongs(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((5, SIDE * SIDE))
    picture = read_grey_png(save_grid(images, tmp_path / "g.png").read_bytes())
    # 5 images: 3 a row, 2 rows
    expected = ((2 * (SIDE + GAP) + GAP) * SCALE, (3 * (SIDE + GAP) + GAP) * SCALE)
    assert picture.shape == grid(images).shape == expected
    for i, image in enumerate(images):
        top, left = (GAP + (i // 3) * (SIDE + GAP)) * SCALE, (GAP + (i % 3) * (SIDE + GAP)) * SCALE
        block = picture[top : top + SIDE * SCALE : SCALE, left : left + SIDE * SCALE : SCALE]
        np.testing.assert_array_equal(block, (image.reshape(SIDE, SIDE) * 255).round().astype(np.uint8))
