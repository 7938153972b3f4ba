"""Where and how training runs: device, precision, compilation.

The CLI's `--device`, `--precision` and `--compile` flags are generated from RuntimeConfig's
fields. None of this is stored in checkpoints, so a run trained on one device resumes on
another.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

import torch

from train.errors import TrainError


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = field(default="auto", metadata={"help": "auto (CUDA when available), cpu, cuda or cuda:N"})
    precision: str = field(
        default="fp32",
        metadata={
            "choices": ("fp32", "bf16"),
            "help": "bf16 autocasts the forward pass on CUDA; on the CPU training stays fp32",
        },
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the model's networks"})


DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(spec: str) -> torch.device:
    """The torch device named by `spec`; TrainError for a malformed or unavailable one."""
    if not DEVICE_PATTERN.fullmatch(spec):
        raise TrainError(f"--device takes auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(f"--device {spec}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TrainError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA; None (plain fp32) otherwise, the CPU included."""
    return torch.bfloat16 if precision == "bf16" and device.type == "cuda" else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device`, or nothing when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
