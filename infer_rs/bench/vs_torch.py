"""infer_rs against PyTorch eager on the same weights, side by side in one run.

For each thread count, a fresh process times both engines call by call, interleaved,
and reports median and p99 latency, their ratio and the achieved GFLOP/s. The
table goes to stdout and to runs/bench/engine.md.

    python infer_rs/bench/vs_torch.py --artifacts artifacts
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

VAE_DECODER_FLOP = 2 * (20 * 200 + 200 * 400 + 400 * 784)  # per sample: 0.795 MFLOP
WGAN_GENERATOR_FLOP = 2 * (100 * 256 + 256 * 512 + 512 * 784)  # per sample
GPT_NEW_TOKENS = 127


def timed(call, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def side_by_side(ours, theirs, reps: int, rounds: int = 5) -> tuple[list[float], list[float]]:
    """Alternate blocks of calls so drift on a shared machine hits both alike."""
    ours(), theirs()  # warm-up
    a, b = [], []
    for _ in range(rounds):
        a += timed(ours, reps // rounds)
        b += timed(theirs, reps // rounds)
    return a, b


def worker(artifacts: Path, threads: int) -> list[dict]:
    import torch

    import infer_rs
    from train.export import load

    torch.set_num_threads(threads)
    rows = []

    def record(workload, flop, ours, theirs, unit="call"):
        rows.append(
            {
                "workload": workload,
                "threads": threads,
                "flop": flop,
                "unit": unit,
                "ours": ours,
                "torch": theirs,
            }
        )

    vae_path = artifacts / "vae.safetensors"
    ours, ref = infer_rs.Model(vae_path), load(vae_path)
    for batch, reps in [(1, 3000), (100, 500), (1000, 60)]:
        z = np.random.default_rng(0).standard_normal((batch, 20), dtype=np.float32)
        zt = torch.from_numpy(z)
        with torch.inference_mode():
            a, b = side_by_side(lambda: ours.decode(z), lambda: ref.decode(zt), reps)  # noqa: B023
        record(f"VAE decode, batch {batch}", VAE_DECODER_FLOP * batch, a, b)

    wgan_path = artifacts / "wgan.safetensors"
    ours, ref = infer_rs.Model(wgan_path), load(wgan_path)
    z = np.random.default_rng(1).standard_normal((100, 100), dtype=np.float32)
    zt = torch.from_numpy(z)
    with torch.inference_mode():
        a, b = side_by_side(lambda: ours.decode(z), lambda: ref.generator(zt), 500)
    record("WGAN generate, batch 100", WGAN_GENERATOR_FLOP * 100, a, b)

    gpt_path = artifacts / "gpt.safetensors"
    ours, ref = infer_rs.Model(gpt_path), load(gpt_path)
    prompt = ref.encode("\n")[None, :]
    with torch.inference_mode():
        a, b = side_by_side(
            lambda: ours.generate_text("\n", GPT_NEW_TOKENS),
            lambda: ref.generate(prompt, GPT_NEW_TOKENS),
            20,
        )
    record(f"GPT greedy, {GPT_NEW_TOKENS} new tokens, batch 1, KV cache", 0, a, b, unit="tokens")
    return rows


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:,.2f} ms"


def table(rows: list[dict]) -> str:
    lines = [
        "| workload | threads | infer_rs median | p99 | torch median | p99 | torch / infer_rs "
        "| infer_rs rate | torch rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours, theirs = np.median(r["ours"]), np.median(r["torch"])
        if r["unit"] == "tokens":
            rate = [f"{GPT_NEW_TOKENS / t:,.0f} tokens/s" for t in (ours, theirs)]
        else:
            rate = [f"{r['flop'] / t / 1e9:,.1f} GFLOP/s" for t in (ours, theirs)]
        p99 = [fmt_time(np.percentile(r[key], 99)) for key in ("ours", "torch")]
        lines.append(
            f"| {r['workload']} | {r['threads']} | {fmt_time(ours)} | {p99[0]} "
            f"| {fmt_time(theirs)} | {p99[1]} | {theirs / ours:.2f}x "
            f"| {rate[0]} | {rate[1]} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.artifacts, args.worker)))
        return
    rows = []
    for threads in args.threads:
        root = str(Path(__file__).resolve().parents[2])  # so the worker imports train/
        env = {
            **os.environ,
            "RAYON_NUM_THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": root,
        }
        cmd = [sys.executable, __file__, "--artifacts", str(args.artifacts), "--worker", str(threads)]
        rows += json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
    rows.sort(key=lambda r: (r["workload"], r["threads"]))
    import torch

    header = (
        f"Engine benchmark: {machine()}, torch {torch.__version__} eager under inference_mode. "
        "Threads: torch.set_num_threads and RAYON_NUM_THREADS.\n\n"
    )
    out = header + table(rows) + "\n"
    Path("runs/bench").mkdir(parents=True, exist_ok=True)
    Path("runs/bench/engine.md").write_text(out)
    print(out)


if __name__ == "__main__":
    main()
