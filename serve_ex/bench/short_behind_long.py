"""How long a 1-token GPT request waits behind the largest allowed GPT requests
(1,024-character prompt, 1,024 new tokens), and how long a VAE request waits.

Starts one serve_ex node on the given models and, for 0, 1 and 3 long requests in
flight, times short requests sent one after another while the long ones run.

    python serve_ex/bench/short_behind_long.py --models artifacts
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import report
from serve_client import Client
from serve_harness.service import Service

LONGEST = {"v": 1, "model": "gpt", "op": "generate_text", "prompt": "A" * 1024, "max_new_tokens": 1024}
SHORT = {
    "gpt, 1 token": {"v": 1, "model": "gpt", "op": "generate_text", "prompt": "A", "max_new_tokens": 1},
    "vae, n=1": {"v": 1, "model": "vae", "op": "generate", "n": 1},
}


def short_latencies(client: Client, body: dict, count: int, until: list[str] | None) -> list[float]:
    """`count` short requests one after another (while `until` are unanswered, if given)."""
    times = []
    for _ in range(count):
        if until is not None and all(cid in client.replies for cid in until):
            break
        start = time.perf_counter()
        client.call(body, timeout=300)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=Path("artifacts"))
    args = p.parse_args()
    queue = f"serve_ex.fair.{uuid.uuid4().hex[:8]}"
    log = Path(tempfile.gettempdir()) / f"{queue}.log"
    rows = []
    with Service(args.models.resolve(), queue, log) as service, Client(queue=queue) as client:
        threads = service.health()["engine"]["threads"]
        for name, body in SHORT.items():
            alone = short_latencies(client, body, 20, None)
            rows.append((name, 0, statistics.median(alone) * 1000, max(alone) * 1000, None))
        for long_count in (1, 3):
            for name, body in SHORT.items():
                started = time.perf_counter()
                long_ids = [client.send(LONGEST) for _ in range(long_count)]
                client.poll(0.05)
                waits = short_latencies(client, body, 50, long_ids)
                for cid in long_ids:
                    client.wait(cid, timeout=600)
                long_s = time.perf_counter() - started
                rows.append((name, long_count, statistics.median(waits) * 1000, max(waits) * 1000, long_s))
    print(f"Short requests behind the largest ones on {report.machine()}; engine threads: {threads}.")
    print("| short request | largest requests running | median ms | worst ms | the long ones took s |")
    print("|---|---|---|---|---|")
    for name, n, median, worst, long_s in rows:
        took = "-" if long_s is None else f"{long_s:.1f}"
        print(f"| {name} | {n} | {median:.1f} | {worst:.1f} | {took} |")


if __name__ == "__main__":
    main()
