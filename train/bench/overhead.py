"""The trainer's cost over a plain PyTorch loop: the same model, batches and threads, side
by side in one process.

The plain loop is what one writes by hand: for each batch the model's losses, zero_grad,
backward, the recipe's gradient clip if it has one, step. The trainer adds its learning-rate
schedule, metric records, time-budget checks and logs. Both run the same number of steps on
the same batches; passes alternate, so drift on a shared machine hits both alike, and the
median rates are compared.

    python -m train.bench.overhead [--threads 2] [--steps 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from train.cli import build_model, parse_args, train_config
from train.schedule import clip_global_norm
from train.trainer import Trainer, seed_everything

# name: the CLI arguments of the model, as `make quality` trains it
CASES = {
    "vae": ["--model", "vae"],
    "vae_bce": ["--model", "vae", "--likelihood", "bernoulli", "--hidden", "400", "--lr", "5e-3"],
    "wgan": ["--model", "wgan"],
    "gpt": ["--model", "gpt"],
}


class FirstSteps:
    """The first `steps` batches of every epoch of a batch stream, one held-out batch."""

    def __init__(self, batches, steps: int) -> None:
        self.batches, self.steps = batches, steps

    def to(self, device: torch.device) -> FirstSteps:
        self.batches.to(device)
        return self

    def steps_per_epoch(self) -> int:
        return self.steps

    def train(self, seed: int, epoch: int):
        return itertools.islice(self.batches.train(seed, epoch), self.steps)

    def validation(self):
        return itertools.islice(self.batches.validation(), 1)


def plain_loop(model, batches: FirstSteps, cfg) -> float:
    """Seconds for one epoch of `batches` by the plain loop."""
    optimizers = model.configure_optimizers(cfg.lr, cfg.weight_decay)
    model.train()
    started = time.perf_counter()
    for step, batch in enumerate(batches.train(cfg.seed, 0)):
        for name, loss, _ in model.objectives(batch, step):
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                clip_global_norm(optimizers[name], cfg.grad_clip)
            optimizers[name].step()
    return time.perf_counter() - started


def trainer_loop(model, batches: FirstSteps, cfg, run_dir: Path) -> float:
    """Seconds of training (validation and checkpoint excluded) for one epoch of `batches`."""
    trainer = Trainer(model, batches, replace(cfg, epochs=1, max_seconds=0.0), run_dir)
    return trainer.fit()["train_seconds"]


def compare(argv: list[str], steps: int, rounds: int) -> dict:
    """Median samples/s of both loops on the model `argv` describes, and their ratio."""
    args = parse_args(argv)
    cfg = train_config(args)
    seed_everything(cfg.seed)
    model, batches, _ = build_model(args, cfg)
    batches = FirstSteps(batches, steps)
    samples = steps * cfg.batch_size
    plain, ours = [], []
    with tempfile.TemporaryDirectory() as run_dir:
        plain_loop(model, batches, cfg)  # warm-up: allocator, lazy init
        for _ in range(rounds):
            plain.append(samples / plain_loop(model, batches, cfg))
            ours.append(samples / trainer_loop(model, batches, cfg, Path(run_dir)))
    rates = {"plain": float(np.median(plain)), "trainer": float(np.median(ours))}
    return {**rates, "ratio": rates["trainer"] / rates["plain"], "steps": steps, "batch": cfg.batch_size}


def markdown(results: dict, threads: int) -> str:
    lines = [
        f"Trainer against a plain loop, {threads} threads (samples/s, medians):",
        "",
        "| model | plain loop | trainer | trainer / plain |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['plain']:,.0f} | {r['trainer']:,.0f} | {r['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def measure(threads: int, steps: int, rounds: int) -> dict:
    torch.set_num_threads(threads)
    return {name: compare([*argv, "--device", "cpu"], steps, rounds) for name, argv in CASES.items()}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m train.bench.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=40, help="steps per pass")
    p.add_argument("--rounds", type=int, default=3, help="passes of each loop")
    args = p.parse_args()
    print(markdown(measure(args.threads, args.steps, args.rounds), args.threads))


if __name__ == "__main__":
    main()
