"""Learning-rate schedule and gradient clipping shared by every model."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate at `step` (0-based).

    linear warm-up:  (step + 1) / warmup                          for step < warmup
    cosine decay:    r + (1 - r) * (1 + cos(pi * p)) / 2,  p = (step - warmup) / (total - warmup)
    """
    if step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_global_norm(optimizer: torch.optim.Optimizer, max_norm: float) -> float:
    """Scale all gradients by min(1, max_norm / ||g||_2), ||g|| over every parameter."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
