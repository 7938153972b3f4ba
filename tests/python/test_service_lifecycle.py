"""The service's lifecycle against the real broker: `make serve` as the README gives it,
a drain on SIGTERM under load beside a second node, and a node with no model.

Needs the broker on 127.0.0.1:5672, Elixir and the NIF (`make test` provides them).
"""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "serve_ex" / "scripts"))
sys.path.insert(0, str(REPO / "serve_ex" / "client"))
from kill_and_recover import Expected  # noqa: E402
from serve_client import Client, tensor  # noqa: E402
from service import Service, free_port, http_json  # noqa: E402

DRAIN_TIMEOUT_S = 10


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_make_serve_runs_the_release_on_model_dir_and_drains_on_sigterm(trained, tmp_path):
    queue, port = f"serve_ex.make.{uuid.uuid4().hex[:8]}", free_port()
    env = {
        **os.environ,
        "MODEL_DIR": str(trained["vae"].parent),
        "REQUEST_QUEUE": queue,
        "HTTP_PORT": str(port),
    }
    log = tmp_path / "make_serve.log"
    with open(log, "wb") as out:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,  # its own process group, to clean up after a failure
        )
    try:
        wait_for(lambda: http_json(port, "/readyz").get("ready"), 300, f"readiness; see {log}")
        assert http_json(port, "/readyz")["models"] == ["gpt", "vae", "wgan"]
        with Client(queue=queue) as client:
            reply = client.call({"v": 1, "model": "vae", "op": "generate", "n": 2, "seed": 1})
        assert tensor(reply).shape == (2, 784)
        # the recipe execs the release, so make's one child is the node (beam.smp)
        children = Path(f"/proc/{make.pid}/task/{make.pid}/children").read_text().split()
        assert len(children) == 1
        os.kill(int(children[0]), signal.SIGTERM)
        assert make.wait(timeout=DRAIN_TIMEOUT_S + 20) == 0, "make serve exits with the node's status"
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    text = log.read_text()
    assert "serve_ex/_build/prod/rel/serve_ex/bin/serve_ex start" in text, "make serve ran the release"
    assert "drained in" in text


def test_sigterm_under_load_drains_beside_a_second_node_and_loses_nothing(trained, tmp_path):
    models = trained["vae"].parent
    queue = f"serve_ex.drain.{uuid.uuid4().hex[:8]}"
    expected = Expected(models / "vae.safetensors")
    pending: dict[str, tuple[int, int]] = {}
    seen: set[str] = set()
    counts = {"sent": 0, "answered": 0, "duplicates": 0, "wrong": 0, "inflight_at_term": 0}

    def on_reply(cid: str, reply: dict) -> None:
        if cid in seen:
            counts["duplicates"] += 1
            return
        seen.add(cid)
        n, seed = pending.pop(cid)
        counts["answered"] += 1
        counts["wrong"] += not expected.matches(n, seed, reply)

    stopped = {}
    with (
        Service(models, queue, tmp_path / "a.log", DRAIN_TIMEOUT_MS=str(DRAIN_TIMEOUT_S * 1000)) as a,
        Service(models, queue, tmp_path / "b.log"),
        Client(queue=queue, on_reply=on_reply) as client,
    ):

        def terminate_a():
            stopped["status"], stopped["seconds"] = a.sigterm(timeout=DRAIN_TIMEOUT_S + 20)

        term = threading.Thread(target=terminate_a)
        deadline = time.monotonic() + 180
        while (counts["sent"] < 1500 or pending) and time.monotonic() < deadline:
            while counts["sent"] < 1500 and len(pending) < 64:
                n, seed = 1 + counts["sent"] % 4, counts["sent"]
                cid = client.send({"v": 1, "model": "vae", "op": "generate", "n": n, "seed": seed})
                pending[cid] = (n, seed)
                counts["sent"] += 1
            if counts["sent"] >= 300 and not term.is_alive() and "status" not in stopped:
                counts["inflight_at_term"] = len(pending)
                term.start()
            client.poll(0.01)
        term.join()
        client.poll(0.5)  # late duplicates
    assert counts["inflight_at_term"] >= 64
    assert stopped["status"] == 0 and stopped["seconds"] < DRAIN_TIMEOUT_S + 5, stopped
    lost = counts["sent"] - counts["answered"]
    assert (lost, counts["wrong"], counts["duplicates"]) == (0, 0, 0), counts
    assert "drained in" in (tmp_path / "a.log").read_text()


def test_a_node_without_models_stays_unready_and_takes_no_requests(trained, tmp_path):
    empty = tmp_path / "no_models"
    empty.mkdir()
    os.mkfifo(empty / "pipe.safetensors")  # read naively, a FIFO would block the start
    (empty / "notes.safetensors").write_text("not a model")
    queue = f"serve_ex.empty.{uuid.uuid4().hex[:8]}"
    idle = Service(empty, queue, tmp_path / "idle.log")
    try:
        idle.start(ready=False)
        wait_for(lambda: http_json(idle.port, "/readyz").get("broker_connected"), 30, "the broker")
        ready = http_json(idle.port, "/readyz")
        assert ready["ready"] is False and ready["models"] == [] and ready["consuming"] is False
        with Client(queue=queue) as client:
            cid = client.send({"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": 3})
            client.poll(1.0)
            assert cid not in client.replies, "a node with no model answered (unknown_model)"
            with Service(trained["vae"].parent, queue, tmp_path / "healthy.log"):
                assert tensor(client.wait(cid)).shape == (1, 784)
    finally:
        idle.stop()
    log = (tmp_path / "idle.log").read_text()
    assert "pipe.safetensors: not a regular file" in log and "no model is served" in log
