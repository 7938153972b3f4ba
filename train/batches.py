"""Seeded mini-batch streams. The order of epoch e depends only on (seed, e), so a run
resumed at an epoch boundary sees exactly the batches an uninterrupted run would."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from train.data import ImageSplit, TextSplit


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class ImageBatches:
    """Shuffled (x, y) batches of the training images; the held-out set in order."""

    def __init__(self, split: ImageSplit, batch_size: int, prepare: Callable) -> None:
        self.train_x = prepare(torch.from_numpy(split.train_x))
        self.train_y = torch.from_numpy(split.train_y)
        self.val_x = prepare(torch.from_numpy(split.val_x))
        self.val_y = torch.from_numpy(split.val_y)
        self.batch_size = batch_size

    def to(self, device: torch.device) -> ImageBatches:
        self.train_x, self.train_y = self.train_x.to(device), self.train_y.to(device)
        self.val_x, self.val_y = self.val_x.to(device), self.val_y.to(device)
        return self

    def steps_per_epoch(self) -> int:
        return -(-len(self.train_x) // self.batch_size)

    def train(self, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.train_x), generator=epoch_generator(seed, epoch))
        order = order.to(self.train_x.device)
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            yield self.train_x[idx], self.train_y[idx]

    def validation(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.val_x), self.batch_size):
            yield self.val_x[i : i + self.batch_size], self.val_y[i : i + self.batch_size]


class TextBatches:
    """Random windows of block_size + 1 characters: inputs x[t], targets x[t + 1]."""

    def __init__(
        self, split: TextSplit, batch_size: int, block_size: int, steps: int, val_batches: int
    ) -> None:
        self.train_ids = torch.from_numpy(split.train_ids)
        self.val_ids = torch.from_numpy(split.val_ids)
        self.batch_size, self.block_size = batch_size, block_size
        self.steps, self.val_batches = steps, val_batches

    def to(self, device: torch.device) -> TextBatches:
        self.train_ids, self.val_ids = self.train_ids.to(device), self.val_ids.to(device)
        return self

    def steps_per_epoch(self) -> int:
        return self.steps

    def _windows(self, ids: torch.Tensor, starts: torch.Tensor):
        starts = starts.to(ids.device)
        offsets = starts[:, None] + torch.arange(self.block_size + 1, device=ids.device)  # (B, T + 1)
        chunk = ids[offsets]
        return chunk[:, :-1], chunk[:, 1:]

    def train(self, seed: int, epoch: int):
        gen = epoch_generator(seed, epoch)
        high = len(self.train_ids) - self.block_size - 1
        for _ in range(self.steps):
            yield self._windows(self.train_ids, torch.randint(high, (self.batch_size,), generator=gen))

    def validation(self):
        """The same evenly spaced windows of the held-out text at every evaluation."""
        high = len(self.val_ids) - self.block_size - 1
        n = self.val_batches * self.batch_size
        starts = torch.from_numpy(np.linspace(0, high, n).astype(np.int64))
        for chunk in starts.split(self.batch_size):
            yield self._windows(self.val_ids, chunk)
