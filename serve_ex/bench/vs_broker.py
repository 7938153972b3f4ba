"""serve_ex against the broker's no-op ceiling (plain, and answering like serve_ex does)
and a plain pika + torch consumer, side by side in one run, on VAE generate requests
(n = 1 and n = 16) at 1 and 64 in flight.

The load comes from ServeEx.Bench.Load (amqp_client, so the client is not the limit);
all processes share the machine's 2 cores. Writes runs/bench/service.md.

    python serve_ex/bench/vs_broker.py --models artifacts
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import report
from serve_harness import REPO, SERVE_EX
from serve_harness.service import Service, vm_flags

NOOP, LIKE_SERVE_EX = "no-op (ceiling)", "no-op like serve_ex"
MIX_ENV = {**os.environ, "MIX_HOME": str(REPO / ".mix"), "HEX_HOME": str(REPO / ".mix" / "hex")}
# The no-op responders stand in for the service, so they run under its VM flags: without
# busy-waiting schedulers a lone request waits for wake-ups, which the VM's default flags
# spare (Zen 4: the plain no-op's p50 at 1 in flight is 0.92 ms under the service's
# flags, 0.68 ms under the default ones). The load generator keeps the default flags.
RESPONDER_ENV = {**MIX_ENV, "ERL_FLAGS": vm_flags()}


def mix_command(call: str, *args: str) -> list[str]:
    return ["mix", "run", "--no-start", "-e", call, "--", *args]


def run_baseline(cmd: list[str], env: dict, cwd: Path, log: Path, measure_it) -> None:
    """Start a baseline responder, wait for its "ready" line, measure, stop it."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(proc, "ready", log)
            measure_it()
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def load(queue: str, n: int, inflight: int, seconds: float) -> dict:
    body = json.dumps({"v": 1, "model": "vae", "op": "generate", "n": n, "seed": 1})
    cmd = mix_command("ServeEx.Bench.Load.main(System.argv())", queue, body, str(inflight), str(seconds))
    proc = subprocess.Popen(cmd, cwd=SERVE_EX, env=MIX_ENV, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=seconds + 90)
    return json.loads(out.strip().splitlines()[-1])


def wait_ready(proc: subprocess.Popen, marker: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if marker in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"baseline exited; see {log}")
        time.sleep(0.1)
    raise RuntimeError(f"baseline not ready; see {log}")


def measure(name: str, queue: str, seconds: float, rows: list, loads) -> None:
    for n, inflight in loads:
        result = load(queue, n, inflight, seconds)
        rows.append({"target": name, "n": n, "inflight": inflight, **result})
        print(
            f"{name:<14} n={n:<3} inflight={inflight:<3} {result['per_second']:>8,.0f} req/s "
            f"p50 {result['p50_us'] / 1000:.2f} ms  p99 {result['p99_us'] / 1000:.2f} ms",
            flush=True,
        )


def profile_under_load(service: Service, queue: str, window_ms: int = 3000) -> str:
    """ServeEx.Bench.Profile inside the node while n=1 requests run 64 in flight."""
    result: dict[str, str] = {}

    def profile() -> None:
        time.sleep(1.5)  # past the load's warm-up
        result["table"] = service.rpc(f"ServeEx.Bench.Profile.main({window_ms})")

    thread = threading.Thread(target=profile)
    thread.start()
    load(queue, 1, 64, 1.0 + window_ms / 1000)
    thread.join()
    print(result["table"], flush=True)
    return result["table"]


def reply_size(service: Service) -> int:
    """The bytes of serve_ex's reply to one n=1 VAE generate request (the same JSON over
    HTTP as over AMQP)."""
    body = json.dumps({"n": 1, "seed": 1}).encode()
    url = f"http://127.0.0.1:{service.port}/v1/models/vae/generate"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as reply:
        return len(reply.read())


def batch_histogram(metrics: str) -> str:
    buckets = [line for line in metrics.splitlines() if line.startswith("serve_ex_batch_rows_bucket")]
    counts = [(line.split('le="')[1].split('"')[0], float(line.rsplit(" ", 1)[1])) for line in buckets]
    previous, parts = 0.0, []
    for le, cumulative in counts:
        if cumulative - previous:
            parts.append(f"<= {le}: {int(cumulative - previous)}")
        previous = cumulative
    return ", ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=Path("artifacts"))
    p.add_argument("--seconds", type=float, default=4.0)
    args = p.parse_args()
    loads = [(1, 1), (1, 64), (16, 1), (16, 64)]
    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="serve_bench_"))

    queue = f"serve_ex.bench.{uuid.uuid4().hex[:6]}"
    with Service(args.models.resolve(), queue, tmp / "service.log") as service:
        measure("serve_ex", queue, args.seconds, rows, loads)
        histogram = batch_histogram(service.metrics())
        profile = profile_under_load(service, queue)
        reply_bytes = reply_size(service)
        engine_threads = service.health()["engine"]["threads"]

    for mode, size, name in (("plain", 0, NOOP), ("confirmed", reply_bytes, LIKE_SERVE_EX)):
        queue = f"serve_ex.bench.noop.{uuid.uuid4().hex[:6]}"
        run_baseline(
            mix_command("ServeEx.Bench.NoopResponder.main(System.argv())", queue, "128", mode, str(size)),
            RESPONDER_ENV,
            SERVE_EX,
            tmp / f"noop_{mode}.log",
            lambda queue=queue, name=name: measure(name, queue, args.seconds, rows, [(1, 1), (1, 64)]),
        )

    queue = f"serve_ex.bench.torch.{uuid.uuid4().hex[:6]}"
    consumer = SERVE_EX / "bench" / "torch_consumer.py"
    run_baseline(
        [sys.executable, str(consumer), queue, str(args.models / "vae.safetensors")],
        {**os.environ, "PYTHONPATH": str(REPO)},
        REPO,
        tmp / "torch.log",
        lambda: measure("pika + torch", queue, args.seconds, rows, loads),
    )

    def rate(target, n, inflight):
        return next(
            r["per_second"] for r in rows if (r["target"], r["n"], r["inflight"]) == (target, n, inflight)
        )

    lines = [
        f"Service benchmark: VAE generate requests through RabbitMQ on {report.machine()} (broker, service, "
        f"load generator and baselines share it); {args.seconds:.0f} s per row after 1 s of warm-up; "
        "quorum queue, persistent requests. serve_ex: 2 processors, batch size 64, batch timeout 0 "
        f"(flush once the waiting requests are in), prefetch 128, engine threads per call: {engine_threads}. "
        "The no-op answers every request with a tiny reply, so its n=1 rows are the ceiling for both n. "
        "Both no-ops run under serve_ex's VM flags (no scheduler busy-waiting). "
        "The no-op like serve_ex computes nothing either, but answers as serve_ex does: under its "
        "delivery protocol (replies on a second connection, mandatory, publisher confirms, the ack "
        f"after the confirm), with replies as large as serve_ex's n=1 reply ({reply_bytes:,} bytes).",
        "",
        "| target | n | in flight | req/s | p50 | p99 | vs no-op | vs no-op like serve_ex | vs pika+torch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratios = [r["per_second"] / rate(ceiling, 1, r["inflight"]) for ceiling in (NOOP, LIKE_SERVE_EX)]
        torch_ratio = f"{r['per_second'] / rate('pika + torch', r['n'], r['inflight']):.1f}x"
        latency = f"{r['p50_us'] / 1000:.2f} ms | {r['p99_us'] / 1000:.2f} ms"
        lines.append(
            f"| {r['target']} | {r['n']} | {r['inflight']} | {r['per_second']:,.0f} | {latency} "
            f"| {ratios[0]:.0%} | {ratios[1]:.0%} | {torch_ratio} |"
        )
    lines += ["", f"serve_ex rows per engine call over the run (histogram): {histogram}"]
    title = "Reductions per request by process at n=1, 64 in flight (ServeEx.Bench.Profile):"
    lines += ["", title, "", profile]
    report.write("service", lines)


if __name__ == "__main__":
    main()
