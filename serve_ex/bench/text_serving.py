"""Text served to many users at once: serve_ex's continuous batching against the same
service one text at a time, and against a Python peer on torch, side by side in one run.

For the demo GPT (`artifacts/gpt.safetensors`) and the `gpt-small` preset (as
initialised: speed does not depend on the weights), each server answers:
- K = 1, 8, 32 and 64 concurrent streamed completions of 120 new tokens over HTTP
  (`/v1/completions`), and K = 1 and 8 of 1,024 (demo GPT only: past the block, each
  token re-prefills the whole window, so one such text costs seconds);
- K = 32 concurrent 120-token requests over AMQP (serve_ex only);
- short among long: 16-token requests, one after another, while four 1,024-token texts
  run; their latency against the same request alone.

Each row: aggregate new tokens/s, time to first token p50/p99, inter-token latency
p50/p99 (each request's mean gap between its tokens), and the ratio to the same
server's K = 1 rate. Servers:
- serve_ex, continuous batching (`MAX_SEQUENCES` 64), engine threads 1 and 2;
- serve_ex, one text at a time (`MAX_SEQUENCES=1`);
- the torch peer (`torch_text_peer.py`): static batching, torch eager, 1 thread.

The table goes to stdout and to runs/bench/text_serving.md.

    PYTHONPATH=. python serve_ex/bench/text_serving.py --models artifacts [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import report
from serve_client import Client
from serve_harness import REPO
from serve_harness.service import Service, free_port

from train.bench.untrained import gpt_small

PROMPT = "ROMEO:"
SAMPLING = {"temperature": 0.8, "top_k": 20}


def completion(base: str, model: str, new_tokens: int, seed: int) -> dict:
    """One streamed completion: when it was sent, when each chunk came and its tokens."""
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": new_tokens,
        "seed": seed,
        "stream": True,
        **SAMPLING,
    }
    post = urllib.request.Request(
        f"{base}/v1/completions", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    sent = time.perf_counter()
    arrivals, tokens = [], 0
    with urllib.request.urlopen(post, timeout=600) as reply:
        for line in reply:
            if not line.startswith(b"data: {"):
                continue
            text = json.loads(line[6:])["choices"][0]["text"]
            if text:
                # a character model: a token is a character
                tokens += len(text)
                arrivals.append((time.perf_counter(), tokens))
    return {"sent": sent, "arrivals": arrivals, "tokens": tokens}


def over_http(base: str, model: str, k: int, new_tokens: int) -> dict:
    with ThreadPoolExecutor(k) as pool:
        started = time.perf_counter()
        runs = list(pool.map(lambda seed: completion(base, model, new_tokens, seed), range(k)))
    wall = time.perf_counter() - started
    ttft = [1000 * (r["arrivals"][0][0] - r["sent"]) for r in runs]
    itl = [
        1000 * (r["arrivals"][-1][0] - r["arrivals"][0][0]) / (r["tokens"] - r["arrivals"][0][1])
        for r in runs
        if r["tokens"] > r["arrivals"][0][1]
    ]
    return {"tps": sum(r["tokens"] for r in runs) / wall, "ttft": ttft, "itl": itl}


def over_amqp(queue: str, model: str, k: int, new_tokens: int) -> dict:
    body = {"v": 1, "model": model, "op": "generate_text", "prompt": PROMPT, "max_new_tokens": new_tokens}
    with Client(queue=queue) as client:
        client.call({**body, "max_new_tokens": 1})  # connected and warm
        started = time.perf_counter()
        ids = [client.send({**body, "seed": seed, **SAMPLING}) for seed in range(k)]
        for cid in ids:
            assert client.wait(cid, timeout=600)["ok"]
        wall = time.perf_counter() - started
    return {"tps": k * new_tokens / wall, "ttft": [], "itl": []}


def short_among_long(base: str, model: str, count: int) -> dict:
    """16-token completions alone, then one after another while four 1,024-token ones run."""

    def short() -> float:
        return completion(base, model, 16, 1)

    def took(run: dict) -> float:
        return run["arrivals"][-1][0] - run["sent"]

    alone = statistics.median(took(short()) for _ in range(count))
    with ThreadPoolExecutor(4) as pool:
        longs = [pool.submit(completion, base, model, 1024, seed) for seed in range(4)]
        time.sleep(0.2)
        among = [took(short()) for _ in range(count)]
        for run in longs:
            run.result()
    return {"alone_ms": 1000 * alone, "among_ms": 1000 * statistics.median(among)}


@contextlib.contextmanager
def torch_peer(models: Path, log: Path) -> Iterator[str]:
    port = free_port()
    script = REPO / "serve_ex" / "bench" / "torch_text_peer.py"
    command = [sys.executable, str(script), "--models", str(models), "--port", str(port)]
    with open(log, "w") as out:
        peer = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            with contextlib.suppress(OSError):
                completion(base, "gpt", 1, 0)
                break
            time.sleep(0.1)
        yield base
    finally:
        peer.terminate()
        peer.wait(timeout=30)


def servers(models: Path) -> Iterator[tuple[str, str, str | None]]:
    """(name, HTTP base, AMQP queue or None) of each server in turn, running."""
    for name, env in [
        ("serve_ex, continuous, 1 engine thread", {"MAX_SEQUENCES": "64"}),
        ("serve_ex, continuous, 2 engine threads", {"MAX_SEQUENCES": "64", "ENGINE_THREADS": "2"}),
        ("serve_ex, one text at a time", {"MAX_SEQUENCES": "1"}),
    ]:
        queue = f"serve_ex.bench_text.{uuid.uuid4().hex[:8]}"
        with Service(models, queue, Path(tempfile.gettempdir()) / f"{queue}.log", **env) as service:
            yield name, f"http://127.0.0.1:{service.port}", queue
    with torch_peer(models, Path(tempfile.gettempdir()) / "torch_text_peer.log") as base:
        yield "torch peer, static batching, 1 thread", base, None


def percentiles(values: list[float]) -> str:
    if not values:
        return "- | -"
    return f"{np.percentile(values, 50):.1f} | {np.percentile(values, 99):.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=Path("artifacts"))
    p.add_argument("--quick", action="store_true", help="K = 1 and 32 only, no 1,024-token rows")
    args = p.parse_args()
    ks = [1, 32] if args.quick else [1, 8, 32, 64]
    long_ks = [] if args.quick else [1, 8]
    work = Path(tempfile.mkdtemp(prefix="bench_text_"))
    shutil.copy(args.models / "gpt.safetensors", work / "gpt.safetensors")
    gpt_small(work)
    rows, mixes = [], []
    try:
        for name, base, queue in servers(work):
            print(f"{name} ...", flush=True)
            for model in ("gpt", "gpt-small"):
                loads = [(k, 120) for k in ks] + ([(k, 1024) for k in long_ks] if model == "gpt" else [])
                alone = None
                for k, new in loads:
                    result = over_http(base, model, k, new)
                    alone = result["tps"] if k == 1 and new == 120 else alone
                    rows.append((model, name, "HTTP", k, new, result, alone))
                if queue is not None:
                    rows.append((model, name, "AMQP", 32, 120, over_amqp(queue, model, 32, 120), alone))
            mixes.append((name, short_among_long(base, "gpt", 3 if args.quick else 8)))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"Text serving on {report.machine()}, prompt {PROMPT!r}, temperature 0.8, top_k 20.",
        "Ratio: aggregate tokens/s over the same server's one 120-token request alone (HTTP).",
        "",
        "| model | server | over | K | new tokens | tokens/s | ratio | TTFT p50 ms | TTFT p99 ms "
        "| inter-token p50 ms | inter-token p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, name, over, k, new, r, alone in rows:
        ratio = f"{r['tps'] / alone:.1f}x" if alone else "-"
        lines.append(
            f"| {model} | {name} | {over} | {k} | {new} | {r['tps']:,.0f} | {ratio} "
            f"| {percentiles(r['ttft'])} | {percentiles(r['itl'])} |"
        )
    lines += [
        "",
        "Short among long (demo GPT): median latency of a 16-token completion alone, and while four",
        "1,024-token completions run.",
        "",
        "| server | alone ms | among long ms | ratio |",
        "|---|---|---|---|",
    ]
    for name, m in mixes:
        lines.append(
            f"| {name} | {m['alone_ms']:.1f} | {m['among_ms']:.1f} | {m['among_ms'] / m['alone_ms']:.1f}x |"
        )
    report.write("text_serving", lines)


if __name__ == "__main__":
    main()
