"""`make gpu-check`: train each model briefly on a CUDA GPU and print its throughput and
held-out loss next to the reference figures of plain PyTorch scripts on an NVIDIA H200
(torch 2.11, the same offline data).

Goals: at least 90% of each reference throughput at the same config, and gpt-small's
held-out loss at most 1.45 within 120 s. Without a CUDA device it says so on one `error:`
line and exits with status 2. The table goes to stdout and to runs/gpu_check/gpu_check.md.

    python -m train.bench.gpu_check [--device cuda:N]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from train.bench.quality import throughput, train
from train.errors import TrainError
from train.runtime import resolve_device

OUT = Path("runs/gpu_check")
THROUGHPUT_GOAL = 0.9  # share of the reference throughput
GPT_SMALL_LOSS_GOAL = 1.45


@dataclass(frozen=True)
class Check:
    name: str
    argv: list[str]  # after --model ... --device
    recipe: str  # the reference's, in words
    reference_rate: float | None  # samples/s or tokens/s of the reference
    reference_loss: float | None
    unit: str  # "samples/s" | "tokens/s" | "G steps/s" (WGAN generator steps)


BF16_COMPILED = ["--precision", "bf16", "--compile"]
CHECKS = [
    Check("vae", ["--model", "vae", "--epochs", "30"], "30 epochs, batch 128", 35_000, 33.8, "samples/s"),
    Check("wgan", ["--model", "wgan", "--epochs", "20"], "20 epochs, batch 64", None, None, "G steps/s"),
    Check(
        "gpt",
        ["--model", "gpt", "--epochs", "1000", "--max-seconds", "60"],
        "batch 32, eager, 60 s",
        378_000,
        1.61,
        "tokens/s",
    ),
    Check(
        "gpt-small",
        ["--model", "gpt-small", "--epochs", "1000", "--max-seconds", "120", *BF16_COMPILED],
        "6x6x384, block 256, batch 64, bf16 + compile, 120 s",
        1_020_000,
        1.448,
        "tokens/s",
    ),
]


def row(check: Check, summary: dict) -> str:
    measured, loss = throughput(summary, check.unit), summary["final_val"]["loss"]
    if check.reference_rate:
        share = measured / check.reference_rate
        verdict = "met" if share >= THROUGHPUT_GOAL else f"missed (goal {THROUGHPUT_GOAL:.0%})"
        ours = f"{measured:,.0f} {check.unit} ({share:.0%}, {verdict})"
    else:
        ours = f"{measured:,.1f} {check.unit}"
    reference = f"{check.reference_rate:,.0f}" if check.reference_rate else "-"
    ref_loss = f"{check.reference_loss}" if check.reference_loss else "-"
    if check.name == "gpt-small":
        ref_loss += f" (goal <= {GPT_SMALL_LOSS_GOAL}: {'met' if loss <= GPT_SMALL_LOSS_GOAL else 'missed'})"
    return f"| {check.name} | {check.recipe} | {ours} | {reference} | {loss:.3f} | {ref_loss} |"


def table(device: torch.device, results: list[tuple[Check, dict]]) -> str:
    lines = [
        f"GPU check on {torch.cuda.get_device_name(device)}, torch {torch.__version__}",
        "",
        "| model | recipe | throughput (share of reference) | reference | held-out loss | reference |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(lines + [row(check, summary) for check, summary in results]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda or cuda:N")
    args = p.parse_args(argv)
    try:
        if not args.device.startswith("cuda"):
            raise TrainError(f"--device {args.device}: the GPU check runs on cuda or cuda:N")
        if not torch.cuda.is_available():
            raise TrainError(f"the GPU check needs a CUDA GPU, and torch {torch.__version__} sees none here")
        device = resolve_device(args.device)
    except TrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = []
    for check in CHECKS:
        print(f"== {check.name}: {check.recipe}", flush=True)
        argv = [*check.argv, "--device", str(device)]
        results.append((check, train(check.name, argv, torch.get_num_threads(), OUT)))
    text = table(device, results)
    (OUT / "gpu_check.md").write_text(text)
    (OUT / "gpu_check.json").write_text(json.dumps([s for _, s in results], indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
