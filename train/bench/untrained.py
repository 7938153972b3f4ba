"""Models at a preset's sizes as initialised, for benchmarks whose speed does not depend
on the weights."""

from __future__ import annotations

from pathlib import Path

import torch

from train.export import export
from train.golden import SERVICE_VOCAB
from train.models.gpt import GPT, GPTConfig
from train.presets import MODELS


def gpt_small(directory: Path) -> Path:
    """The gpt-small preset at its sizes, as initialised (seed 0), exported to
    `directory`/gpt-small.safetensors."""
    torch.manual_seed(0)
    path = directory / "gpt-small.safetensors"
    export(GPT(GPTConfig(vocab=SERVICE_VOCAB, **MODELS["gpt-small"].sizes)), path, {"trained": False})
    return path
