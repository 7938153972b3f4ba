import numpy as np
import pytest
import torch

from train.cli import main as train_main
from train.data import ImageSplit
from train.export import export
from train.golden import SERVICE_VOCAB
from train.models.gpt import GPT, GPTConfig
from train.presets import MODELS


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


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """Briefly but really trained models, exported by the CLI."""
    out = tmp_path_factory.mktemp("artifacts")
    runs = tmp_path_factory.mktemp("runs")
    common = ["--out", str(out), "--runs", str(runs), "--threads", "2"]
    assert train_main(["--model", "vae", "--epochs", "2", *common]) == 0
    assert train_main(["--model", "wgan", "--epochs", "1", *common]) == 0
    assert train_main(["--model", "gpt", "--epochs", "1", "--steps-per-epoch", "40", *common]) == 0
    # the larger preset at its sizes, as initialised (training it takes a GPU or minutes)
    torch.manual_seed(0)
    sizes = MODELS["gpt-small"].sizes
    export(GPT(GPTConfig(vocab=SERVICE_VOCAB, **sizes)), out / "gpt-small.safetensors", {"trained": False})
    return {name: out / f"{name}.safetensors" for name in ("vae", "wgan", "gpt", "gpt-small")}
