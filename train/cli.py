"""`python -m train --model NAME ...`: train, plot, export.

Each model's network, sizes and recipe come from `train.presets.MODELS`; every flag,
generated from the config dataclasses, overrides them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from train import plots
from train.batches import ImageBatches, TextBatches
from train.data import load_images, load_text
from train.distributed import first_rank, join, leave
from train.errors import TrainError
from train.export import export, read_metadata
from train.fid import shared_reference
from train.flags import add_flags, build, flag_name, given
from train.models import ARCHITECTURES
from train.presets import MODELS, Preset
from train.runtime import RuntimeConfig, autocast_dtype, resolve_device
from train.trainer import CHECKPOINT, METRICS, TrainConfig, Trainer, seed_everything

GPT_DEFAULT_PROMPT = "ROMEO:"
NETWORKS = tuple(ARCHITECTURES.values())


def models_text() -> str:
    """Each model, its recipe and its sizes, for --help."""
    lines = ["models (the flags above override these):"]
    for name, preset in MODELS.items():
        cfg = preset.network.Config(**preset.sizes)
        lines.append(f"  {name:<10} {preset.about}")
        lines.append(f"  {'':<10} {preset.network.recipe(cfg, preset.recipe)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a VAE, WGAN-GP or char-level GPT offline and export it to safetensors.",
        epilog=models_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, choices=list(MODELS), help="which model (listed below)")
    p.add_argument(
        "--data",
        help="images: folder of MNIST IDX files or mlxtend-style CSV; "
        "text: a UTF-8 file (default: the packaged MNIST digits / Shakespeare)",
    )
    p.add_argument("--name", help="artifact and run name (default: the model name)")
    p.add_argument("--out", default="artifacts", help="where the .safetensors goes")
    p.add_argument(
        "--force", action="store_true", help="replace an artifact of the same name trained on other data"
    )
    p.add_argument("--runs", default="runs", help="where logs, checkpoints and plots go")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--prompt", default=GPT_DEFAULT_PROMPT, help="prompt of the GPT's text samples")
    seen: set[str] = set()
    add_flags(p.add_argument_group("runtime"), RuntimeConfig, seen)
    add_flags(p.add_argument_group("trainer (defaults depend on --model)"), TrainConfig, seen)
    for network in NETWORKS:
        group = p.add_argument_group(f"{network.arch} sizes (defaults depend on --model)")
        add_flags(group, network.Config, seen)
    return p.parse_args(argv)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The model's recipe, overridden by every trainer flag given on the command line."""
    return build(TrainConfig, {**asdict(MODELS[args.model].recipe), **given(args, TrainConfig)}, "trainer")


def runtime_config(args: argparse.Namespace) -> RuntimeConfig:
    return build(RuntimeConfig, given(args, RuntimeConfig), "runtime")


def model_sizes(args: argparse.Namespace, preset: Preset) -> dict:
    """The preset's sizes and the size flags given; a flag of another network is an error."""
    own = given(args, preset.network.Config)
    for network in NETWORKS:
        for name in given(args, network.Config).keys() - own.keys():
            flag = flag_name(name)
            raise TrainError(f"{flag} is a {network.arch} setting; --model {args.model} has no use for it")
    return {**preset.sizes, **own}


def build_model(args: argparse.Namespace, cfg: TrainConfig):
    """The model, its batch stream and the data source for provenance."""
    preset = MODELS[args.model]
    network, sizes = preset.network, model_sizes(args, preset)
    if network.data == "text":
        split = load_text(args.data)
        model_cfg = build(network.Config, {"vocab": split.vocab, **sizes}, args.model)
        if len(split.val_ids) <= model_cfg.block_size + 1:
            raise TrainError(
                f"{split.source} is too short: its held-out tenth has "
                f"{len(split.val_ids)} characters, fewer than block_size {model_cfg.block_size} + 2; "
                "give more text or a smaller --block-size"
            )
        if cfg.steps_per_epoch < 1:
            raise TrainError(f"--steps-per-epoch must be at least 1 for --model {args.model}")
        steps = cfg.steps_per_epoch
        batches = TextBatches(split, cfg.batch_size, model_cfg.block_size, steps, val_batches=20)
        return network(model_cfg), batches, split.source
    if cfg.steps_per_epoch:
        raise TrainError(f"--model {args.model} makes passes over the images; leave out --steps-per-epoch")
    split = load_images(args.data, cfg.seed)
    model = network(build(network.Config, sizes, args.model))
    return model, ImageBatches(split, cfg.batch_size, model.prepare_images), split.source


def write_samples(model, batches, run_dir: Path, name: str, prompt: str) -> list[Path]:
    """Samples on a fixed seed: a text model's to samples.txt, an image model's to samples.png,
    and a model that reconstructs its held-out images to recon.png."""
    gen = torch.Generator().manual_seed(1234)
    if model.data == "text":
        return [write_text_samples(model, gen, run_dir / "samples.txt", prompt)]
    images = model.sample(100, gen).numpy()
    paths = [plots.image_grid(images, run_dir / "samples.png", f"{name}: 100 samples")]
    if hasattr(model, "reconstruct"):
        x, y = batches.val_x[:50], batches.val_y[:50]
        title = f"{name}: held-out digits (odd rows) and reconstructions"
        paths.append(
            plots.reconstructions(x.numpy(), model.reconstruct(x, y).numpy(), run_dir / "recon.png", title)
        )
    return paths


def write_text_samples(model, gen: torch.Generator, path: Path, prompt: str) -> Path:
    """The greedy continuation of the prompt and two sampled ones; a prompt the vocabulary
    cannot spell gives way to its first character."""
    if set(prompt) - set(model.cfg.vocab):
        prompt = model.cfg.vocab[0]
    greedy = model.sample(1, gen, prompt=prompt, length=300, temperature=0.0)[0]
    sampled = model.sample(2, gen, prompt=prompt, length=500)
    path.write_text(
        f"=== greedy ===\n{greedy}\n\n"
        + "".join(
            f"=== temperature 0.8, top-k 20, sample {i + 1} ===\n{s}\n\n" for i, s in enumerate(sampled)
        )
    )
    return path


def replacing(path: Path, source: str, force: bool) -> str | None:
    """What the artifact at `path` holds, if there is one (its data, epochs and date).
    Refuses, before anything is trained or written, to replace one trained on other data
    than `source` unless `force`."""
    if not path.exists():
        return None
    try:
        provenance = json.loads(read_metadata(path).get("provenance", "{}"))
    except (TrainError, ValueError):
        provenance = {}
    data = provenance.get("data", "unknown data")
    epochs, date = provenance.get("epochs", "?"), provenance.get("exported_at", "?")
    held = f"a model trained on {data}, {epochs} epochs, {date}"
    if data != source and not force:
        raise TrainError(
            f"{path} holds {held}; this run trains on {source}. Keep both with --name NAME "
            "(make train NAME=...), or replace it with --force (make train FORCE=1)"
        )
    return held


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


def fid_yardstick(args: argparse.Namespace, cfg: TrainConfig):
    """What --fid-every measures with: `train.fid.Reference`'s FID against the packaged
    digits' held-out split, the yardstick of `make demo` and `make quality`."""
    if not cfg.fid_every:
        return None
    if MODELS[args.model].network.data == "text" or args.data:
        raise TrainError(
            "--fid-every measures image models trained on the packaged digits; "
            f"leave it out for --model {args.model}{' with --data' if args.data else ''}"
        )
    return shared_reference().fid


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
    cfg = train_config(args)
    if cfg.batch_size % group.world:
        raise TrainError(
            f"--batch-size {cfg.batch_size} does not split evenly over {group.world} processes; "
            "give a multiple of --nproc_per_node"
        )
    name = args.name or args.model
    run_dir = Path(args.runs) / name
    fid = fid_yardstick(args, cfg)  # before the run's seeding: building it draws random numbers
    seed_everything(cfg.seed)
    model, batches, source = build_model(args, cfg)
    artifact_path = Path(args.out) / f"{name}.safetensors"
    replaced = replacing(artifact_path, source, args.force)
    if replaced:
        say(f"{artifact_path} will be replaced; it holds {replaced}")
    if runtime.compile:
        model.compile()
    trainer = Trainer(model, batches, cfg, run_dir, device, amp_dtype, group, fid)
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
        model=args.model,
        recipe=model.recipe(model.cfg, cfg),
        model_config=asdict(model.cfg),
        train_config=asdict(cfg),
        device=str(device),
        precision=precision,
        exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    artifact = export(model, artifact_path, summary)
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
