"""Run serve_ex as a child process, the way a process manager would: start it as a
named Erlang node, wait until /readyz says ready, reach into it with --rpc-eval,
SIGTERM or SIGKILL it, start it again.

Erlang distribution listens on loopback only, and the cookie never appears on a command
line: it is written to a private `.erlang.cookie` in a HOME of the node's own, which the
node and the rpc client both read.

Used by the kill-and-recover demo, the end-to-end tests and the service benchmark.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from serve_harness import REPO, SERVE_EX


def vm_flags() -> str:
    """The release's VM flags (`rel/vm.args.eex`: no scheduler busy-waiting, distribution
    on loopback only), for a node started with `mix run` and for the benchmark's
    responders that stand in for it."""
    text = (SERVE_EX / "rel" / "vm.args.eex").read_text()
    if "<%" in text:
        raise RuntimeError("rel/vm.args.eex holds EEx tags; its flags cannot be read as text")
    return " ".join(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(port: int, path: str) -> dict:
    """The JSON body of GET http://127.0.0.1:PORT/PATH, whatever its status; {} if none."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())
    except (OSError, ValueError):
        return {}


class Service:
    """One serve_ex node on 127.0.0.1, serving `model_dir` from `queue`."""

    def __init__(self, model_dir: Path, queue: str, log: Path, **env: str) -> None:
        self.node = f"serve_{secrets.token_hex(4)}"
        self.home = Path(tempfile.mkdtemp(prefix="serve_ex_home_"))
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        self.port = free_port()  # inference
        self.health_port = free_port()  # health and metrics
        self.log = log
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "MIX_HOME": str(REPO / ".mix"),
            "HEX_HOME": str(REPO / ".mix" / "hex"),
            "MODEL_DIR": str(model_dir),
            "REQUEST_QUEUE": queue,
            "HTTP_PORT": str(self.port),
            "HEALTH_PORT": str(self.health_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": vm_flags(),
            **env,
        }
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0, ready: bool = True) -> float:
        """Start the node and wait until it is ready (or, with ready=False, only live);
        returns the seconds it took. A node that never gets there is killed, not left
        behind."""
        started = time.monotonic()
        # a long name at the loopback address: a short name is reached through the host
        # name, which resolves to 127.0.1.1 on a stock Debian, where epmd does not listen
        cmd = ["elixir", "--name", f"{self.node}@127.0.0.1", "-S", "mix", "run", "--no-halt"]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(cmd, cwd=SERVE_EX, env=self.env, stdout=log, stderr=log)
        try:
            while time.monotonic() - started < timeout:
                if self.process.poll() is not None:
                    raise RuntimeError(f"serve_ex exited with {self.process.returncode}; see {self.log}")
                if self.health().get("ready") or (
                    not ready and http_json(self.health_port, "/livez").get("live")
                ):
                    return time.monotonic() - started
                time.sleep(0.05)
            raise RuntimeError(f"serve_ex not ready after {timeout} s; see {self.log}")
        except BaseException:
            self.sigkill()
            raise

    def health(self) -> dict:
        return http_json(self.health_port, "/readyz")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def rpc(self, expression: str) -> str:
        """Evaluate Elixir code inside the running node."""
        cmd = [
            "elixir",
            "--name",
            f"ctl_{secrets.token_hex(3)}@127.0.0.1",
            "--rpc-eval",
            f"{self.node}@127.0.0.1",
            expression,
        ]
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"rpc failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def kill_process(self, name: str) -> None:
        """Process.exit(pid, :kill) on a registered process or a pipeline stage."""
        self.rpc(f"Process.exit({name}, :kill)")

    def sigkill(self) -> None:
        """SIGKILL the BEAM OS process (this child, by its own PID)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP the node for the `with` block and SIGCONT it after: whatever reaches it
        meanwhile stays unanswered until the block ends. Keep it short: a node frozen
        past two AMQP heartbeats (10 s each) loses its connections."""
        if not self.process or self.process.poll() is not None:
            raise RuntimeError("the node is not running")
        try:
            self.process.send_signal(signal.SIGSTOP)
            self._wait_stopped(self.process.pid)
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

    @staticmethod
    def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
        """A signal is delivered asynchronously: wait until every thread of `pid` is
        stopped (state T in /proc/PID/task/*/stat)."""

        def state(task: Path) -> str:
            try:
                return (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                return "T"  # a thread that ended meanwhile runs no more either

        tasks = Path(f"/proc/{pid}/task")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(state(task) == "T" for task in tasks.iterdir()):
                return
            time.sleep(0.001)
        raise RuntimeError(f"node {pid} not stopped {timeout} s after SIGSTOP")

    def sigterm(self, timeout: float = 30.0) -> tuple[int | None, float]:
        """SIGTERM the node, as a process manager stops it; returns its exit status (None
        if it had to be SIGKILLed after `timeout`) and the seconds it took to exit."""
        if not self.process or self.process.poll() is not None:
            return (self.process.returncode if self.process else None), 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.sigkill()
            status = None
        return status, time.monotonic() - started

    def stop(self) -> None:
        self.sigterm(timeout=15)

    def __enter__(self) -> Service:
        try:
            self.start()
        except BaseException:
            shutil.rmtree(self.home, ignore_errors=True)  # `start` has killed the node
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


PRODUCER = "Process.whereis(ServeEx.Pipeline.Producer)"


def batcher(model_id: str) -> str:
    key = f'{{:batcher, "{model_id}"}}'
    return f"(Registry.lookup(ServeEx.Pipeline.Registry, {key}) |> hd() |> elem(0))"
