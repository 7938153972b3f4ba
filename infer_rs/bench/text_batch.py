"""Batched text generation: infer_rs's decoding batch (`Model.generate_texts`) against
torch eager `generate` on the same batch of prompts, side by side in one run.

For each thread count, a fresh process measures the sgemm ceiling (as vs_torch.py does),
then generates B texts at once for B = 1, 8, 32 and 64: within the block (120 new
tokens from a one-character prompt) and past it (new tokens after a prompt that fills the
block, each of which re-prefills the whole slid window), greedy and sampled, on the demo
GPT (`artifacts/gpt.safetensors`) and on the `gpt-small` preset (6 x 6 x 384, block 256,
weights as initialised: speed does not depend on them). Each row gives aggregate new
tokens/s of both engines, their ratio, and infer_rs's FLOP rate (the work its kernels do,
counted below) as a share of the ceiling. Then the step time of a batch of 64 live
sequences, alone and while a 1,024-character prompt joins (it prefills in chunks).
The table goes to stdout and to runs/bench/text_batch.md.

    python infer_rs/bench/text_batch.py --artifacts artifacts [--threads 1 2] [--quick]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

# run as a script, this folder is on the import path
from vs_torch import arguments, header, run_all, sgemm_gflops, side_by_side, write_report

WITHIN_NEW = 120  # new tokens from a one-character prompt: all within a block of 128
BATCHES = [1, 8, 32, 64]


def engine_flop(cfg: dict, prompt_len: int, new_tokens: int) -> float:
    """Multiply-adds x 2 the engine computes for one sequence: per row and layer, the
    dense layers' 24 C^2 (c_attn 3C^2, c_proj C^2, the MLP 8C^2) and attention's 4 C p
    over its p visible positions; the last layer of a step only for the row that picks
    (its keys and values for every row); the tied head 2 C V per new token. A step within
    the block feeds one row; past it, the whole slid window (block rows) again."""
    c, block, layers, vocab = cfg["n_embd"], cfg["block_size"], cfg["n_layer"], len(cfg["vocab"])
    total, length = 0.0, prompt_len
    for step in range(new_tokens):
        if step == 0 or length > block:
            rows = min(length, block)
            start = 0
        else:
            rows, start = 1, length - 1
        positions = [start + i + 1 for i in range(rows)]
        full = 24 * c * c * rows + 4 * c * sum(positions)
        last = 6 * c * c * rows + 18 * c * c + 4 * c * positions[-1]
        total += (layers - 1) * full + last + 2 * c * vocab
        length += 1
    return total


def workloads(quick: bool) -> list[tuple]:
    """(model, label, prompt length or None for a full block, new tokens, batch, sampled)."""
    rows = []
    for model in ("demo GPT", "gpt-small"):
        for b in BATCHES:
            rows.append((model, "within the block", 1, WITHIN_NEW, b, False))
        rows.append((model, "within the block", 1, WITHIN_NEW, 32, True))
    past = [("demo GPT", 64, b) for b in (1, 8, 32)] + [("gpt-small", 8, b) for b in (1, 8)]
    for model, new, b in past:
        rows.append((model, "past the block", None, 4 if quick else new, b, False))
    return rows


def worker(artifacts: Path, threads: int, quick: bool) -> dict:
    import torch

    import infer_rs
    from train.export import load

    torch.set_num_threads(threads)
    ceiling = sgemm_gflops(4 if quick else 20)
    from train.bench.untrained import gpt_small

    paths = {"demo GPT": artifacts / "gpt.safetensors", "gpt-small": gpt_small(Path(tempfile.mkdtemp()))}
    models = {name: (infer_rs.Model(path), load(path)) for name, path in paths.items()}
    rows = []
    with torch.inference_mode():
        for model, label, prompt_len, new, batch, sampled in workloads(quick):
            ours, ref = models[model]
            cfg = ours.config
            length = prompt_len or cfg["block_size"]
            prompt = ("ROMEO:\n" * length)[:length]
            sampling = {"temperature": 0.8, "top_k": 20} if sampled else {}
            seeds = list(range(batch))
            ids = ref.encode(prompt)[None, :].repeat(batch, 1)
            generator = torch.Generator().manual_seed(0)
            a, b = side_by_side(
                lambda: ours.generate_texts([prompt] * batch, new, seeds=seeds, **sampling),  # noqa: B023
                lambda: ref.generate(ids, new, generator=generator, **sampling),  # noqa: B023
                1 if quick or batch * new * length > 20_000 else 3,
                warm_up=not quick and batch * new <= 8 * WITHIN_NEW,
            )
            rows.append(
                {
                    "workload": f"{model}, {label}, {'sampled' if sampled else 'greedy'}, "
                    f"{new} new tokens, B = {batch}",
                    "threads": threads,
                    "tokens": batch * new,
                    "flop": batch * engine_flop(cfg, length, new),
                    "ours": a,
                    "torch": b,
                }
            )
        steps = step_times(models["demo GPT"][0], quick)
    return {"rows": rows, "ceiling": ceiling, "steps": steps, "cpu": infer_rs.cpu_info()}


def step_times(model, quick: bool) -> dict:
    """Step times (s) of 64 live sequences within the block: their median alone, and the
    longest while a 1,024-character prompt joins and prefills in chunks."""
    batch = model.decoding_batch(max_sequences=65)
    for seed in range(64):
        batch.join("\n", 1000, seed=seed)
    for _ in range(8):
        batch.step()  # every joiner prefilled, the caches warm

    def timed_step() -> float:
        start = time.perf_counter()
        batch.step()
        return time.perf_counter() - start

    alone = [timed_step() for _ in range(8 if quick else 32)]
    batch.join(("ROMEO:\n" * 200)[:1024], 10, seed=99)
    joining = [timed_step() for _ in range(4)]
    return {"alone": float(np.median(alone)), "joining": max(joining), "block": model.config["block_size"]}


def table(rows: list[dict], ceilings: dict[int, float]) -> str:
    lines = [
        "| workload | threads | infer_rs tokens/s | torch tokens/s | infer_rs / torch "
        "| infer_rs GFLOP/s | infer_rs / sgemm ceiling |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours, theirs = np.median(r["ours"]), np.median(r["torch"])
        gflops = r["flop"] / ours / 1e9
        lines.append(
            f"| {r['workload']} | {r['threads']} | {r['tokens'] / ours:,.0f} | {r['tokens'] / theirs:,.0f} "
            f"| {theirs / ours:.2f}x | {gflops:,.1f} | {100 * gflops / ceilings[r['threads']]:.0f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    args = arguments(__doc__)
    if args.worker:
        print(json.dumps(worker(args.artifacts, args.worker, args.quick)))
        return
    rows, results = run_all(Path(__file__), args)
    ceilings = {threads: result["ceiling"] for threads, result in results.items()}
    cpu = next(iter(results.values()))["cpu"]
    out = header(cpu, ceilings, args.quick, "Batched text generation") + table(rows, ceilings) + "\n\n"
    for threads, result in results.items():
        s = result["steps"]
        out += (
            f"Demo GPT, 64 live sequences, {threads} thread{'s' * (threads > 1)}: a step takes "
            f"{s['alone'] * 1e3:.2f} ms (median); while a 1,024-character prompt joins (its last "
            f"{s['block']} characters prefilled in chunks), the longest step takes "
            f"{s['joining'] * 1e3:.2f} ms.\n"
        )
    write_report("text_batch.md", out)


if __name__ == "__main__":
    main()
