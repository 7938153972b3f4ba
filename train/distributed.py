"""Data-parallel training across processes (`torchrun --nproc_per_node N -m train ...`).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE. With WORLD_SIZE > 1 every process builds the
same model, DistributedDataParallel broadcasts rank 0's weights and averages the gradients
(gloo on the CPU, nccl on CUDA), each rank trains on its shard of every batch, and rank 0
alone writes logs, checkpoints and exports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1

    @property
    def writes(self) -> bool:
        """Only rank 0 touches files and stdout."""
        return self.rank == 0

    def splits(self, batch: tuple) -> bool:
        """Whether every rank gets at least one row of `batch`: a last partial batch with
        fewer rows than ranks would leave a rank an empty shard, a NaN loss and ruined
        weights, so the whole group skips it."""
        return len(batch[0]) >= self.world

    def shard(self, batch: tuple) -> tuple:
        """This rank's contiguous slice of every tensor of a global batch."""
        if self.world == 1:
            return batch
        return tuple(t.tensor_split(self.world)[self.rank] for t in batch)

    def epoch_seed(self, seed: int, epoch: int) -> int:
        """The seed of this rank's random streams (VAE noise, WGAN noise, dropout) in an
        epoch: it depends only on (seed, epoch, rank), so a run resumed at an epoch
        boundary draws what an uninterrupted one would."""
        return (seed * 1_000_003 + epoch) * 1_009 + self.rank

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any: keeps the ranks stepping together."""
        if self.world == 1:
            return flag
        t = torch.tensor(int(flag))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t)

    def from_writer(self, value):
        """Rank 0's value on every rank, so every rank takes the same decisions."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = Group()


def first_rank() -> bool:
    """Rank 0 of a torchrun launch, or a lone process: whoever reports errors."""
    return os.environ.get("RANK", "0") == "0"


def join(device: torch.device) -> tuple[Group, torch.device]:
    """Join torchrun's process group, if launched by it; CUDA ranks take cuda:LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Group(dist.get_rank(), world), device


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class NextObjective(nn.Module):
    """DDP's forward: compute the model's next objective.

    DDP averages the gradients of whatever its forward produced, so each (optimizer, loss)
    the model yields, the WGAN's critic and generator losses included, is computed through
    it. The generator's end comes out as StopIteration.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, objectives):
        return next(objectives)


def data_parallel(model: nn.Module, group: Group, device: torch.device, partial: bool):
    """`next` for one process; a DDP module that advances the objectives for several.

    partial: some objectives leave parameters out of their graph (the WGAN's critic loss
    leaves out the generator), which DDP must then look for after every forward.
    """
    if group.world == 1:
        return next
    ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        NextObjective(model), device_ids=ids, find_unused_parameters=partial
    )
