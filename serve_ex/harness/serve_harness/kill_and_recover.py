"""Kill-and-recover: send N requests with many in flight to a running serve_ex while
killing parts of it, then count what came back.

During the run it:
  1. kills the producer (its AMQP channel dies with it) with Process.exit(pid, :kill);
  2. kills the VAE batcher;
  3. SIGKILLs the whole BEAM OS process and starts it again, as a process manager would;
  4. SIGTERMs it (it drains: no new deliveries, work in flight answered, the rest
     requeued) and starts it again, as a rolling restart would.

Every reply is checked bit for bit against infer_rs on the same model and seed. The
client never resends: whatever the service accepted must come back through the
broker's redelivery, and a run where the client had to reconnect (and so published
its unanswered requests again) fails. At the end it prints sent, answered, lost,
duplicates, wrong answers and client reconnects, and for each kill the longest gap
without replies after it.

    python -m serve_harness.kill_and_recover --models artifacts -n 2000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serve_harness.load import Load
from serve_harness.service import PRODUCER, Service, batcher


@dataclass
class Report:
    sent: int = 0
    answered: int = 0
    duplicates: int = 0
    wrong: int = 0
    reconnects: int = 0
    kills: list[dict] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.sent - self.answered

    def summary(self) -> str:
        lines = [
            f"sent {self.sent}, answered {self.answered}, lost {self.lost}, "
            f"duplicate replies {self.duplicates}, wrong answers {self.wrong}, "
            f"client reconnects {self.reconnects}",
        ]
        for k in self.kills:
            lines.append(
                f"  {k['what']:<36} at request {k['at']:>5}: longest gap without replies "
                f"{k['gap_ms']:.0f} ms"
                + (f", exit status {k['exit_status']} after {k['exit_s']:.2f} s" if "exit_s" in k else "")
                + (f", node back up in {k['restart_s']:.1f} s" if "restart_s" in k else "")
            )
        return "\n".join(lines)


def run(service: Service, model_dir: Path, total: int, inflight: int, url: str, queue: str) -> Report:
    load = Load(model_dir, queue, inflight, url)
    report = Report()

    def kill_in_background(what: str, action) -> None:
        """The kill runs beside the client loop, which keeps collecting replies."""
        kill = {"what": what, "at": load.counts["sent"]}
        report.kills.append(kill)

        def act():
            if action == "sigkill":
                service.sigkill()
                kill["time"] = time.monotonic()
                kill["restart_s"] = service.start()
            elif action == "sigterm":
                kill["exit_status"], kill["exit_s"] = service.sigterm()
                kill["time"] = time.monotonic()
                kill["restart_s"] = service.start()
            else:
                action()
                kill["time"] = time.monotonic()

        worker = threading.Thread(target=act)
        worker.start()
        workers.append(worker)

    workers: list[threading.Thread] = []
    kills = [
        ("producer (Process.exit :kill)", lambda: service.kill_process(PRODUCER)),
        ("vae batcher (Process.exit :kill)", lambda: service.kill_process(batcher("vae"))),
        ("BEAM OS process (SIGKILL + restart)", "sigkill"),
        ("BEAM OS process (SIGTERM + restart)", "sigterm"),
    ]
    started = time.monotonic()
    settled = started  # when the last kill finished (or the run started)

    def sending() -> bool:
        # at least `total` requests, and load until a second after the last kill settled
        quiet = not any(w.is_alive() for w in workers) and time.monotonic() - settled > 1.0
        return load.counts["sent"] < total or bool(kills) or not quiet

    deadline = started + 300
    while (sending() or load.pending) and time.monotonic() < deadline:
        if workers and not workers[-1].is_alive() and report.kills[-1].get("settled") is None:
            report.kills[-1]["settled"] = settled = time.monotonic()
        if kills and not any(w.is_alive() for w in workers) and time.monotonic() - settled > 1.0:
            kill_in_background(*kills.pop(0))
        load.fill(more=sending)
        load.poll(0.01)
    counts = load.finish(timeout=0)
    report.sent, report.answered = counts["sent"], counts["answered"]
    report.duplicates, report.wrong = counts["duplicates"], counts["wrong"]
    report.reconnects = counts["reconnects"]
    for worker in workers:
        worker.join()
    reply_times = load.reply_times
    ends = [k["time"] for k in report.kills[1:]] + [float("inf")]
    for kill, end in zip(report.kills, ends, strict=True):
        # from the kill to each reply until the next kill: the longest silence
        times = [kill["time"]] + [t for t in reply_times if kill["time"] <= t < end]
        kill["gap_ms"] = 1000 * float(np.max(np.diff(times))) if len(times) > 1 else float("inf")
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=Path("artifacts"), help="model dir holding vae.safetensors")
    p.add_argument("-n", type=int, default=2000, help="requests to send")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    args = p.parse_args()
    queue = f"serve_ex.killtest.{uuid.uuid4().hex[:8]}"
    log = Path(tempfile.gettempdir()) / f"{queue}.log"
    with Service(args.models.resolve(), queue, log) as service:
        report = run(service, args.models.resolve(), args.n, args.inflight, args.url, queue)
    print(report.summary())
    print(f"service log: {log}")
    return 0 if (report.lost, report.wrong, report.reconnects) == (0, 0, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
