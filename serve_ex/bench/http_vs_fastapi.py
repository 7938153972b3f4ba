"""serve_ex's HTTP endpoint against a 2-worker FastAPI + uvicorn service of the same VAE
(torch eager), side by side in one run, with the same load tool for both: wrk (Debian's
package), keep-alive connections, 2 threads.

Rows: VAE generate with n = 1 and n = 16, at 1 and 64 connections (one request in flight
per connection). All processes share the machine's cores. Writes runs/bench/http.md.

    python serve_ex/bench/http_vs_fastapi.py --models artifacts [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import report
from serve_harness import REPO, SERVE_EX
from serve_harness.service import Service, free_port

LOADS = [(1, 1), (1, 64), (16, 1), (16, 64)]  # (n, connections)


def generate_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1/models/vae/generate"


def wrk(url: str, n: int, connections: int, seconds: float, scratch: Path) -> dict:
    """req/s and latency percentiles of `seconds` of wrk POSTing generate requests."""
    script = scratch / f"generate_{n}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = \'{{"n": {n}, "seed": 1}}\'\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    threads = min(2, connections)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error replies under load:\n{out}")
    return {
        "per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency_ms(out, "50%"),
        "p99_ms": latency_ms(out, "99%"),
    }


def latency_ms(out: str, percentile: str) -> float:
    value, unit = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wait_http(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    body = b'{"n": 1, "seed": 1}'
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def measure(name: str, url: str, seconds: float, scratch: Path, rows: list) -> None:
    wait_http(url)
    wrk(url, 1, 4, 1, scratch)  # warm-up
    for n, connections in LOADS:
        result = wrk(url, n, connections, seconds, scratch)
        rows.append({"target": name, "n": n, "connections": connections, **result})
        print(
            f"{name:<18} n={n:<3} connections={connections:<3} {result['per_second']:>8,.0f} req/s "
            f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=Path("artifacts"))
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="http_bench_"))
    rows: list[dict] = []

    queue = f"serve_ex.bench.http.{uuid.uuid4().hex[:6]}"
    # 64 connections x 16 rows exceed the default admission bound (8 batches): raised, so
    # that every request is computed, as FastAPI computes every one
    with Service(args.models.resolve(), queue, scratch / "service.log", MAX_QUEUED_ROWS="4096") as service:
        measure("serve_ex HTTP", generate_url(service.port), args.seconds, scratch, rows)

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "MODEL": str(args.models.resolve() / "vae.safetensors")}
    uvicorn = [sys.executable, "-m", "uvicorn", "--app-dir", str(SERVE_EX / "bench"), "fastapi_vae:app"]
    uvicorn += ["--workers", "2", "--http", "httptools", "--loop", "uvloop", "--log-level", "warning"]
    uvicorn += ["--host", "127.0.0.1", "--port", str(port)]
    with open(scratch / "fastapi.log", "w") as log:
        proc = subprocess.Popen(uvicorn, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            measure("FastAPI + torch", generate_url(port), args.seconds, scratch, rows)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    def theirs(n, connections):
        return next(
            r for r in rows if (r["target"], r["n"], r["connections"]) == ("FastAPI + torch", n, connections)
        )

    lines = [
        f"HTTP benchmark on {report.machine()} (shared by wrk, the service and the "
        f"baseline): VAE generate, {args.seconds:g} s per row, wrk with 2 threads and keep-alive "
        "connections, one request in flight per connection. serve_ex: 2 processors, batch size 64, "
        "batch timeout 0, MAX_QUEUED_ROWS 4096 (so nothing is shed), its HTTP requests batched like "
        "queued ones. "
        "FastAPI 0.115 + uvicorn 0.32 with httptools and uvloop (uvicorn[standard]), 2 workers, "
        "torch eager with 1 thread each.",
        "",
        "| target | n | connections | req/s | p50 | p99 | vs FastAPI |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["per_second"] / theirs(r["n"], r["connections"])["per_second"]
        lines.append(
            f"| {r['target']} | {r['n']} | {r['connections']} | {r['per_second']:,.0f} "
            f"| {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {ratio:.1f}x |"
        )
    report.write("http", lines)


if __name__ == "__main__":
    main()
