"""One trainer for every model.

A model exposes:
  configure_optimizers(lr, weight_decay) -> {name: optimizer}
  objectives(batch, step) -> yields (optimizer name, loss, metrics); each loss is
      back-propagated and stepped before the next is computed, which is how the
      WGAN's critic / generator alternation fits the same loop
  validation(batch) -> metrics with a "loss" entry
  sample(n, generator) -> images in [0, 1] or strings
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from train.distributed import SINGLE, Group, data_parallel
from train.flags import knob
from train.runtime import autocast
from train.schedule import clip_global_norm, set_lr, warmup_cosine

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
FID_SAMPLES = 1000
CPU = torch.device("cpu")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = knob(30, "passes over the images; for a text model, rounds of --steps-per-epoch steps")
    steps_per_epoch: int = knob(
        0, "a text model's steps per epoch (random windows, whatever the file's size); image models: 0"
    )
    batch_size: int = knob(128, "samples per optimisation step, over all processes")
    lr: float = knob(1e-3, "peak learning rate")
    weight_decay: float = knob(0.0, "decoupled for AdamW, L2 for Adam")
    warmup_steps: int = knob(0, "linear warm-up steps before the cosine decay")
    min_lr_ratio: float = knob(1.0, "final lr / peak lr; 1.0 keeps the lr constant")
    grad_clip: float = knob(0.0, "global-norm clip; 0 disables")
    patience: int = knob(0, "stop after this many epochs without a better held-out loss; 0: never")
    seed: int = knob(0, "seeds weights, data order and every random draw")
    max_seconds: float = knob(0.0, "wall-clock training budget; 0: none")
    log_every: int = knob(10, "steps between lines in the metrics log")
    keep_best: bool = knob(True, "end on the weights of the best held-out loss, not the last")
    ema: float = knob(
        0.0,
        "decay per step of an exponential moving average of the exported weights (0: off); "
        "validation, samples and the export then use the average, and keep_best is moot",
    )
    fid_every: int = knob(
        0,
        f"epochs between FIDs of {FID_SAMPLES:,} samples against the held-out digits, logged with the "
        "training seconds (image models on the packaged digits); 0: never",
    )

    def __post_init__(self) -> None:
        at_least = {
            "epochs": 1,
            "batch_size": 1,
            "log_every": 1,
            "steps_per_epoch": 0,
            "warmup_steps": 0,
            "weight_decay": 0,
            "grad_clip": 0,
            "patience": 0,
            "max_seconds": 0,
            "lr": 0,
            "fid_every": 0,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            assert value >= low, f"--{name.replace('_', '-')} must be at least {low}, got {value}"
        assert 0 <= self.ema < 1, f"--ema must be in [0, 1), got {self.ema}"
        assert 0 < self.min_lr_ratio <= 1, f"--min-lr-ratio must be in (0, 1], got {self.min_lr_ratio}"

    def describe(self) -> str:
        """The schedule in words, e.g. "3e-3 cosine, batch 128, 30 epochs"."""
        lr = np.format_float_scientific(self.lr, trim="-", exp_digits=1)
        schedule = " cosine" if self.min_lr_ratio < 1 else ""
        budget = f"{self.epochs} epochs"
        if self.max_seconds:
            budget = f"{self.max_seconds:g} s"
        return f"{lr}{schedule}, batch {self.batch_size}, {budget}"


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Restore what was captured; CUDA streams only when both runs had CUDA."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]][: torch.cuda.device_count()])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class WeightAverage:
    """An exponential moving average of the weights a model exports (Polyak averaging;
    for a GAN's generator, Yazici et al. 2019, "The Unusual Effectiveness of Averaging in
    GAN Training"): after step t, avg <- d_t avg + (1 - d_t) w, with
    d_t = min(decay, (1 + t) / (10 + t)), so that early on the average follows the
    weights instead of remembering their initialisation."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        # views of the exported weights, which optimisers and load_state_dict update in place
        self.live = model.export_state()
        self.shadow = {k: v.detach().clone() for k, v in self.live.items()}

    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for key, avg in self.shadow.items():
                avg.lerp_(self.live[key], 1 - d)
        self.updates += 1

    def swap(self) -> None:
        """Exchanges the model's exported weights with the average (twice: back as before)."""
        with torch.no_grad():
            for key, avg in self.shadow.items():
                live = self.live[key].clone()
                self.live[key].copy_(avg)
                avg.copy_(live)


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        batches,
        cfg: TrainConfig,
        run_dir: Path,
        device: torch.device = CPU,
        amp_dtype: torch.dtype | None = None,
        group: Group = SINGLE,
        fid: Callable[[torch.Tensor], float] | None = None,
    ) -> None:
        """Moves the model and, once, all of the data to `device`; amp_dtype autocasts;
        a group of several ranks trains data-parallel. With `fid` (the FID of images in
        [0, 1]) and `cfg.fid_every`, the samples' FID is logged every that many epochs."""
        self.device, self.amp_dtype, self.group, self.fid = device, amp_dtype, group, fid
        self.model, self.batches, self.cfg = model.to(device), batches.to(device), cfg
        self.optimizers = model.configure_optimizers(cfg.lr, cfg.weight_decay)
        # each of several optimizers steps only its own part of the model
        self.advance = data_parallel(self.model, group, device, partial=len(self.optimizers) > 1)
        self.run_dir = Path(run_dir)
        if group.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimisation rounds (batches) completed
        self.best_val = float("inf")
        self.best_state: dict | None = None
        self.bad_epochs = 0
        self.train_seconds = 0.0
        self.history: list[dict] = []
        self.average = WeightAverage(self.model, cfg.ema) if cfg.ema else None

    # --- checkpoints ---------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        path = self.run_dir / CHECKPOINT
        if not self.group.writes:
            return path
        state = {
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "rng": capture_rng(),
            "epoch": self.epoch,
            "step": self.step,
            "best_val": self.best_val,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "train_seconds": self.train_seconds,
            "history": self.history,
            "train_config": asdict(self.cfg),
            "average": (self.average.shadow, self.average.updates) if self.average else None,
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # atomic: a crash mid-save leaves the previous checkpoint
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        restore_rng(state["rng"])
        for key in ("epoch", "step", "best_val", "best_state", "bad_epochs", "train_seconds", "history"):
            setattr(self, key, state[key])
        if self.average and state.get("average"):
            self.average.shadow, self.average.updates = state["average"]

    # --- the loop ----------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        total = self.cfg.epochs * self.batches.steps_per_epoch()
        return self.cfg.lr * warmup_cosine(step, total, self.cfg.warmup_steps, self.cfg.min_lr_ratio)

    def train_step(self, batch) -> dict:
        lr = self.lr_at(self.step)
        metrics = {"lr": lr}
        objectives = self.model.objectives(self.group.shard(batch), self.step)
        while True:
            try:
                with autocast(self.device, self.amp_dtype):  # the forward pass; backward outside
                    name, loss, terms = self.advance(objectives)
            except StopIteration:
                break
            opt = self.optimizers[name]
            set_lr(opt, lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip > 0:
                metrics[f"grad_norm_{name}"] = clip_global_norm(opt, self.cfg.grad_clip)
            opt.step()
            metrics.update({k: float(v) for k, v in terms.items()})
        if self.average:
            self.average.update()
        self.step += 1
        return metrics

    def validate_averaged(self) -> dict:
        """`validate` on the average of the weights, if the run keeps one."""
        if not self.average:
            return self.validate()
        self.average.swap()
        try:
            return self.validate()
        finally:
            self.average.swap()

    def validate(self) -> dict:
        """The held-out means. The noise a model draws while validating (the VAE's z)
        is the same at every call, and the training's RNG is left where it was: the same
        weights always give the same loss, so the loss that picked the best epoch is the
        one the run reports at its end."""
        self.model.eval()
        sums: dict[str, float] = {}
        count = 0
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.cfg.seed)
            for batch in self.batches.validation():
                n = len(batch[0])
                with autocast(self.device, self.amp_dtype):
                    metrics = self.model.validation(batch)
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * n
                count += n
        self.model.train()
        return {k: v / count for k, v in sums.items()}

    def measure_fid(self) -> dict:
        """The FID of FID_SAMPLES samples of the exported weights (the average, if the
        run keeps one), drawn on the run's seed, and what measuring it cost; the cost is
        not counted as training time."""
        started = time.perf_counter()
        if self.average:
            self.average.swap()
        self.model.eval()
        try:
            generator = torch.Generator().manual_seed(self.cfg.seed)
            samples = self.model.sample(FID_SAMPLES, generator).float().cpu()
        finally:
            self.model.train()
            if self.average:
                self.average.swap()
        return {"fid": self.fid(samples), "cost_seconds": round(time.perf_counter() - started, 3)}

    def log(self, record: dict) -> None:
        self.history.append(record)
        if not self.group.writes:
            return
        with open(self.run_dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")

    def out_of_time(self, started: float) -> bool:
        budget = self.cfg.max_seconds
        return budget > 0 and self.train_seconds + (time.perf_counter() - started) >= budget

    def fit(self) -> dict:
        """Train until epochs run out, early stopping fires or the time budget is spent.

        Returns a summary; the model is left holding the average of its weights if the
        run keeps one, else the best validated weights (or the last, without keep_best).
        """
        self.model.train()
        stopped = "epochs"
        while self.epoch < self.cfg.epochs:
            if self.group.world > 1:
                seed_everything(self.group.epoch_seed(self.cfg.seed, self.epoch))
            started = time.perf_counter()
            window: dict[str, list[float]] = {}
            bar = tqdm(
                self.batches.train(self.cfg.seed, self.epoch),
                total=self.batches.steps_per_epoch(),
                desc=f"{self.model.arch} epoch {self.epoch + 1}/{self.cfg.epochs}",
                leave=False,
                dynamic_ncols=True,
                disable=not (self.group.writes and sys.stdout.isatty()),  # logs get epoch lines
            )
            for batch in bar:
                if not self.group.splits(batch):
                    continue
                for key, value in self.train_step(batch).items():
                    window.setdefault(key, []).append(value)
                if self.step % self.cfg.log_every == 0:
                    means = {k: float(np.mean(v)) for k, v in window.items()}
                    self.log({"kind": "train", "epoch": self.epoch, "step": self.step, **means})
                    bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}")
                    window = {}
                if self.group.any(self.out_of_time(started)):
                    stopped = "time budget"
                    break
            bar.close()
            self.train_seconds += time.perf_counter() - started
            self.epoch += 1
            val = self.group.from_writer(self.validate_averaged())  # every rank decides alike
            improved = val["loss"] < self.best_val
            if improved:
                self.best_val = val["loss"]
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
            self.log({"kind": "val", "epoch": self.epoch, "step": self.step, **val})
            fid = ""
            if self.fid and self.cfg.fid_every and self.epoch % self.cfg.fid_every == 0 and self.group.writes:
                seconds = round(self.train_seconds, 2)
                self.log({"kind": "fid", "epoch": self.epoch, "seconds": seconds, **self.measure_fid()})
                fid = f", FID {self.history[-1]['fid']:.2f}"
            if self.group.writes:
                tqdm.write(
                    f"{self.model.arch} epoch {self.epoch}: val loss {val['loss']:.4f}"
                    f"{' (best)' if improved else ''}{fid}  [{self.train_seconds:.0f}s]"
                )
            self.save_checkpoint()
            if stopped == "time budget":
                break
            if self.cfg.patience and self.bad_epochs >= self.cfg.patience:
                stopped = "early stopping"
                break
        if self.average:
            self.average.swap()  # the model ends on the average
            self.average = None
        elif self.cfg.keep_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return {
            "stopped_by": stopped,
            "epochs": self.epoch,
            "steps": self.step,
            "best_val_loss": self.best_val,
            "train_seconds": round(self.train_seconds, 2),
        }
