"""Two serve_ex nodes on one request queue: competing consumers, as replicas would be.

    python -m serve_harness.two_nodes --models artifacts

1. Throughput: VAE generate (n=1) with 64 requests in flight for a few seconds against
   one node, then against two, in req/s (both nodes share this machine's cores).
2. SIGKILL one of the two under load: nothing lost or wrong (a killed node's unacked
   deliveries go to the other; some may be answered twice).
3. SIGTERM one of the two under load: it drains and exits 0; nothing lost, wrong or
   answered twice.

Every reply is checked against infer_rs on the same model and seed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from serve_harness.load import Load
from serve_harness.service import Service

DRAIN_TIMEOUT_S = 10


def stop_one_under_load(
    model_dir: Path, logs: Path, stop: Callable[[Service], object], total: int = 1500
) -> dict:
    """Two nodes, `total` requests; after 300, `stop(first node)` runs beside the load."""
    queue = f"serve_ex.two.{uuid.uuid4().hex[:8]}"
    result: dict = {}
    with (
        Service(model_dir, queue, logs / "a.log", DRAIN_TIMEOUT_MS=str(DRAIN_TIMEOUT_S * 1000)) as a,
        Service(model_dir, queue, logs / "b.log"),
    ):
        load = Load(model_dir, queue)
        stopper = threading.Thread(target=lambda: result.update(stopped=stop(a)))
        deadline = time.monotonic() + 180
        while load.counts["sent"] < total and time.monotonic() < deadline:
            load.fill()
            if load.counts["sent"] >= 300 and "inflight_at_stop" not in result:
                result["inflight_at_stop"] = len(load.pending)
                stopper.start()
            load.poll()
        result.update(load.finish())
        stopper.join()
    return result


def throughput(model_dir: Path, logs: Path, nodes: int, seconds: float) -> float:
    """Replies per second (n=1, 64 in flight) with `nodes` nodes on one queue."""
    queue = f"serve_ex.scale.{uuid.uuid4().hex[:8]}"
    services = [Service(model_dir, queue, logs / f"scale{nodes}_{i}.log") for i in range(nodes)]
    for service in services:
        service.start()
    try:
        load = Load(model_dir, queue)
        warm_until = time.monotonic() + 1.0
        # n=1 and 64 seeds in turn: the expected images are computed once, so checking
        # every reply costs the load generator little
        one, few_seeds = (lambda i: 1), (lambda i: i % 64)
        while time.monotonic() < warm_until:
            load.fill(one, few_seeds)
            load.poll()
        start, answered = time.monotonic(), load.counts["answered"]
        while time.monotonic() - start < seconds:
            load.fill(one, few_seeds)
            load.poll()
        rate = (load.counts["answered"] - answered) / (time.monotonic() - start)
        counts = load.finish()
        assert (counts["lost"], counts["wrong"], counts["reconnects"]) == (0, 0, 0), counts
        return rate
    finally:
        for service in services:
            service.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=Path("artifacts"), help="model dir holding vae.safetensors")
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time per throughput row")
    args = p.parse_args()
    models = args.models.resolve()
    logs = Path(tempfile.mkdtemp(prefix="serve_ex_two_nodes_"))
    one, two = (throughput(models, logs, n, args.seconds) for n in (1, 2))
    print(f"VAE n=1, 64 in flight: 1 node {one:,.0f} req/s, 2 nodes {two:,.0f} req/s ({two / one:.2f}x)")
    counted = ("sent", "lost", "wrong", "duplicates", "reconnects")
    killed = stop_one_under_load(models, logs, lambda node: node.sigkill())
    print("SIGKILL one of two under load:", {k: killed[k] for k in counted})
    termed = stop_one_under_load(models, logs, lambda node: node.sigterm(timeout=DRAIN_TIMEOUT_S + 20))
    status, seconds = termed["stopped"]
    print(
        "SIGTERM one of two under load:",
        {k: termed[k] for k in counted},
        f"exit status {status} after {seconds:.2f} s",
    )
    print(f"logs: {logs}")
    ok = (
        killed["lost"] == killed["wrong"] == killed["reconnects"] == 0
        and termed["lost"] == termed["wrong"] == termed["duplicates"] == termed["reconnects"] == 0
    )
    return 0 if ok and status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
