"""Data-parallel training: 2 CPU processes with gloo on a loopback port.

One DDP step equals one single-process step on the whole batch, and a DDP run resumed from
its checkpoint ends on the weights of an uninterrupted DDP run (the WGAN: two optimizers).
"""

import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp
from interrupt import crash_after_first_checkpoint

from train.batches import ImageBatches, TextBatches
from train.data import ImageSplit, TextSplit
from train.distributed import SINGLE, Group, join
from train.models.gpt import GPT, GPTConfig
from train.models.wgan import WGANGP, WGANConfig
from train.trainer import CHECKPOINT, METRICS, TrainConfig, Trainer, seed_everything

WORLD = 2
GPT_CFG = GPTConfig(vocab="abcdefgh", block_size=8, n_layer=1, n_head=2, n_embd=16)
BATCH = 4  # each rank takes 2 of the 4 windows


def text_trainer(run_dir, group=SINGLE) -> Trainer:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(GPT_CFG.vocab), 400)
    split = TextSplit(GPT_CFG.vocab, ids[:300], ids[300:], "test")
    seed_everything(0)
    batches = TextBatches(split, BATCH, GPT_CFG.block_size, steps=1, val_batches=1)
    return Trainer(GPT(GPT_CFG), batches, TrainConfig(lr=1e-3, seed=0), run_dir, group=group)


def image_trainer(run_dir, epochs, group) -> Trainer:
    rng = np.random.default_rng(0)
    x = rng.random((48, 784), dtype=np.float32)
    y = rng.integers(0, 10, 48)
    split = ImageSplit(x[:32], y[:32], x[32:], y[32:], "test")
    seed_everything(3)
    model = WGANGP(WGANConfig(z_dim=8, g_hidden=(16, 16), d_hidden=(16, 16), n_critic=2))
    cfg = TrainConfig(epochs=epochs, lr=1e-3, grad_clip=5.0, seed=3)
    return Trainer(model, ImageBatches(split, 8, model.prepare_images), cfg, run_dir, group=group)


def first_batch(trainer: Trainer):
    return next(iter(trainer.batches.train(trainer.cfg.seed, 0)))


def worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ["WORLD_SIZE"] = str(WORLD)
    torch.set_num_threads(1)
    group, _ = join(torch.device("cpu"))

    # one step on this rank's half of the batch; DDP averages the two halves' gradients
    ddp = text_trainer(f"{tmp}/gpt", group)
    batch = first_batch(ddp)
    assert len(group.shard(batch)[0]) == BATCH // WORLD
    ddp.train_step(batch)
    if group.writes:
        torch.save({n: p.grad for n, p in ddp.model.named_parameters()}, f"{tmp}/ddp_grads.pt")

    whole = image_trainer(f"{tmp}/whole", 2, group)
    whole.fit()
    interrupted = image_trainer(f"{tmp}/split", 2, group)
    crash_after_first_checkpoint(interrupted)  # on every rank
    torch.distributed.barrier()  # rank 0 has written the checkpoint
    resumed = image_trainer(f"{tmp}/split", 2, group)
    seed_everything(12345)  # a fresh process: every RNG elsewhere until the checkpoint restores it
    resumed.load_checkpoint(f"{tmp}/split/{CHECKPOINT}")
    resumed.fit()
    assert resumed.step == whole.step
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_step_equals_one_process_and_resume_is_exact(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD)

    one = text_trainer(tmp_path / "one")
    one.train_step(first_batch(one))
    ddp_grads = torch.load(tmp_path / "ddp_grads.pt", weights_only=True)
    # Both runs compute the same mean over N = BATCH * block_size tokens, in a different order
    # (two halves, then the all-reduce), with matrix products whose inner sizes K reach
    # 4 * n_embd. fp32 rounding (unit u = 2^-24) bounds the difference of each such sum by
    # about (number of terms) * u relative to the largest magnitude; a pass through the
    # DEPTH products of the one block, plus the token sum, gives the tolerance below.
    u = 2.0**-24
    n_tokens, widest, depth = BATCH * GPT_CFG.block_size, 4 * GPT_CFG.n_embd, 6
    rel = (n_tokens + depth * widest) * u
    for name, p in one.model.named_parameters():
        scale = p.grad.abs().max().item()
        assert (ddp_grads[name] - p.grad).abs().max().item() <= rel * scale, name

    # rank 0 alone logs: one line per validation, epoch 1 before the crash and epoch 2 after
    assert len((tmp_path / "split" / METRICS).read_text().splitlines()) == 2


def test_a_batch_smaller_than_the_group_is_skipped_not_split_into_empty_shards():
    tail = (torch.zeros(3, 784), torch.zeros(3, dtype=torch.long))
    assert Group(rank=0, world=4).splits(tail) is False
    assert Group(rank=3, world=3).splits(tail) is True
    assert [len(Group(rank=r, world=3).shard(tail)[0]) for r in range(3)] == [1, 1, 1]
