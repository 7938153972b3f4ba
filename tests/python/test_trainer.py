"""The shared trainer: schedule, clipping, early stopping, and exact resume."""

import copy
import math

import pytest
import torch
from interrupt import crash_after_first_checkpoint

from train.batches import ImageBatches
from train.bench.overhead import FirstSteps, plain_loop, trainer_loop
from train.cli import build_model, parse_args, train_config
from train.models.vae import VAE, VAEConfig
from train.models.wgan import WGANGP, WGANConfig
from train.schedule import clip_global_norm, warmup_cosine
from train.trainer import CHECKPOINT, FID_SAMPLES, TrainConfig, Trainer, WeightAverage, seed_everything


def test_warmup_then_cosine():
    assert warmup_cosine(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert warmup_cosine(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_clip_global_norm_scales_to_the_limit():
    p = torch.nn.Parameter(torch.zeros(2))
    q = torch.nn.Parameter(torch.zeros(1))
    p.grad, q.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    opt = torch.optim.SGD([p, q], lr=1.0)
    assert clip_global_norm(opt, 1.0) == pytest.approx(5.0)
    norm = torch.cat([p.grad, q.grad]).norm()
    assert norm.item() == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.0]))


def make(arch, split, cfg, run_dir):
    seed_everything(cfg.seed)
    if arch == "vae":
        model = VAE(VAEConfig(hidden=(32,), z_dim=4, kl_anneal_steps=7))
    else:
        model = WGANGP(WGANConfig(z_dim=8, g_hidden=(16, 16), d_hidden=(16, 16), n_critic=2))
    return Trainer(model, ImageBatches(split, 16, model.prepare_images), cfg, run_dir)


@pytest.mark.parametrize("arch", ["vae", "wgan"])
def test_resume_equals_an_uninterrupted_run(arch, small_images, tmp_path):
    cfg = TrainConfig(epochs=3, lr=1e-3, warmup_steps=3, min_lr_ratio=0.1, grad_clip=5.0, seed=7)
    whole = make(arch, small_images, cfg, tmp_path / "whole")
    whole.fit()

    interrupted = make(arch, small_images, cfg, tmp_path / "split")
    crash_after_first_checkpoint(interrupted)
    assert interrupted.epoch == 1
    resumed = make(arch, small_images, cfg, tmp_path / "split")
    # a fresh process: a fresh model and optimizers, and every RNG somewhere else than
    # where the trainer's own seeding left it; only the checkpoint can put them back
    seed_everything(12345)
    resumed.load_checkpoint(tmp_path / "split" / CHECKPOINT)
    resumed.fit()

    assert resumed.step == whole.step
    resumed_state = resumed.model.state_dict()
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed_state[name]), name


def test_early_stopping_stops_when_val_loss_stalls(small_images, tmp_path):
    # lr 0 leaves the weights alone, so the validation loss never improves after epoch 1
    cfg = TrainConfig(epochs=20, lr=0.0, patience=2, seed=1)
    trainer = make("vae", small_images, cfg, tmp_path)
    summary = trainer.fit()
    assert summary["stopped_by"] == "early stopping"
    assert summary["epochs"] < 20


def test_training_lowers_the_loss_and_logs(small_images, tmp_path):
    cfg = TrainConfig(epochs=4, lr=3e-3, seed=2, log_every=1)
    trainer = make("vae", small_images, cfg, tmp_path)
    before = trainer.validate()["loss"]
    trainer.fit()
    assert trainer.validate()["loss"] < before
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == trainer.step + trainer.epoch  # one per step, one per validation


def test_validation_draws_the_same_noise_every_time_and_leaves_the_rng_alone(small_images, tmp_path):
    """The VAE's held-out loss samples z. With fresh noise at every call, the same
    weights gave another loss each time, and a run's last line disagreed with the best
    epoch it had kept."""
    trainer = make("vae", small_images, TrainConfig(epochs=3, seed=3), tmp_path)
    rng = torch.get_rng_state()
    first = trainer.validate()
    assert torch.equal(torch.get_rng_state(), rng)
    assert trainer.validate() == first
    summary = trainer.fit()  # ends on the best weights (keep_best)
    assert trainer.validate()["loss"] == summary["best_val_loss"]


def test_fid_is_logged_every_few_epochs_on_the_averaged_samples_and_changes_no_weight(small_images, tmp_path):
    cfg = TrainConfig(epochs=4, lr=1e-3, seed=5, ema=0.9, fid_every=2)
    plain = make("wgan", small_images, cfg, tmp_path / "plain")
    plain.fit()
    seen = []

    def fid(samples: torch.Tensor) -> float:
        seen.append(samples)
        return float(len(seen))

    watched = make("wgan", small_images, cfg, tmp_path / "watched")
    watched.fid = fid
    watched.fit()
    records = [r for r in watched.history if r["kind"] == "fid"]
    assert [(r["epoch"], r["fid"]) for r in records] == [(2, 1.0), (4, 2.0)]
    # the training seconds so far, to 0.01 s; the last measure is at the end of training
    assert 0 < records[0]["seconds"] < records[1]["seconds"] == round(watched.train_seconds, 2)
    # measured on FID_SAMPLES images in [0, 1], drawn from the exported weights (the
    # average, which the model holds after fit) on the run's seed
    assert all(s.shape == (FID_SAMPLES, 784) and s.min() >= 0 and s.max() <= 1 for s in seen)
    last = watched.model.sample(FID_SAMPLES, torch.Generator().manual_seed(cfg.seed))
    assert torch.equal(seen[-1], last)
    # measuring draws nothing from the training's random streams
    for name, value in plain.model.state_dict().items():
        assert torch.equal(value, watched.model.state_dict()[name]), name


def test_without_a_terminal_one_line_per_epoch(small_images, tmp_path, capsys):
    make("vae", small_images, TrainConfig(epochs=3, seed=4), tmp_path).fit()
    out, err = capsys.readouterr()  # captured: neither stream is a terminal
    assert "\r" not in out + err
    lines = out.splitlines()
    assert len(lines) == 3 and all(line.startswith("vae epoch") for line in lines), lines


def test_the_overhead_benchmark_compares_like_with_like(tmp_path):
    """`train.bench.overhead`'s plain loop and the trainer, from the same weights, batches and
    random state at a constant learning rate, end on the same weights bit for bit: the
    ratio it reports is the trainer's bookkeeping, not different math."""
    args = parse_args(["--model", "vae", "--hidden", "16", "--min-lr-ratio", "1", "--device", "cpu"])
    cfg = train_config(args)
    model, batches, _ = build_model(args, cfg)
    batches = FirstSteps(batches, 3)
    twin, before = copy.deepcopy(model), copy.deepcopy(model.encoder.mu.weight)
    torch.manual_seed(5)
    plain_loop(model, batches, cfg)
    torch.manual_seed(5)
    trainer_loop(twin, batches, cfg, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(), strict=True))
    assert not torch.equal(model.encoder.mu.weight, before)  # both trained


class Exported(torch.nn.Linear):
    """A layer that exports its weight only (as the WGAN exports its generator only)."""

    def export_state(self) -> dict:
        return {"weight": self.state_dict()["weight"]}


def test_the_weight_average_follows_its_recursion_and_swaps_back():
    """avg_t = d_t avg_{t-1} + (1 - d_t) w_t with d_t = min(decay, (1 + t) / (10 + t)),
    computed in float64 beside it; the bias is not averaged; two swaps restore the model."""
    torch.manual_seed(0)
    layer = Exported(3, 2)
    average = WeightAverage(layer, decay=0.9)
    expected = layer.weight.detach().double().clone()
    for t in range(40):
        with torch.no_grad():
            layer.weight.add_(torch.randn_like(layer.weight))
        average.update()
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * layer.weight.detach().double()
    # float32 lerp: each update rounds once, an error of at most 2^-24 |w| (|w| stays
    # below 20 here: a sum of 40 standard normals); 40 updates stay under 40 * 1.2e-6
    torch.testing.assert_close(average.shadow["weight"].double(), expected, rtol=0, atol=1e-4)
    assert set(average.shadow) == {"weight"}
    raw = layer.weight.detach().clone()
    average.swap()
    assert torch.equal(average.shadow["weight"], raw)  # the average now holds the live weights
    torch.testing.assert_close(layer.weight.detach().double(), expected, rtol=0, atol=1e-4)
    average.swap()
    assert torch.equal(layer.weight.detach(), raw)
