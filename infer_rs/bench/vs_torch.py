"""infer_rs against PyTorch eager on the same weights, side by side in one run.

For each thread count, a fresh process (RAYON_NUM_THREADS and torch.set_num_threads)
measures the machine's sgemm ceiling (torch.mm on a large square problem), then times
both engines call by call, interleaved, and reports median and p99 latency, their
ratio, the achieved GFLOP/s or tokens/s, and infer_rs's GFLOP/s as a share of the
ceiling. The header names the CPU, the instruction-set path and the thread counts. The
table goes to stdout and to runs/bench/engine.md.

    python infer_rs/bench/vs_torch.py --artifacts artifacts [--threads 1 2 16] [--quick]
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
QUIET_S = 0.05  # idle time before each block of calls (see side_by_side)
SGEMM_SIZE = 2048  # the ceiling: C = A B with A, B square of this size, 2 n^3 FLOP

# (batch, calls) per workload; --quick divides the calls (at least 2 each).
VAE_BATCHES = [(1, 3000), (100, 500), (1000, 60)]
WGAN_BATCHES = [(100, 500), (1000, 40)]
# GPT greedy from "\n": within the block (127 new tokens fill the 128 positions), then
# past it, where both engines re-prefill the last block_size tokens for every token.
GPT_TOKENS = [(127, 20), (256, 6), (1024, 3)]


def timed(call, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def side_by_side(ours, theirs, reps: int, warm_up: bool = True) -> tuple[list[float], list[float]]:
    """Alternate blocks of calls so drift on a shared machine hits both alike. Each block
    starts after QUIET_S of idleness: the engines share this process, and torch's OpenMP
    workers keep spinning for a while after its last op (libgomp: 300,000 spins, well
    under a millisecond; infer_rs's helper for 50 us), which would take a core from the
    other engine's first calls. Longer gaps cost: after 0.2 s idle, a VM's core ran the
    next 60 ms of calls about 40% slower (its clock, presumably, had dropped)."""
    if warm_up:
        ours(), theirs()
    rounds = min(10, reps)
    a, b = [], []
    for _ in range(rounds):
        time.sleep(QUIET_S)
        a += timed(ours, reps // rounds)
        time.sleep(QUIET_S)
        b += timed(theirs, reps // rounds)
    return a, b


def sgemm_gflops(reps: int) -> float:
    """torch.mm's median GFLOP/s on SGEMM_SIZE^2 float32 matrices: the ceiling."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(SGEMM_SIZE, SGEMM_SIZE, generator=g) for _ in range(2))
    torch.mm(a, b)  # warm-up
    return 2 * SGEMM_SIZE**3 / float(np.median(timed(lambda: torch.mm(a, b), reps))) / 1e9


def worker(artifacts: Path, threads: int, quick: bool) -> dict:
    import torch

    import infer_rs
    from train.export import load

    torch.set_num_threads(threads)

    def calls(n: int) -> int:
        return max(2, n // 50) if quick else n

    rows = []

    def record(workload, flop, ours, theirs, tokens=0):
        row = {"workload": workload, "threads": threads, "flop": flop, "tokens": tokens}
        rows.append({**row, "ours": ours, "torch": theirs})

    ceiling = sgemm_gflops(calls(20))
    with torch.inference_mode():
        # (workload, file, latent width, batches, FLOP per sample, torch's z -> x)
        latent_models = [
            ("VAE decode", "vae", 20, VAE_BATCHES, VAE_DECODER_FLOP, lambda ref: ref.decode),
            ("WGAN generate", "wgan", 100, WGAN_BATCHES, WGAN_GENERATOR_FLOP, lambda ref: ref.generator),
        ]
        for seed, (workload, name, width, batches, flop, torch_fn) in enumerate(latent_models):
            path = artifacts / f"{name}.safetensors"
            ours, ref = infer_rs.Model(path), load(path)
            for batch, reps in batches:
                z = np.random.default_rng(seed).standard_normal((batch, width), dtype=np.float32)
                zt = torch.from_numpy(z)
                theirs = torch_fn(ref)
                a, b = side_by_side(lambda: ours.decode(z), lambda: theirs(zt), calls(reps), not quick)  # noqa: B023
                record(f"{workload}, batch {batch}", flop * batch, a, b)

        gpt_path = artifacts / "gpt.safetensors"
        ours, ref = infer_rs.Model(gpt_path), load(gpt_path)
        prompt = ref.encode("\n")[None, :]
        for tokens, reps in GPT_TOKENS:
            a, b = side_by_side(
                lambda: ours.generate_text("\n", tokens),  # noqa: B023
                lambda: ref.generate(prompt, tokens),  # noqa: B023
                1 if quick else reps,
                not quick,
            )
            record(f"GPT greedy, {tokens} new tokens, batch 1, KV cache", 0, a, b, tokens=tokens)
    return {"rows": rows, "ceiling": ceiling, "cpu": infer_rs.cpu_info()}


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:,.2f} ms"


def table(rows: list[dict], ceilings: dict[int, float]) -> str:
    lines = [
        "| workload | threads | infer_rs median | p99 | torch median | p99 | torch / infer_rs "
        "| same, p10 | infer_rs rate | torch rate | infer_rs / sgemm ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours, theirs = np.median(r["ours"]), np.median(r["torch"])
        if r["tokens"]:
            rate = [f"{r['tokens'] / t:,.0f} tokens/s" for t in (ours, theirs)]
            share = "-"
        else:
            rate = [f"{r['flop'] / t / 1e9:,.1f} GFLOP/s" for t in (ours, theirs)]
            share = f"{100 * r['flop'] / ours / 1e9 / ceilings[r['threads']]:.0f}%"
        p99 = [fmt_time(np.percentile(r[key], 99)) for key in ("ours", "torch")]
        p10 = np.percentile(r["torch"], 10) / np.percentile(r["ours"], 10)
        lines.append(
            f"| {r['workload']} | {r['threads']} | {fmt_time(ours)} | {p99[0]} "
            f"| {fmt_time(theirs)} | {p99[1]} | {theirs / ours:.2f}x | {p10:.2f}x "
            f"| {rate[0]} | {rate[1]} | {share} |"
        )
    return "\n".join(lines)


def header(cpu: dict, ceilings: dict[int, float], quick: bool, title: str = "Engine benchmark") -> str:
    import torch

    threads = ", ".join(str(t) for t in ceilings)
    sgemm = ", ".join(f"{t} thread{'s' * (t > 1)}: {g:,.1f} GFLOP/s" for t, g in ceilings.items())
    return (
        f"{title}{' (--quick: too few calls to trust)' if quick else ''}: "
        f"{cpu['model_name']} ({cpu['vendor']}), {os.cpu_count()} logical cores, "
        f"L2 {cpu['l2_bytes'] >> 10} KiB per core; "
        f"infer_rs on the {cpu['isa']} path (this CPU supports {', '.join(cpu['supported_isas'])}); "
        f"Python {platform.python_version()}, torch {torch.__version__} eager under inference_mode.\n"
        f"Threads {threads}: RAYON_NUM_THREADS and torch.set_num_threads, a fresh process each.\n"
        f"sgemm ceiling (torch.mm, {SGEMM_SIZE}x{SGEMM_SIZE} float32): {sgemm}.\n"
        "Ratios: of the medians (what a caller sees), and of each engine's fastest tenth of "
        "calls (p10: the reading least disturbed by other work on a shared host).\n\n"
    )


def default_threads() -> list[int]:
    """1, 2 and the number of cores, without repeats."""
    return list(dict.fromkeys([1, 2, os.cpu_count() or 1]))


def run_worker(artifacts: Path, threads: int, quick: bool, script: Path = Path(__file__)) -> dict:
    """Runs `script --worker THREADS` in a fresh process on that many threads; its JSON."""
    root = str(Path(__file__).resolve().parents[2])  # so the worker imports train/
    env = {
        **os.environ,
        "RAYON_NUM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": root,
    }
    cmd = [sys.executable, str(script), "--artifacts", str(artifacts), "--worker", str(threads)]
    cmd += ["--quick"] * quick
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    ran = result["cpu"]["threads"]
    assert ran == threads, f"the worker ran infer_rs on {ran} threads, not {threads}"
    return result


def arguments(doc: str) -> argparse.Namespace:
    """The command line both engine benchmarks take (`--worker` is how they run
    themselves once per thread count)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.add_argument("--threads", type=int, nargs="+", default=default_threads(), help="default: 1, 2, cores")
    p.add_argument(
        "--quick", action="store_true", help="a smoke run: few calls per row, numbers not to trust"
    )
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    return p.parse_args()


def run_all(script: Path, args: argparse.Namespace) -> tuple[list[dict], dict[int, dict]]:
    """`script`'s worker once per thread count: every row, by workload then threads, and
    each count's whole result (its ceiling, its CPU, ...)."""
    rows, results = [], {}
    for threads in dict.fromkeys(args.threads):
        results[threads] = run_worker(args.artifacts, threads, args.quick, script)
        rows += results[threads]["rows"]
    order = list(dict.fromkeys(r["workload"] for r in rows))
    rows.sort(key=lambda r: (order.index(r["workload"]), r["threads"]))
    return rows, results


def write_report(name: str, text: str) -> None:
    Path("runs/bench").mkdir(parents=True, exist_ok=True)
    Path(f"runs/bench/{name}").write_text(text)
    print(text)


def main() -> None:
    args = arguments(__doc__)
    if args.worker:
        print(json.dumps(worker(args.artifacts, args.worker, args.quick)))
        return
    rows, results = run_all(Path(__file__), args)
    ceilings = {threads: result["ceiling"] for threads, result in results.items()}
    cpu = next(iter(results.values()))["cpu"]
    write_report("engine.md", header(cpu, ceilings, args.quick) + table(rows, ceilings) + "\n")


if __name__ == "__main__":
    main()
