import numpy as np
import pytest
import torch

from train.data import ImageSplit


@pytest.fixture
def small_images() -> ImageSplit:
    """96 random 'images' with labels: enough for a few seeded training steps."""
    rng = np.random.default_rng(0)
    x = rng.random((96, 784), dtype=np.float32)
    y = rng.integers(0, 10, 96)
    return ImageSplit(x[:80], y[:80], x[80:], y[80:], "test")


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)
