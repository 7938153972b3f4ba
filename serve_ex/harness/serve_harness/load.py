"""A checked load on a serve_ex request queue: VAE generate requests kept in flight
through the Python client, every reply compared bit for bit with infer_rs on the same
model and seed.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import numpy as np
from serve_client import DEFAULT_URL, Client


class Expected:
    """What infer_rs gives for (n, seed) on the served VAE."""

    def __init__(self, model_path: Path) -> None:
        import infer_rs

        self.model = infer_rs.Model(model_path)
        self.cache: dict[tuple[int, int], np.ndarray] = {}

    def matches(self, n: int, seed: int, reply: dict) -> bool:
        if not reply.get("ok") or reply.get("shape") != [n, 784]:
            return False
        got = np.frombuffer(base64.b64decode(reply["data"]), dtype="<f4").reshape(n, 784)
        want = self.cache.setdefault((n, seed), self.model.generate(n, seed=seed))
        return np.array_equal(got, want)


class Load:
    """Keeps `inflight` VAE generate requests outstanding on `queue` and checks every
    reply against infer_rs: counts sent, answered, duplicate and wrong replies and the
    client's reconnects (each re-sends what is unanswered, which would hide a lost
    reply), and notes when each reply came. Used by kill_and_recover, two_nodes and the
    end-to-end tests."""

    def __init__(self, model_dir: Path, queue: str, inflight: int = 64, url: str = DEFAULT_URL) -> None:
        self.expected = Expected(model_dir / "vae.safetensors")
        self.inflight = inflight
        self.pending: dict[str, tuple[int, int]] = {}
        self.seen: set[str] = set()
        self.reply_times: list[float] = []
        self.counts = {"sent": 0, "answered": 0, "duplicates": 0, "wrong": 0}
        self.client = Client(url, queue, on_reply=self._on_reply)

    def _on_reply(self, cid: str, reply: dict) -> None:
        self.reply_times.append(time.monotonic())
        if cid in self.seen:  # answered before: a redelivery's second reply
            self.counts["duplicates"] += 1
            return
        self.seen.add(cid)
        n, seed = self.pending.pop(cid)
        self.counts["answered"] += 1
        self.counts["wrong"] += not self.expected.matches(n, seed, reply)

    def fill(self, n_of=lambda i: 1 + i % 4, seed_of=lambda i: i, more=lambda: True) -> None:
        """Sends until `inflight` requests are outstanding (or `more()` says stop)."""
        while len(self.pending) < self.inflight and more():
            i = self.counts["sent"]
            n, seed = n_of(i), seed_of(i)
            cid = self.client.send({"v": 1, "model": "vae", "op": "generate", "n": n, "seed": seed})
            self.pending[cid] = (n, seed)
            self.counts["sent"] += 1

    def poll(self, seconds: float = 0.005) -> None:
        self.client.poll(seconds)

    def finish(self, timeout: float = 120.0) -> dict:
        """Waits for what is outstanding, then for late duplicates; the final counts."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self.poll(0.01)
        self.poll(0.5)
        self.client.close()
        lost = self.counts["sent"] - self.counts["answered"]
        return {**self.counts, "lost": lost, "reconnects": self.client.reconnects}
